"""`pmstore check`: exit codes and stable text naming invariant IDs."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from allocator import Heap, layout
from service.cli import app

runner = CliRunner()


def _heap(tmp_path):
    path = tmp_path / "c.heap"
    with Heap.create(path, size=1 << 20, max_size=4 << 20, backend="none") as h:
        h.alloc_into(8192, 100)
    return path


def test_check_clean_heap_exits_0(tmp_path):
    r = runner.invoke(app, ["check", str(_heap(tmp_path))])
    assert r.exit_code == 0, r.output
    assert "0 findings, 1 allocated blocks (1 runs, 0 spans)" in r.output


@pytest.mark.corrupts_heap
def test_P1_check_reports_a_bad_descriptor_with_its_id_and_exits_1(tmp_path):
    path = _heap(tmp_path)
    with Heap.open(path, backend="none") as h:
        meta = h.file.header.meta_off
    with open(path, "r+b") as f:
        f.seek(meta + 8 * 3)
        f.write(struct.pack("<Q", 0x7))            # kind 7: impossible
    r = runner.invoke(app, ["check", str(path), "--json"])
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert [f["invariant"] for f in out["findings"]] == ["P1"]
    assert out["findings"][0]["off"] == meta + 24


@pytest.mark.corrupts_heap
def test_check_foreign_file_exits_2(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello" * 4000)
    r = runner.invoke(app, ["check", str(p)])
    assert r.exit_code == 2 and "H1" in r.output


def test_H4_check_of_a_heap_mid_header_update_needs_the_crashed_flag(tmp_path):
    """Copy A rewritten, copy B not yet: what a crash inside a header update leaves."""
    path = _heap(tmp_path)
    raw = path.read_bytes()
    hdr = layout.Header.from_fields(layout.Header.unpack_raw(raw[:layout.HEADER_SIZE]))
    with open(path, "r+b") as f:
        f.write(hdr.replace(generation=hdr.generation + 1, clean_shutdown=0).pack())
    r = runner.invoke(app, ["check", str(path)])
    assert r.exit_code == 1 and "H4 at 0: header copies differ at rest" in r.output
    assert runner.invoke(app, ["check", "--crashed", str(path)]).exit_code == 0
