"""`pmstore check --repair`: each kind of damage is fixed or quarantined, nothing
acknowledged is lost silently, and every action is reported."""

from __future__ import annotations

import json

import pytest
from storeutil import VALUES, checker_loops, contents, head_off, make_store, peek, poke, records, set_next  # noqa: F401 (an autouse fixture: C and Python checker loops)
from typer.testing import CliRunner

from allocator import Heap, layout
from recovery.check import check_heap
from recovery.repair import UnrepairableError, repair
from service.cli import app

runner = CliRunner()


def _quarantine(rr) -> list[dict]:
    return sorted(rr.quarantined, key=lambda d: d["block_off"])



def test_repair_of_a_clean_store_changes_nothing(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    rr = repair(path, backend="none")
    assert rr.actions == [] and rr.quarantined == [] and rr.after == []
    assert contents(path) == VALUES


def test_I4_repair_quarantines_a_corrupt_value_and_keeps_everything_else(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/09"]
    poke(path, r.value_off + 5, b"\xff")
    rr = repair(path, backend="none")
    assert [f.invariant for f in rr.before] == ["I4"] and rr.after == []
    q = _quarantine(rr)
    assert [d["key"] for d in q] == ["obj/09"] and q[0]["invariant"] == "I4"
    saved = (path.parent / "s.heap.quarantine" / q[0]["files"][1]).read_bytes()
    assert len(saved) == len(VALUES["obj/09"]) and saved[5] == 0xFF, "the damaged bytes are kept for the operator"
    want = {k: v for k, v in VALUES.items() if k != "obj/09"}
    assert contents(path) == want, "objects after the quarantined one must stay reachable"


def test_I2_repair_relinks_past_a_destroyed_record(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/02"]
    poke(path, r.off, b"JUNK")                  # CRC and height_flags gone: level 0 breaks here
    rr = repair(path, backend="none")
    assert "I2" in {f.invariant for f in rr.before} and rr.after == []
    assert any(d["block_off"] == r.off for d in rr.quarantined)
    assert contents(path) == {k: v for k, v in VALUES.items() if k != "obj/02"}


def test_P4_repair_recovers_every_record_after_a_dangling_pointer(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    set_next(path, head_off(path), 0, 8192 + 64 * 1024 * 7 + 8)   # level 0 starts at garbage
    rr = repair(path, backend="none")
    assert "P4" in {f.invariant for f in rr.before} or "I2" in {f.invariant for f in rr.before}
    assert rr.after == []
    assert contents(path) == VALUES, "the valid records are found again among the allocated blocks"


def test_I1_repair_rebuilds_a_broken_upper_level(tmp_path):
    path = tmp_path / "s.heap"
    values = {f"k{i:03d}": bytes([i % 256]) * 10 for i in range(200)}
    make_store(path, values)
    set_next(path, head_off(path), 1, 0)
    rr = repair(path, backend="none")
    assert "I1" in {f.invariant for f in rr.before} and rr.after == []
    assert rr.quarantined == []
    assert any("relinked" in a for a in rr.actions)
    assert contents(path) == values


def test_I3_repair_frees_a_leak_after_saving_its_bytes(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    with Heap.open(path, backend="none") as h:
        leaked = h.alloc(300)
        h.write(leaked, b"orphan bytes")
    rr = repair(path, backend="none")
    assert [(f.invariant, f.off) for f in rr.before] == [("I3", leaked)] and rr.after == []
    (q,) = rr.quarantined
    assert q["block_off"] == leaked
    assert (path.parent / "s.heap.quarantine" / q["files"][0]).read_bytes().startswith(b"orphan bytes")
    assert contents(path) == VALUES


def test_H3_repair_restores_a_damaged_header_copy(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    poke(path, layout.HEADER_B_OFF + 40, b"\x00\x01")
    assert "H3" in {f.invariant for f in check_heap(path).findings}
    rr = repair(path, backend="none")
    assert any("H3/H4" in a for a in rr.actions) and rr.after == []
    assert peek(path, layout.HEADER_A_OFF, 252) == peek(path, layout.HEADER_B_OFF, 252)


@pytest.mark.corrupts_heap
def test_H1_repair_refuses_a_foreign_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "foreign.bin"
    path.write_bytes(b"not a heap" * 2000)
    before = path.read_bytes()
    with pytest.raises(UnrepairableError, match="H1"):
        repair(path)
    assert path.read_bytes() == before
    r = runner.invoke(app, ["check", "--repair", str(path)])
    assert r.exit_code == 2 and "cannot repair" in r.output


def test_cli_check_repair_json_reports_actions_and_exits_0(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/07"]
    poke(path, r.value_off, b"\x00\x00\x00")
    assert runner.invoke(app, ["check", str(path)]).exit_code == 1
    res = runner.invoke(app, ["check", "--repair", "--json", str(path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["findings"] == [] and out["objects"] == len(VALUES) - 1
    assert out["repair"]["findings_before"] == 1
    assert [q["key"] for q in out["repair"]["quarantined"]] == ["obj/07"]
    assert any("quarantined" in a for a in out["repair"]["actions"])
