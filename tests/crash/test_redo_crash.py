"""Crash enumeration over random multi-word redo commits (FORMAT.md L1-L4, H4).

Every persist point x dirty-unit subsets at 8 B, 64 B and 4 KiB/512 B: after recovery
each commit is entirely applied or entirely absent, every commit that returned before
the crash is applied, and recovery itself survives a crash (re-running it converges).
Commits come from three threads in turn, so they use different lanes and the lazy
invalidation of one lane must be made durable by another lane's commit point (L4).
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from allocator import HeapFile, layout
from recovery import crashsim, crashtest

WORKERS = min(4, os.cpu_count() or 1)

_record = crashtest.record_redo
_expected = crashtest.allowed_states
_read_words = crashtest.read_words


def make_heap(tmp_path):
    path = tmp_path / "redo.heap"
    HeapFile.create(path, size=128 << 10, max_size=128 << 10, lane_count=4, backend="none").close()
    return path


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_L1_L4_redo_commits_all_or_nothing_at_every_crash_point(tmp_path_factory, seed, crash_totals):
    job = crashtest.Job("redo", seed, 20, 256)
    res = job.run(crashtest.fast_workdir(tmp_path_factory), WORKERS)
    crash_totals.add(f"redo commits (seed {seed})", res)
    assert res.points >= 3 * 20     # three failure models x (at least) one commit point per commit
    assert not res.violations, job.failure(res, WORKERS)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_L6_a_seal_is_cleared_only_after_its_dependencys_clearing_is_durable(tmp_path_factory, seed, crash_totals):
    """Staged with a fence hook (recovery/crashtest.py record_settle): T2's barrier is in
    flight when T1 clears the seal of the commit T2's lane depends on. T2 must keep the
    dependency until that clearing is durable, or a crash finds the older commit sealed,
    the newer gone, and replays the older value (mutant clearedgone)."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    _base, _trace, _words, setters, held = crashtest.record_settle(workdir / "staged.heap", seed)
    assert held == 2, "both threads must be held inside a barrier: the interleaving was not staged"
    assert [i for i, _o, _v in setters] == list(range(6))
    crash_totals.run(f"seal cleared after a dependency's (seed {seed})", crashtest.Job("settle", seed, 6, 256),
                     workdir, WORKERS, 100)


