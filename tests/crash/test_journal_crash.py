"""The barrier journal under crash enumeration (FORMAT.md 4.8, 7.11; J1-J3).

The store and redo workloads of recovery/crashtest.py run with a journal small enough to
fill, so their trace holds journal appends, records too large for the journal, and
checkpoints (write-back of the whole heap, then a new epoch). At every persist point x
dirty-unit subsets (8 B, 64 B, 4 KiB/512 B) the image must recover to the model's state
before or after the operation in flight, and the independent checker -- which replays
the journal itself -- must agree.
"""

from __future__ import annotations

import os
import struct

import pytest

from allocator import layout
from recovery import crashsim, crashtest

PLAN = crashtest.PLANS["default"]
WORKERS = min(4, os.cpu_count() or 1)
SEEDS = PLAN.seeds[:8]


@pytest.mark.parametrize("seed", SEEDS)
def test_J1_J3_store_ops_through_the_journal_are_all_or_nothing(tmp_path_factory, seed, crash_totals):
    workdir = crashtest.fast_workdir(tmp_path_factory)
    job = crashtest.Job("store", seed, PLAN.op_count, PLAN.max_subsets, journal_size=crashtest.JOURNAL_STORE)
    crash_totals.run(f"store ops, journal (seed {seed})", job, workdir, WORKERS, 500)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_J1_L8_store_ops_from_three_threads_through_the_journal(tmp_path_factory, seed, crash_totals):
    """As the store's three-thread workload (test_store_crash.py, L8), through the journal:
    a kill -9 soak first found the L8 bug here (replay rolled back the links a DEFERRED
    commit had applied but no record yet held)."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    job = crashtest.Job("store", seed, PLAN.op_count, PLAN.max_subsets, threads=3,
                        journal_size=crashtest.JOURNAL_STORE)
    crash_totals.run(f"store ops, 3 threads, journal (seed {seed})", job, workdir, WORKERS, 500)


@pytest.mark.parametrize("seed", range(1, 5))
def test_J1_L6_staged_schedules_through_the_journal(tmp_path_factory, seed, crash_totals):
    """The staged schedules of test_redo_crash.py (commits held inside their barriers while
    others run past them) with every barrier appended to a journal small enough to fill:
    the hook holds a thread once the journal's lock is released, so the others append."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    *_rest, held = crashtest.record_sched(workdir / "sched.heap", seed, 40, crashtest.JOURNAL_STORE)
    assert held >= 5, f"only {held} commits were held"
    job = crashtest.Job("sched", seed, 40, 48, journal_size=crashtest.JOURNAL_STORE)
    crash_totals.run(f"staged schedule, journal (seed {seed})", job, workdir, WORKERS, 1000)


@pytest.mark.parametrize("seed", PLAN.seeds[:2])
def test_J1_L4_redo_commits_through_the_journal_replay_in_order(tmp_path_factory, seed, crash_totals):
    workdir = crashtest.fast_workdir(tmp_path_factory)
    job = crashtest.Job("redo", seed, 2 * PLAN.op_count, 4 * PLAN.max_subsets, journal_size=crashtest.JOURNAL_REDO)
    crash_totals.run(f"redo commits, journal (seed {seed})", job, workdir, WORKERS, 500)


def _journal_events(trace: bytes, jnl_lo: int, jnl_hi: int):
    events = crashsim.parse_trace(trace)
    appends = [e for e in events if e.kind == crashsim.TRACE_WRITE and jnl_lo + layout.JNL_HDR_SIZE <= e.off < jnl_hi]
    epochs = [e for e in events if e.kind == crashsim.TRACE_WRITE and e.off == jnl_lo]
    whole = [e for e in events if e.kind == crashsim.TRACE_FLUSH and e.off == 0 and e.size > jnl_hi]
    in_place = [e for e in events if e.kind == crashsim.TRACE_FLUSH and e.off >= jnl_hi]
    return appends, epochs, whole, in_place


@pytest.mark.parametrize("record, journal_size", [
    (lambda p: crashtest.record_workload(p, SEEDS[0], PLAN.op_count, crashtest.JOURNAL_STORE),
     crashtest.JOURNAL_STORE),
    (lambda p: crashtest.record_redo(p, SEEDS[0], 2 * PLAN.op_count, journal_size=crashtest.JOURNAL_REDO)[:2],
     crashtest.JOURNAL_REDO),
], ids=["store", "redo"])
def test_J3_the_workloads_append_fill_and_checkpoint_the_journal(tmp_path, record, journal_size):
    """The enumeration above means something only if the traces hold every journal path:
    appends, checkpoints (a new epoch after a whole-heap write-back), and no barrier
    written back in place."""
    path = tmp_path / "w.heap"
    base, trace = record(path)[:2]
    lanes = struct.unpack_from("<II", base, layout.header_field_offsets()["lane_count"])
    lo = layout.journal_off_for(*lanes)
    appends, epochs, whole, in_place = _journal_events(trace, lo, lo + journal_size)
    assert len(appends) >= 10, "barriers must append records"
    assert len(epochs) >= 2 and len(whole) >= 2, "the journal must fill and checkpoint more than once"
    assert not in_place, "a journaled heap must not write a barrier's ranges back in place"


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_J1_group_commit_through_the_journal(tmp_path_factory, seed, crash_totals):
    """The staged group-commit workload (test_store_crash.py) with its barriers appended to
    a journal small enough to fill."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    job = crashtest.Job("group", seed, PLAN.op_count // 2, PLAN.max_subsets, journal_size=crashtest.JOURNAL_STORE)
    crash_totals.run(f"group commit, journal (seed {seed})", job, workdir, WORKERS, 1000)
