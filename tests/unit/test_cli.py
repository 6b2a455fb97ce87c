"""The `pmstore heap` command line (service/cli.py), through typer's CliRunner."""

from __future__ import annotations

import inspect
import json
import os
import struct

import pytest
from storeutil import v2_contents, v2_store
from typer.testing import CliRunner

from allocator import HeapFile, _native, layout
from service.cli import app

SMALL = ["--size", "256KiB", "--max-size", "4MiB"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _flat(text: str) -> str:
    """Output with all whitespace removed: rich wraps long lines (paths) at any width."""
    return "".join(text.split())


def _info(runner, path, *args) -> dict:
    res = runner.invoke(app, ["heap", "info", str(path), "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_heap_create_then_info_json(runner, tmp_path):
    p = tmp_path / "heap"
    res = runner.invoke(app, ["heap", "create", str(p), *SMALL])
    assert res.exit_code == 0, res.output
    assert p.is_file()
    state = _info(runner, p)
    assert state["file_size"] == 256 * 1024 == os.path.getsize(p)
    assert state["max_size"] == 4 * 1024 * 1024
    assert state["clean_shutdown"] is True
    assert state["format_version"] == layout.FORMAT_VERSION
    assert state["lane_count"] == layout.DEFAULT_LANE_COUNT
    assert state["lanes_not_empty"] == 0
    assert state["root"] == 0
    assert state["header_copy_stale"] is None
    assert state["locked_by_pid"] is None


def test_heap_create_json_and_lanes_option(runner, tmp_path):
    p = tmp_path / "heap"
    res = runner.invoke(app, ["heap", "create", str(p), *SMALL, "--lanes", "4", "--json"])
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    assert state["lane_count"] == 4
    assert state["path"] == str(p)


def test_heap_create_on_existing_path_exits_2(runner, tmp_path):
    p = tmp_path / "heap"
    p.write_bytes(b"precious")
    res = runner.invoke(app, ["heap", "create", str(p), *SMALL])
    assert res.exit_code == 2
    assert "alreadyexists" in _flat(res.output)
    assert p.read_bytes() == b"precious"


def test_heap_create_bad_size_exits_2(runner, tmp_path):
    p = tmp_path / "heap"
    res = runner.invoke(app, ["heap", "create", str(p), "--size", "lots"])
    assert res.exit_code == 2
    assert "notasize" in _flat(res.output)
    assert not p.exists()


def test_heap_info_missing_path_exits_2(runner, tmp_path):
    p = tmp_path / "nope"
    res = runner.invoke(app, ["heap", "info", str(p)])
    assert res.exit_code == 2
    assert "nosuchheap" in _flat(res.stderr)
    assert "--create" in res.stderr
    assert not p.exists()


def test_heap_info_create_makes_the_heap(runner, tmp_path):
    p = tmp_path / "sub" / "heap"
    state = _info(runner, p, "--create", *SMALL)
    assert p.is_file()
    assert state["file_size"] == 256 * 1024
    assert state["clean_shutdown"] is True
    with HeapFile.open(p, backend="none") as hf:      # a real, openable heap
        assert hf.report.was_clean is True


def test_heap_info_foreign_file_exits_2_naming_magic(runner, tmp_path):
    p = tmp_path / "foreign.txt"
    p.write_bytes(b"not a heap at all\n" * 6000)
    before = p.read_bytes()
    res = runner.invoke(app, ["heap", "info", str(p)])
    assert res.exit_code == 2
    assert "magic:" in _flat(res.stderr)
    assert p.read_bytes() == before


def test_heap_info_does_not_modify_the_file(runner, tmp_path):
    """Info on a crashed heap with a sealed lane reports it, and replays or rewrites nothing."""
    p = tmp_path / "heap"
    hf = HeapFile.create(p, size=256 * 1024, max_size=4 * 1024 * 1024, backend="none")
    hf.commit([(layout.REDO_OP_SET, layout.ROOT_OFF, hf.header.data_off)])
    hf.mapping.redo_quiesce()                          # that commit's own lane emptied (7.1)
    lane = hf.header.redo_off + 2 * hf.header.lane_size
    packed = layout.pack_redo_entry(layout.REDO_OP_SET, hf.header.data_off, 5)
    crc = _native.crc32c(packed, _native.crc32c(struct.pack("<QQ", (1 << 32) | 2, 1)))
    hf.mapping.write(lane + layout.LANE_HDR_SIZE, packed)
    hf.mapping.store8(lane + 8, 1)
    hf.mapping.store8(lane, (crc << 32) | 1)
    hf.abandon()                                       # crash: unclean, one sealed lane
    before, mtime = p.read_bytes(), os.stat(p).st_mtime_ns
    for args in ([], ["--json"]):
        res = runner.invoke(app, ["heap", "info", str(p), *args])
        assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    assert state["clean_shutdown"] is False
    assert state["lanes_not_empty"] == 1
    assert state["root"] == hf.header.data_off
    assert p.read_bytes() == before
    assert os.stat(p).st_mtime_ns == mtime


def test_heap_info_reports_lock_holder(runner, tmp_path):
    p = tmp_path / "heap"
    with HeapFile.create(p, size=256 * 1024, max_size=4 * 1024 * 1024, backend="none"):
        state = _info(runner, p)
        assert state["locked_by_pid"] == os.getpid()
        assert state["clean_shutdown"] is False


def test_heap_info_table_output(runner, tmp_path):
    p = tmp_path / "heap"
    assert runner.invoke(app, ["heap", "create", str(p), *SMALL]).exit_code == 0
    res = runner.invoke(app, ["heap", "info", str(p)])
    assert res.exit_code == 0, res.output
    flat = _flat(res.stdout)
    assert "262144(256KiB)" in flat
    assert "clean_shutdown" in flat


def test_heap_info_error_shows_path_verbatim(runner, tmp_path):
    """Paths are data, not rich markup: a '[bold]' in a file name must appear in the message."""
    p = tmp_path / "[bold]heap"
    res = runner.invoke(app, ["heap", "info", str(p)])
    assert res.exit_code == 2
    assert "[bold]heap" in _flat(res.stderr)


def test_store_info_creates_opens_and_reports(runner, tmp_path):
    """`make serve`'s job until the REST service exists: create or open the store, print its state."""
    p = tmp_path / "s.heap"
    assert runner.invoke(app, ["store", "info", str(p)]).exit_code == 2      # missing, no --create
    res = runner.invoke(app, ["store", "info", str(p), "--create", "--size", "4MiB", "--max-size", "64MiB", "--json"])
    assert res.exit_code == 0, res.output
    state = json.loads(res.stdout)
    assert state["objects"] == 0 and state["was_clean"] is True
    from store import Store
    with Store.open(p, durability="os") as s:
        s.put("a", b"1")
        s.put("b", b"2")
    state = json.loads(runner.invoke(app, ["store", "info", str(p), "--json"]).stdout)
    assert state["objects"] == 2 and state["live_blocks"] >= 4
    assert runner.invoke(app, ["check", str(p)]).exit_code == 0
    assert state["store_upgraded_from"] is None


def test_store_info_reports_raising_a_version_2_store(runner, tmp_path):
    """A store written by the version-2 build: the first open raises it to 3 and says so, the next does not."""
    p = v2_store(tmp_path)
    first = json.loads(runner.invoke(app, ["store", "info", str(p), "--json"]).stdout)
    again = json.loads(runner.invoke(app, ["store", "info", str(p), "--json"]).stdout)
    assert (first["store_upgraded_from"], again["store_upgraded_from"]) == (2, None)
    assert first["objects"] == again["objects"] == len(v2_contents())


@pytest.mark.parametrize("command", [["check"], ["crashtest"], ["serve"], ["heap", "create"], ["store", "info"]])
def test_help_flows_each_paragraph_to_the_terminal_width(command):
    """A docstring wraps at the source's width; --help must not keep those breaks (ragged
    half-empty lines): at 300 columns each paragraph of a command's help is one line."""
    cmd = next(c for c in _commands(app) if c[0] == command)
    res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert res.exit_code == 0, res.output
    for paragraph in cmd[1].split("\n\n"):
        assert " ".join(paragraph.split()) in res.output, f"{command}: a paragraph of its help is broken:\n{res.output}"


def test_root_help_lists_each_command_on_flowing_lines():
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert res.exit_code == 0, res.output
    for words, doc in _commands(app):
        if len(words) == 1:
            first = " ".join(doc.split("\n\n")[0].split())
            assert first in res.output, f"{words[0]}: its summary is broken in --help:\n{res.output}"


def _commands(t, prefix=()):
    """(command words, docstring) of every command of the app."""
    for c in t.registered_commands:
        yield [*prefix, c.name or c.callback.__name__.replace("_", "-")], inspect.cleandoc(c.callback.__doc__ or "")
    for g in t.registered_groups:
        yield from _commands(g.typer_instance, (*prefix, g.name))