@pytest.mark.parametrize("seed", range(1, 9))
def test_L4_L6_commits_held_in_their_barriers_while_others_run_past_them(tmp_path_factory, seed, crash_totals):
    """Random schedules (recovery/crashtest.py record_sched): commits of 1-3 words on three
    shared lines, blocks allocated, filled and published, written into, freed and their
    memory allocated again, from three threads,
    some held inside a barrier while later commits on the other threads depend on them,
    claim them or find them SETTLING or CLEARED. Every acknowledged word survives with the
    bytes it publishes, and a commit in flight is all or nothing."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    _b, _t, _w, setters, ops, (blocks, pokes), held = crashtest.record_sched(workdir / "sched.heap", seed, 40)
    assert len(ops) + sum(map(len, pokes.values())) == 40 and len(setters) >= len(ops)
    assert held >= 5, f"only {held} commits were held: the schedule stages too few races"
    ptrs = {w for i, w, _v in setters if i in blocks}      # words that published a block
    frees = sum(v == 0 for _i, w, v in setters if w in ptrs)
    assert len(blocks) >= 3 and frees >= 1 and pokes, "the schedule must publish, poke into and free blocks"
    crash_totals.run(f"staged schedule (seed {seed})", crashtest.Job("sched", seed, 40, 48), workdir, WORKERS, 1000)


@pytest.mark.parametrize("lane_count", [1, 2])
def test_L4_too_few_lanes_settle_deferred_words_before_reuse(tmp_path_factory, lane_count, crash_totals):
    """Three threads on one or two lanes: a commit finds every lane taken or DEFERRED and
    settles them with a barrier of its own before it reuses one (7.1, lane_acquire)."""
    job = crashtest.Job("redo", 7 + lane_count, 12, 128, lanes=lane_count)
    res = job.run(crashtest.fast_workdir(tmp_path_factory), WORKERS)
    crash_totals.add(f"redo commits on {lane_count} lane(s)", res)
    assert res.points >= 3 * 12
    assert not res.violations, job.failure(res, WORKERS)


@pytest.mark.parametrize("workload", ["random", "lane-reuse"])
def test_L2_recovery_survives_a_crash_during_recovery(tmp_path, crash_totals, workload):
    """Crash images taken mid-commit are recovered with tracing on; every crash point
    inside that recovery must recover to the same words (replay is idempotent, and
    lanes are emptied in seq order so a stale lane never outlives a newer one)."""
    path = tmp_path / "redo.heap"
    if workload == "random":
        base, trace, words, _models = _record(path, seed=7, commit_count=10)
    else:
        path = make_heap(tmp_path)
        base, trace, words, _models = _record_lane_reuse(path)
    events = crashsim.parse_trace(trace)
    replay = crashsim.Replay(base, events, crashsim.MODELS["64B"])
    rng = random.Random(7)
    nested = crashsim.Result(seed=7)
    img_path = tmp_path / "outer.img"
    outer = []
    for point in replay.points():
        # every subset of up to 3 dirty lines, else 6 random ones
        chosen, _ = crashsim.subsets(point.dirty_units, 8 if len(point.dirty_units) <= 3 else 6, rng)
        outer += [bytes(replay.image(units)) for units in chosen]  # images exist only during the walk
    for image in outer:
        img_path.write_bytes(image)
        inner_base = img_path.read_bytes()
        hf = HeapFile.open(img_path, backend="none", trace=True)
        final = {w: hf.mapping.load8(w) for w in words}
        inner_trace = hf.mapping.trace_take()
        hf.abandon()

        def check(img, _point, final=final):
            assert _read_words(img, words) == final, "recovery interrupted by a crash converged elsewhere"

        r = crashsim.explore(inner_base, inner_trace, check, workdir=tmp_path, models=("8B",),
                             max_subsets=32, seed=7)
        nested.states += r.states
        nested.points += r.points
        nested.violations += r.violations
    crash_totals.add(f"crash during recovery ({workload})", nested)
    assert nested.points > 0
    assert not nested.violations, "\n".join(map(str, nested.violations[:5]))


def _record_lane_reuse(path):
    """Lane X commits w=1; lane Y commits w=2, then reuses its lane for another word."""
    base = path.read_bytes()
    hf = HeapFile.open(path, backend="none", trace=True)
    w, v = hf.header.data_off, hf.header.data_off + 4096

    def commit(word, value):
        hf.commit([(layout.REDO_OP_SET, word, value)])

    steps = [("x", w, 0x1111), ("y", w, 0x2222), ("y", v, 0x3333), ("y", v, 0x4444), ("x", v, 0x5555)]
    models = _run_steps(hf.mapping, [(t, commit, word, value) for t, word, value in steps], {w: 0, v: 0})
    trace = hf.mapping.trace_take()
    hf.abandon()
    return base, trace, [w, v], models


def _run_steps(mapping, steps, start: dict) -> list[dict]:
    """Run steps (thread "x" or "y", fn, word, value) one at a time, step i bracketed by
    trace marks 2i and 2i+1; returns the words after each step (models[0] = start)."""
    pools = {"x": ThreadPoolExecutor(1), "y": ThreadPoolExecutor(1)}
    models = [start]
    try:
        for i, (thread, fn, word, value) in enumerate(steps):
            mapping.trace_mark(2 * i)
            pools[thread].submit(fn, word, value).result()
            mapping.trace_mark(2 * i + 1)
            models.append({**models[-1], word: value})
    finally:
        for p in pools.values():
            p.shutdown()
    return models


def test_L4_lazy_invalidation_never_replays_over_a_later_commit(tmp_path, crash_totals):
    """A stale seal left on lane X would replay w=1 over the durable w=2 once lane Y's
    log of w=2 is overwritten; L4 makes X's invalidation durable at Y's commit point."""
    base, trace, words, models = _record_lane_reuse(make_heap(tmp_path))

    def check(img, point):
        _, allowed = _expected(point, models)
        assert _read_words(img, words) in allowed

    res = crashsim.explore(base, trace, check, workdir=tmp_path, seed=11)
    crash_totals.add("lazy invalidation", res)
    assert not res.violations, "\n".join(map(str, res.violations[:5]))


def _record_plain_writes(path):
    """Commits set words that plain persisted writes then overwrite -- Heap.write, and
    Mapping.write + persist -- on the committing thread and on another one, which leaves
    the committing thread's last commit sealed (DEFERRED) under the write."""
    from allocator import Heap
    path.unlink(missing_ok=True)
    Heap.create(path, size=1 << 20, max_size=1 << 20, backend="none").close()
    with Heap.open(path, backend="none") as heap, heap.transaction() as tx:
        block = tx.alloc(256)
        tx.write(block, bytes(256))
        tx.set(layout.ROOT_OFF, block)
    base = path.read_bytes()
    heap = Heap.open(path, backend="none", trace=True)
    w, v = block, block + 128

    def commit(word, value):
        with heap.transaction() as tx:
            tx.set(word, value)

    def write(word, value):
        heap.write(word, value.to_bytes(8, "little"))

    def store_persist(word, value):
        heap.mapping.write(word, value.to_bytes(8, "little"))
        heap.mapping.persist(word, 8)

    steps = [("x", commit, w, 1), ("x", write, w, 2), ("x", commit, v, 3), ("y", store_persist, v, 4),
             ("x", commit, w, 5), ("y", write, w, 6), ("y", commit, v, 7), ("x", write, v, 8)]
    models = _run_steps(heap.mapping, steps, {w: 0, v: 0})
    trace = heap.mapping.trace_take()
    heap.abandon()
    return base, trace, [w, v], models


def test_L9_a_sealed_commit_never_replays_over_a_plain_write(tmp_path, crash_totals):
    """Without L9 a commit still sealed when a plain write over its word returns replays
    after a crash and puts its older value back: the acknowledged write is lost."""
    base, trace, words, models = _record_plain_writes(tmp_path / "plain.heap")

    def check(img, point):
        _, allowed = _expected(point, models)
        assert _read_words(img, words) in allowed, "a sealed commit replayed over a plain write (L9)"

    res = crashsim.explore(base, trace, check, workdir=tmp_path, seed=12)
    crash_totals.add("plain writes over committed words", res)
    assert res.points > 0
    assert not res.violations, "\n".join(map(str, res.violations[:5]))


def test_L7_L9_freed_memory_and_plain_writes_wait_for_sealed_commits(tmp_path_factory, crash_totals):
    """The limbo workload (recovery/crashtest.py record_limbo): another thread's sealed
    commit must neither replay into memory freed and allocated again (L7) nor over a plain
    write that overwrote its word (L9)."""
    workdir = crashtest.fast_workdir(tmp_path_factory)
    crash_totals.run("limbo and plain writes", crashtest.Job("limbo", 101, 4, 48), workdir, WORKERS, 100)
