"""Whole-store crash injection (recovery/crashtest.py): randomized workloads of put,
replace, delete, atomic batches, inline and out-of-line values, tall towers and growth
mid-workload (FORMAT.md 7.9; I1-I5, P1-P5).

At every persist point x dirty-unit subsets (8 B, 64 B, 4 KiB/512 B) the image is
recovered (copy-on-write) and must hold the model's objects before or after the
in-flight operation, byte for byte, with the independent checker finding nothing:
no leak, no dangling pointer, the index ordered and complete. `pmstore crashtest` runs
the same workloads.
"""

from __future__ import annotations

import os

import pytest
from storeutil import v2_contents, v2_store

from allocator import Heap
from recovery import crashtest
from recovery.check import check_heap
from store import Store
from store._index import Index

PLAN = crashtest.PLANS["default"]
WORKERS = min(4, os.cpu_count() or 1)


@pytest.mark.parametrize("seed", PLAN.seeds)
def test_I1_I5_store_ops_are_all_or_nothing_at_every_crash_point(tmp_path_factory, seed, crash_totals):
    workdir = crashtest.fast_workdir(tmp_path_factory)
    crash_totals.run(f"store ops (seed {seed})", crashtest.Job("store", seed, PLAN.op_count, PLAN.max_subsets),
                     workdir, WORKERS, 500)


@pytest.mark.parametrize("seed", PLAN.seeds[:8])
def test_L8_store_ops_from_three_threads_are_all_or_nothing_at_every_crash_point(tmp_path_factory, seed,
                                                                                   crash_totals):
    """Consecutive ops on different threads: one thread's commit is still DEFERRED (its
    links not yet durable) when the next thread's commit links a record after the one it
    published. Before L8 that record's data CHECK then failed at recovery and the first
    commit was dropped with its links lost (leaks, dangling pointers, lost puts)."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    job = crashtest.Job("store", seed, PLAN.op_count, PLAN.max_subsets, threads=3)
    crash_totals.run(f"store ops, 3 threads (seed {seed})", job, workdir, WORKERS, 500)


def test_I1_a_workload_grows_the_heap_and_builds_towers(tmp_path):
    path = tmp_path / "w.heap"
    _base, trace, models = crashtest.record_workload(path, PLAN.seeds[0], PLAN.op_count)
    events = crashtest.crashsim.parse_trace(trace)
    assert any(e.kind == crashtest.crashsim.TRACE_GROW for e in events), "the workload must grow the heap"
    Store.open(path, create=False, backend="none").close()    # recover the abandoned heap
    rep = check_heap(path, records=True)
    assert rep.ok and rep.objects == len(models[-1])
    assert any(r.height > 1 for r in rep.store.records), "no record taller than level 0: upper levels untested"


def test_I5_raising_a_version_2_store_to_3_is_atomic_at_every_crash_point(tmp_path, crash_totals):
    """The open that raises a version-2 store to 3 (one redo commit of the superblock's
    version word, FORMAT.md 9), traced from the heap's own open on: every crash image holds
    version 2 or 3 and every object, and the checker finds nothing before or after recovery."""
    path = v2_store(tmp_path)
    want = {k: v for k, (v, _) in v2_contents().items()}
    base = path.read_bytes()
    h = Heap.open(path, backend="none", trace=True)
    super_off = h.root
    Index(h.mapping, super_off, path=str(path)).close()
    trace = h.mapping.trace_take()
    h.close()
    seen = set()

    def check(img, point):
        version = int.from_bytes(img.read_bytes()[super_off + 8:super_off + 12], "little")
        assert version in (2, 3), version
        seen.add(version)
        rep = check_heap(img, at_rest=False)
        assert rep.ok, "; ".join(map(str, rep.findings[:3]))
        with Store.open(img, backend="private", create=False) as s:
            assert {k: s.get(k)[0] for k in s} == want
            assert s.heap.read(super_off + 8, 4) == (3).to_bytes(4, "little")

    res = crashtest.crashsim.explore(base, trace, check, workdir=tmp_path, max_subsets=16, seed=9)
    crash_totals.add("store version 2 -> 3", res)
    assert res.points >= 2 and seen == {2, 3}, (res.points, seen)
    assert not res.violations, "\n".join(map(str, res.violations[:5]))


@pytest.mark.parametrize("seed", PLAN.seeds[:6])
def test_I1_group_commit_ops_are_all_or_nothing_at_every_crash_point(tmp_path_factory, seed, crash_totals):
    """Concurrent writers sharing commits (FORMAT.md 8), staged: a writer's op held inside
    its barrier while others queue behind it, then one of them commits the queued ops in
    one commit, skipping those that fail their precondition; two ops on one key commit in
    two groups. Every key holds what an acknowledged or started op left, and the ops of one
    commit are all there or none."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    job = crashtest.Job("group", seed, PLAN.op_count // 2, PLAN.max_subsets)
    crash_totals.run(f"group commit (seed {seed})", job, workdir, WORKERS, 1000)


def test_I1_the_group_workload_shares_commits_and_skips_failed_ops(tmp_path):
    """The staging does what the crash test relies on: commits of two and of three queued
    ops (record_group raises if an op does not join the queue), and ops that fail inside
    a group."""
    _base, _trace, _keys, _start, setters, groups = crashtest.record_group(tmp_path / "g.heap", 35, 10)
    ops = 1 + max(i for i, *_x in setters)
    assert len(setters) < ops, "no op failed: the group's skip path is untested"
    assert {len(g) for g in groups} >= {2, 3}, groups
