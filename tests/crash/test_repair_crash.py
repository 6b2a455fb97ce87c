"""Repair is crash-safe and can be re-run: a crash at any persist point of a repair
(quarantine written, skip list relinked, leaks freed through redo commits) leaves a
file that a second repair turns into the same clean store."""

from __future__ import annotations

import shutil

from storeutil import VALUES, contents, head_off, make_store, set_next

from allocator import Heap, HeapFile
from recovery import crashsim
from recovery.check import check_heap
from recovery.repair import RepairReport, repair, repair_open


def test_I1_I3_a_crash_during_repair_is_finished_by_the_next_repair(tmp_path, crash_totals):
    path = tmp_path / "s.heap"
    make_store(path)
    with Heap.open(path, backend="none") as h:
        h.alloc(300)                                          # a leak to free
    set_next(path, head_off(path), 0, 8192 + 64 * 1024 * 7 + 8)   # and a broken level 0 to relink
    base = path.read_bytes()
    hf = HeapFile.open(path, backend="none", trace=True)
    repair_open(hf, RepairReport(str(path)), tmp_path / "q0")
    trace = hf.mapping.trace_take()
    hf.close()
    assert check_heap(path).ok and contents(path) == VALUES, "the traced repair itself must work"
    qdir = tmp_path / "q"

    def check(img, point):
        shutil.rmtree(qdir, ignore_errors=True)
        rr = repair(img, backend="none", quarantine_dir=qdir)
        assert rr.after == [], rr.after[:3]
        assert contents(img) == VALUES

    res = crashsim.explore(base, trace, check, workdir=tmp_path, max_subsets=16, seed=5)
    crash_totals.add("repair", res)
    assert res.points >= 3
    assert not res.violations, "\n".join(map(str, res.violations[:5]))
