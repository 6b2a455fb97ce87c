"""Whole-store crash injection: randomized workloads x every crash state.

A workload (put, replace, delete, atomic batch, inline and out-of-line values, tall
towers, growth mid-workload) runs once on a traced heap; the crash simulator then
materialises every image a power failure could leave (recovery/crashsim.py: every
persist point x subsets of dirty units at 8 B, 64 B and 4 KiB/512 B). Each image is
opened through normal recovery (copy-on-write, so the image file is never written),
compared with the model (every acknowledged operation present with exact bytes, the
in-flight one all or nothing), and checked by the independent checker (I1-I5, P1-P5,
which includes "no leak, no dangling pointer").

Multi-lane redo workloads (three threads, four lanes: L1-L5) run alongside, because the
store serialises its writers and so never exercises one lane's invalidation riding
another lane's commit point; so does a two-thread workload in which one thread reuses
memory the other's sealed commit wrote into (L7), and one staged with a fence hook, in
which a thread's barrier is in flight while the other thread clears the seal its lane
depends on (L6), and random schedules staged the same way: commits from three threads held
inside their barriers while later commits run past them (L4, L6). Store writers that share
commits (group commit) are staged too: one writer held inside its barrier, holding the
writer lock, while others queue behind it; then one commit applies the queued ops. Used by
tests/crash and `pmstore crashtest`. This module drives the store to record workloads; the
checker it calls (recovery/check.py) never does.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recovery import crashsim
from recovery.check import check_heap, check_image

KEYS = [f"k/{i:02d}" for i in range(12)]
SIZES = [0, 30, 100, 900, 5000, 20000]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to explore: workload seeds x operations, subsets per crash point."""
    seeds: tuple[int, ...]
    op_count: int
    max_subsets: int


PLANS = {
    "quick": Plan(seeds=(101, 102), op_count=10, max_subsets=8),
    "default": Plan(seeds=tuple(range(31, 59)), op_count=20, max_subsets=48),
    "long": Plan(seeds=tuple(range(1000, 1064)), op_count=24, max_subsets=48),
}
REDO_LANES = 4
REDO_THREADS = 3
# Journals small enough to fill mid-workload (FORMAT.md 7.11: full journal -> checkpoint):
# the redo workload's records are about 100-300 bytes, the store's up to 20 KB.
JOURNAL_REDO = 8 << 10
JOURNAL_STORE = 16 << 10


def threads_pinned(count: int) -> list[ThreadPoolExecutor]:
    """count one-thread executors whose threads are numbered 0..count-1 for the allocator
    (their home lanes): a workload takes the same lanes in any process, so its crash
    states follow from its seed."""
    from allocator import _native
    return [ThreadPoolExecutor(1, initializer=_native.set_thread_index, initargs=(k,)) for k in range(count)]


# ------------------------------------------------------------------ redo commits, several lanes
def record_redo(path: Path, seed: int, commit_count: int, lane_count: int = REDO_LANES,
                journal_size: int = 0) -> tuple[bytes, bytes, list[int], list[dict]]:
    """Random multi-word redo commits (SET, OR, ANDNOT) from three threads in turn, so
    they use different lanes and one lane's lazy invalidation must be made durable by
    another lane's commit point (L4). journal_size > 0: barriers go through the journal
    (FORMAT.md 7.11). Returns (base image, trace, words, models)."""
    from allocator import HeapFile, layout
    path.unlink(missing_ok=True)
    HeapFile.create(path, size=128 << 10, max_size=128 << 10, lane_count=lane_count, journal_size=journal_size,
                    backend="none").close()
    base = path.read_bytes()
    rng = random.Random(seed)
    ops = (layout.REDO_OP_SET, layout.REDO_OP_OR, layout.REDO_OP_ANDNOT)
    hf = HeapFile.open(path, backend="none", trace=True)
    words = sorted({hf.header.data_off + rng.randrange(3 * 4096 // 8) * 8 for _ in range(24)})
    models = [{w: 0 for w in words}]
    workers = threads_pinned(REDO_THREADS)
    try:
        for i in range(commit_count):
            entries = [(rng.choice(ops), w, rng.getrandbits(64)) for w in rng.sample(words, rng.randint(1, 6))]
            hf.mapping.trace_mark(2 * i)
            workers[i % REDO_THREADS].submit(hf.commit, entries).result()
            hf.mapping.trace_mark(2 * i + 1)
            models.append(apply_entries(models[-1], entries))
        mapping = hf.mapping
        hf.mark_clean()     # the close path's writes, still traced
        trace = mapping.trace_take()
        hf.abandon()
    finally:
        for w in workers:
            w.shutdown()
    return base, trace, words, models


def apply_entries(model: dict[int, int], entries) -> dict[int, int]:
    """The model of a redo commit: SET, OR, ANDNOT on 64-bit words."""
    from allocator import layout
    out = dict(model)
    for op, off, v in entries:
        old = out[off]
        out[off] = v if op == layout.REDO_OP_SET else old | v if op == layout.REDO_OP_OR else old & ~v
    return out


def allowed_states(point: crashsim.CrashPoint, models: list) -> tuple[int, list]:
    """(operations acknowledged before the crash, the states recovery may show):
    marks 2i and 2i+1 bracket operation i."""
    acked, started = map(len, op_marks(point))
    return acked, [models[acked]] + ([models[acked + 1]] if started > acked else [])


def read_words(path: Path, words: list[int], *, backend: str = "private") -> dict[int, int]:
    """The words after recovery (copy-on-write by default: the file is left as it was)."""
    from allocator import HeapFile
    hf = HeapFile.open(path, backend=backend)
    try:
        return {w: hf.mapping.load8(w) for w in words}
    finally:
        hf.abandon()


def run_redo(seed: int, commit_count: int, max_subsets: int, workdir: Path, *, workers: int = 1,
             lane_count: int = REDO_LANES, journal_size: int = 0) -> crashsim.Result:
    base, trace, words, models = record_redo(workdir / f"r{seed}.heap", seed, commit_count, lane_count,
                                             journal_size)

    def check(img, point):
        acked, allowed = allowed_states(point, models)
        assert read_words(img, words) in allowed, f"after {acked} acknowledged commits the words match no allowed state"
    return crashsim.explore(base, trace, check, workdir=workdir, max_subsets=max_subsets, seed=seed,
                            private=True, workers=workers)


# ------------------------------------------------------------------ a seal cleared before its dependency's (L6)
SETTLE_WORDS = 5        # w (set by C, then by A), then one word per later commit, a 64-byte line each


class _Pauses:
    """A fence hook (Mapping.set_fence_hook) that holds an armed thread at its next traced
    fence -- inside its barrier, after the fence -- until the workload releases it."""

    def __init__(self):
        self._armed: dict[int, tuple[threading.Event, threading.Event]] = {}
        self._gos: list[threading.Event] = []
        self.held = 0

    def arm(self, ident: int) -> tuple[threading.Event, threading.Event]:
        self._armed[ident] = (threading.Event(), threading.Event())    # (it is held, let it go)
        self._gos.append(self._armed[ident][1])
        return self._armed[ident]

    def wait_held(self, ident: int, is_held: threading.Event, fut, timeout_s: float) -> bool:
        """True once the armed thread is held; False if its op finished without a traced
        fence (a mutant that skips a barrier), and it is disarmed."""
        for _ in range(int(timeout_s / 0.005)):
            if is_held.wait(0.005):
                return True
            if fut.done():
                self._armed.pop(ident, None)
                return False
        raise RuntimeError("an armed thread never reached a barrier nor finished")

    def release_all(self) -> list[threading.Event]:
        """Every release ever armed, so a failed workload never leaves a thread held."""
        return self._gos

    def __call__(self) -> None:
        pair = self._armed.pop(threading.get_ident(), None)     # held once per arming
        if pair:
            self.held += 1
            pair[0].set()
            if not pair[1].wait(60):
                raise RuntimeError("a thread held at its fence was never released")


def _end_staged(heap, pauses: _Pauses, pools: list[ThreadPoolExecutor], store=None) -> None:
    """After a staged workload, or its failure: no thread left held, the heap (and the
    store over it) dropped as a crash would leave it, the threads gone."""
    for go in pauses.release_all():
        go.set()
    if not heap.closed:
        heap.mapping.set_fence_hook(None)
        (store or heap).abandon()
    for p in pools:
        p.shutdown()


def record_settle(path: Path, seed: int) -> tuple[bytes, bytes, list[int], list[tuple[int, int, int]], int]:
    """Two threads, staged with a fence hook so that a dependency is cleared by another
    thread while this thread's barrier is in flight, which one op at a time never does:
    T1 commits C (w); T1's next commit claims C and is held inside its barrier, so C is
    SETTLING; T2 commits A (w again: A depends on C, which it cannot claim); T2's next
    commit claims A and is held inside its barrier; T1 is let go and clears C's seal (a
    store its next barrier would make durable: T1 commits nothing more); T2 is let go and
    finds C CLEARED, not gone. A's seal may be cleared only after C's clearing is durable
    (L6): else a crash finds C sealed and A gone, and C's replay puts w back to C's value.
    Returns (base image, trace, words, setters (op, word, value) in order, fences held)."""
    from allocator import Heap, layout
    rng = random.Random(seed)
    path.unlink(missing_ok=True)
    Heap.create(path, size=1 << 20, max_size=1 << 20, backend="none").close()
    with Heap.open(path, backend="none") as heap, heap.transaction() as tx:
        block = tx.alloc(64 * SETTLE_WORDS)
        tx.write(block, bytes(64 * SETTLE_WORDS))
        tx.set(layout.ROOT_OFF, block)
    base = path.read_bytes()
    words = [block + 64 * i for i in range(SETTLE_WORDS)]
    w, later = words[0], words[1:]
    heap = Heap.open(path, backend="none", trace=True)
    m = heap.mapping
    pauses = _Pauses()
    t1, t2 = threads_pinned(2)
    id1, id2 = t1.submit(threading.get_ident).result(), t2.submit(threading.get_ident).result()
    setters: list[tuple[int, int, int]] = []

    def commit(i: int, pool: ThreadPoolExecutor, off: int):
        value = rng.getrandbits(63) | 1
        setters.append((i, off, value))

        def run():
            with heap.transaction() as tx:
                tx.set(off, value)
        m.trace_mark(2 * i)
        return pool.submit(run)

    def acked(i: int, fut) -> None:
        fut.result()
        m.trace_mark(2 * i + 1)

    try:
        m.set_fence_hook(pauses)
        m.trace_start()
        acked(0, commit(0, t1, w))                      # C
        held1, go1 = pauses.arm(id1)
        c2 = commit(1, t1, later[0])                    # claims C, held in its barrier
        if not held1.wait(60):
            raise RuntimeError("T1 never reached its barrier")
        acked(2, commit(2, t2, w))                      # A: depends on C (SETTLING)
        held2, go2 = pauses.arm(id2)
        a2 = commit(3, t2, later[1])                    # claims A, held in its barrier
        if not held2.wait(60):
            raise RuntimeError("T2 never reached its barrier")
        go1.set()
        acked(1, c2)                                    # C's seal cleared, not yet durable
        go2.set()
        acked(3, a2)                                    # A: its dependency C is CLEARED
        acked(4, commit(4, t2, later[2]))
        acked(5, commit(5, t2, later[3]))
        m.set_fence_hook(None)
        trace = m.trace_take()
    finally:
        _end_staged(heap, pauses, [t1, t2])     # a crash: T1's store clearing C's seal is still volatile
    return base, trace, words, setters, pauses.held


def op_marks(point: crashsim.CrashPoint) -> tuple[set[int], set[int]]:
    """(ops acknowledged, ops started) before the crash: marks 2i and 2i+1 bracket op i."""
    return {mk // 2 for mk in point.marks if mk % 2 == 1}, {mk // 2 for mk in point.marks if mk % 2 == 0}


def settle_allowed(words: list, setters, acked: set[int], started: set[int],
                   initial: dict | None = None) -> dict:
    """Per word (or key), the values recovery may show: the last acknowledged setter's, or
    any later setter's that had started (ops overlap here, so each word is judged alone).
    Before any setter a word holds 0, or initial.get(word) when initial is given."""
    out = {}
    for off in words:
        mine = [(i, v) for i, o, v in setters if o == off]
        done = [k for k, (i, _v) in enumerate(mine) if i in acked]
        first = done[-1] if done else -1
        ok = {mine[first][1]} if done else {0 if initial is None else initial.get(off)}
        ok |= {v for i, v in mine[first + 1:] if i in started}
        out[off] = ok
    return out


def run_settle(seed: int, op_count: int, max_subsets: int, workdir: Path, *, workers: int = 1) -> crashsim.Result:
    base, trace, words, setters, _held = record_settle(workdir / f"s{seed}.heap", seed)
    check = staged_check(words, setters, [], {}, {})
    return crashsim.explore(base, trace, check, workdir=workdir, max_subsets=max_subsets, seed=seed,
                            private=True, workers=workers)


# ------------------------------------------------------------------ random staged schedules
SCHED_THREADS = 3
SCHED_LINES = 3         # 24 words on 3 lines: commits on different words still chain by line (L4)
SCHED_LANES = 32        # lanes to spare: a lane blocked behind a held barrier stays taken
SCHED_HOLD_MAX = 3      # a held commit is let go within this many later commits (see record_sched)
SCHED_PTRS = 8          # words on a fourth line that publish blocks (alloc_into, free_from)
SCHED_SIZES = [16, 48, 200, 1000, 70000]    # small and medium classes, and a page span


def record_sched(path: Path, seed: int, op_count: int,
                 journal_size: int = 0) -> tuple[bytes, bytes, list[int], list, list, tuple, int]:
    """Random commits from three threads -- sets of 1-3 words, a block allocated, filled
    and published in a word, a word set inside a published block, or a published block
    freed (and its memory allocated again) -- where a commit may be held inside
    one of its barriers (the fence hook) while later commits on other threads run past it,
    and released some steps later: the races of concurrent writers (a dependency SETTLING,
    CLEARED mid-barrier, claimed by another thread), staged one thread at a time so the
    trace is the same for the same seed. Commits in flight together never share a word, so
    each word's values have one order; they do share lines, so they depend on each other.
    A held commit is let go within SCHED_HOLD_MAX later commits: the protocol may wait for
    a barrier in flight (a settle round for a lane, L4), so holding one without bound can
    deadlock the others; a commit that waits 10 s for a held one is an error. Returns
    (base image, trace, words, setters (op, word, value) in order, ops (op, words), (blocks
    (publishing op -> the bytes it published), pokes (the same key -> [(op, offset in the
    block, value)])), commits held). A plain write waits until every commit on its lines
    is gone (L9), a held one too, so held commits are let go before one."""
    from allocator import Heap, layout
    rng = random.Random(seed)
    path.unlink(missing_ok=True)
    Heap.create(path, size=4 << 20, max_size=4 << 20, lane_count=SCHED_LANES, journal_size=journal_size,
                backend="none").close()
    with Heap.open(path, backend="none") as heap, heap.transaction() as tx:
        block = tx.alloc(64 * SCHED_LINES + 8 * SCHED_PTRS)
        tx.write(block, bytes(64 * SCHED_LINES + 8 * SCHED_PTRS))
        tx.set(layout.ROOT_OFF, block)
    base = path.read_bytes()
    plain = [block + 8 * i for i in range(8 * SCHED_LINES)]
    ptrs = [block + 64 * SCHED_LINES + 8 * i for i in range(SCHED_PTRS)]
    words = plain + ptrs
    current = dict.fromkeys(words, 0)       # each word's last value set (ops on a word never overlap)
    blocks: dict[int, bytes] = {}       # publishing op -> its bytes (one offset may be published again)
    pokes: dict[int, list[tuple[int, int, int]]] = {}     # publishing op -> (op, offset in the block, value)
    published: dict[int, int] = {}      # word -> the op that published the block it holds
    heap = Heap.open(path, backend="none", trace=True)
    m = heap.mapping
    pauses = _Pauses()
    pools = threads_pinned(SCHED_THREADS)
    idents = [p.submit(threading.get_ident).result() for p in pools]
    setters: list[tuple[int, int, int]] = []
    ops: list[tuple[int, list[int]]] = []
    held: dict[int, tuple[int, object, threading.Event, list[int]]] = {}  # thread -> (op, future, release, words)
    wait_s = 10.0

    def run(offs: list[int], values: list[int]) -> None:
        with heap.transaction() as tx:
            for off, v in zip(offs, values, strict=True):
                tx.set(off, v)

    def publish(i: int, word: int, data: bytes) -> None:
        with heap.transaction() as tx:     # the offset is known inside the op, before its barrier
            off = tx.alloc(len(data))
            tx.write(off, data)
            tx.set(word, off)
            setters.append((i, word, off))
            blocks[i] = data
            published[word] = i
            current[word] = off

    def free(word: int) -> None:
        with heap.transaction() as tx:
            tx.free_from(word)

    def poke(off: int, value: int, raw: bool) -> None:
        """A word inside a published block, while the commit that published it may still be
        DEFERRED: through a commit (whose seal must never replay once the block is freed and
        reused, L7) or as a plain persisted write the log never sees."""
        if raw:
            heap.write(off, value.to_bytes(8, "little"))
            return
        with heap.transaction() as tx:
            tx.set(off, value)

    def release(t: int) -> None:
        i, fut, go, _offs = held.pop(t)
        go.set()
        fut.result()
        m.trace_mark(2 * i + 1)

    try:
        m.set_fence_hook(pauses)
        m.trace_start()
        for i in range(op_count):
            for t in [t for t, h in held.items() if i - h[0] > SCHED_HOLD_MAX]:
                release(t)
            if held and (len(held) == SCHED_THREADS - 1 or rng.random() < 0.3):
                release(rng.choice(sorted(held)))
            t = rng.choice([t for t in range(SCHED_THREADS) if t not in held])
            busy = {off for *_x, offs in held.values() for off in offs}
            idle_ptrs = [w for w in ptrs if w not in busy]
            kind = rng.random()
            if kind < 0.25 and any(not current[w] for w in idle_ptrs):
                word = rng.choice([w for w in idle_ptrs if not current[w]])
                offs, call = [word], (publish, i, word, rng.randbytes(rng.choice(SCHED_SIZES)))
            elif kind < 0.4 and any(current[w] for w in idle_ptrs):
                word = rng.choice([w for w in idle_ptrs if current[w]])
                offs, call = [word], (free, word)
                setters.append((i, word, 0))
                current[word] = 0
            elif kind < 0.55 and any(current[w] for w in idle_ptrs):
                word = rng.choice([w for w in idle_ptrs if current[w]])
                key = published[word]
                done = [r for _i, r, _v in pokes.get(key, [])]   # half the time a word poked before (L9)
                rel = rng.choice(done) if done and rng.random() < 0.5 else 8 * rng.randrange(len(blocks[key]) // 8)
                value = rng.getrandbits(63) | 1
                pokes.setdefault(key, []).append((i, rel, value))
                raw = rng.random() < 0.5
                for other in sorted(held) if raw else []:     # it would wait for them (L9)
                    release(other)
                offs, call = [word], (poke, current[word] + rel, value, raw)     # word: block busy
            else:
                offs = rng.sample([w for w in plain if w not in busy], rng.randint(1, 3))
                values = [rng.getrandbits(63) | 1 for _ in offs]
                setters += [(i, off, v) for off, v in zip(offs, values, strict=True)]
                current.update(zip(offs, values, strict=True))
                call = (run, offs, values)
            if call[0] is not poke:
                ops.append((i, offs))
            hold = len(held) < SCHED_THREADS - 1 and rng.random() < 0.4
            if hold:
                is_held, go = pauses.arm(idents[t])
            m.trace_mark(2 * i)
            fut = pools[t].submit(*call)
            if hold and pauses.wait_held(idents[t], is_held, fut, wait_s):
                held[t] = (i, fut, go, offs)
            else:       # not held: not armed, or its op issued no traced fence
                try:
                    fut.result(wait_s)
                except TimeoutError:
                    ids = sorted(h[0] for h in held.values())
                    raise RuntimeError(f"op {i} waited {wait_s} s on a held barrier (ops {ids}): "
                                       "this schedule cannot run") from None
                m.trace_mark(2 * i + 1)
        for t in sorted(held):
            release(t)
        m.set_fence_hook(None)
        trace = m.trace_take()
    finally:
        _end_staged(heap, pauses, pools)        # a crash: whatever the threads left volatile stays so
    return base, trace, words, setters, ops, (blocks, pokes), pauses.held


def staged_check(words: list[int], setters, ops, blocks: dict, pokes: dict):
    """The check of a staged workload's crash image (record_settle, record_sched): the
    independent checker on the image as found; then, recovered, every word holds a value
    op_marks allows (L6: a dependency's seal replayed after the seal depending on it was
    gone would put back an older one), every published block the bytes written into it,
    by commits and plain writes (L7, L9), and a commit in flight all of its words or none."""
    from allocator import HeapFile
    mine = {(i, off): v for i, off, v in setters}

    def block_states(key: int, acked: set[int], started: set[int]) -> list[bytes]:
        """The bytes the block may hold: every acknowledged poke in, the one in flight either way."""
        data = bytearray(blocks[key])
        flight = []
        for i, rel, value in pokes.get(key, []):
            if i in acked:
                data[rel:rel + 8] = value.to_bytes(8, "little")
            elif i in started:
                flight.append((rel, value))
        out = [bytes(data)]
        for rel, value in flight:
            data[rel:rel + 8] = value.to_bytes(8, "little")
            out.append(bytes(data))
        return out

    def check(img, point):
        raw = check_heap(img, at_rest=False)
        assert raw.ok, "crashed image: " + "; ".join(map(str, raw.findings[:3]))
        acked, started = op_marks(point)
        allowed = settle_allowed(words, setters, acked, started)
        hf = HeapFile.open(img, backend="private")     # recovery, copy-on-write
        try:
            got = {w: hf.mapping.load8(w) for w in words}
            # the block a word holds: its latest publish that started (ops on a word never overlap)
            pub = {w: max((i for i, o, v in setters if o == w and v == got[w] and i in started), default=None)
                   for w in words if got[w]}
            torn = [w - words[0] for w, i in pub.items() if i in blocks and hf.mapping.read(
                got[w], len(blocks[i])) not in block_states(i, acked, started)]
        finally:
            hf.abandon()
        bad = {off - words[0]: got[off] for off in words if got[off] not in allowed[off]}
        assert not bad, (f"words at {sorted(bad)} hold values no acknowledged or started commit left (L6: a "
                         f"dependency's seal replayed after the seal depending on it was gone?)")
        assert not torn, (f"words at {torn} publish blocks whose bytes are not the ones written (L7: a seal "
                          f"replayed into reused memory? L9: over a plain write?)")
        for i, offs in ops:     # a commit in flight: all of its words or none
            if i in started and i not in acked:
                new = [got[off] == mine[i, off] for off in offs]
                assert all(new) or not any(new), f"op {i} half applied: {new} over words {offs}"
    return check


def run_sched(seed: int, op_count: int, max_subsets: int, workdir: Path, *, workers: int = 1,
              journal_size: int = 0) -> crashsim.Result:
    base, trace, words, setters, ops, (blocks, pokes), _held = record_sched(workdir / f"c{seed}.heap", seed,
                                                                             op_count, journal_size)
    check = staged_check(words, setters, ops, blocks, pokes)
    return crashsim.explore(base, trace, check, workdir=workdir, max_subsets=max_subsets, seed=seed,
                            private=True, workers=workers)


# ------------------------------------------------------------------ freed memory vs stale seals (L7)
LIMBO_SPAN = 96 << 10       # a large object: freed pages go straight back to the free spans


def record_limbo(path: Path, seed: int) -> tuple[bytes, bytes, list[tuple[int, bytes | None]]]:
    """Two threads in turn, each on its own lanes. Thread 1 allocates a large object with
    its bytes and publishes it in the root (one transaction); thread 0 sets a word inside
    it and goes idle, so that commit stays sealed (nothing depends on it); thread 1 frees
    the object, then allocates another of the same size with other bytes. The second must
    not take the first's pages while the sealed commit can still replay its word into
    them (L7). Then thread 0 sets a word in the second object and goes idle, and thread 1
    overwrites that word with a plain persisted write: once the write returns, the sealed
    commit must not replay its older word over it (L9). Returns (base image, trace,
    models: (root, the root block's bytes))."""
    from allocator import Heap, layout
    rng = random.Random(seed)
    path.unlink(missing_ok=True)
    Heap.create(path, size=1 << 20, max_size=1 << 20, backend="none").close()
    base = path.read_bytes()
    heap = Heap.open(path, backend="none", trace=True)
    m = heap.mapping
    one = threads_pinned(2)     # persistent threads: their lanes stay theirs
    models: list[tuple[int, bytes | None]] = [(0, None)]

    def publish(data: bytes) -> int:
        with heap.transaction() as tx:
            off = tx.alloc(len(data))
            tx.write(off, data)
            tx.set(layout.ROOT_OFF, off)
        return off

    def set_word(off: int, value: int) -> None:
        with heap.transaction() as tx:
            tx.set(off, value)

    def write_word(off: int, value: int) -> None:
        heap.write(off, value.to_bytes(8, "little"))

    def step(i: int, thread: int, fn, *args):
        m.trace_mark(2 * i)
        out = one[thread].submit(fn, *args).result()
        m.trace_mark(2 * i + 1)
        return out

    try:
        m.trace_start()
        first = rng.randbytes(LIMBO_SPAN)
        off = step(0, 1, publish, first)
        models.append((off, first))
        word = rng.getrandbits(64)
        step(1, 0, set_word, off + 8, word)
        models.append((off, first[:8] + word.to_bytes(8, "little") + first[16:]))
        step(2, 1, heap.free_from, layout.ROOT_OFF)
        models.append((0, None))
        second = rng.randbytes(LIMBO_SPAN)
        off = step(3, 1, publish, second)
        models.append((off, second))
        for i, (thread, fn) in enumerate([(0, set_word), (1, write_word)], start=4):
            word = rng.getrandbits(64)
            step(i, thread, fn, off + 8, word)
            models.append((off, second[:8] + word.to_bytes(8, "little") + second[16:]))
        trace = m.trace_take()
        heap.abandon()      # a crash: thread 0's commit is still sealed
    finally:
        for w in one:
            w.shutdown()
    return base, trace, models


def run_limbo(seed: int, op_count: int, max_subsets: int, workdir: Path, *, workers: int = 1) -> crashsim.Result:
    from allocator import Heap
    base, trace, models = record_limbo(workdir / f"l{seed}.heap", seed)

    def check(img, point):
        acked, allowed = allowed_states(point, models)
        raw = check_heap(img, at_rest=False)
        assert raw.ok, "crashed image: " + "; ".join(map(str, raw.findings[:3]))
        heap = Heap.open(img, backend="private")
        try:
            root = heap.root
            states = [st for st in allowed if st[0] == root]
            assert states, f"after {acked} acknowledged steps the root is {root}, allowed {[a[0] for a in allowed]}"
            if root:
                got = heap.read(root, LIMBO_SPAN)
                assert any(got == st[1] for st in states), (
                    f"after {acked} acknowledged steps the object at {root} holds other bytes (L7: a stale "
                    f"seal replayed into reused memory? L9: over a plain write?) first difference at "
                    f"{next(i for i in range(LIMBO_SPAN) if got[i] != states[-1][1][i])}")
        finally:
            heap.abandon()
    return crashsim.explore(base, trace, check, workdir=workdir, max_subsets=max_subsets, seed=seed,
                            private=True, workers=workers)


# ------------------------------------------------------------------ store workloads


def record_workload(path: Path, seed: int, op_count: int, journal_size: int = 0,
                    threads: int = 1) -> tuple[bytes, bytes, list[dict]]:
    """Run a random store workload on a traced heap: (base image, trace, models).
    models[i] is the store's content after i operations; marks 2i / 2i+1 bracket op i.
    journal_size > 0: its barriers go through a journal that small (FORMAT.md 7.11), so
    it fills and checkpoints mid-workload. threads > 1: op i runs on thread i % threads
    (one at a time), so consecutive commits come from different lane pairs and one
    thread's commit may still be DEFERRED when the next thread's commit changes a
    record it published (what concurrent writers and group commit leaders do)."""
    from store import Store
    rng = random.Random(seed)
    base_keys, seeded = _new_store(path, seed, journal_size)
    s = seeded(Store.open(path, backend="none", create=False))
    base = path.read_bytes()    # after open: its writes (a journal's new epoch) are durable when it returns
    m = s.heap.mapping
    m.trace_start()
    model = {k: (k.encode() * 3) for k in base_keys}
    models = [dict(model)]
    pool = threads_pinned(threads)
    last = None     # threads > 1: the key of the last op, which the next op often follows (L8)
    for i in range(op_count):
        m.trace_mark(2 * i)
        last = pool[i % threads].submit(_workload_op, s, rng, model, i, op_count, m.size,
                                        last if threads > 1 else None).result()
        m.trace_mark(2 * i + 1)
        models.append(dict(model))
    for w in pool:
        w.shutdown()
    trace = m.trace_take()
    s.abandon()
    return base, trace, models


def _new_store(path: Path, seed: int, journal_size: int, initial_size: int = 256 << 10) -> tuple[list[str], Callable]:
    """A new store at path holding a few keys of the workloads' key space and at least one
    record above level 0 that the workloads never touch, closed. Returns (the keys it
    holds, each valued key.encode() * 3; seeded(store), which seeds an opened store's tower
    heights from the workload seed: the same seed gives the same index, trace and crash
    states, so a violation reruns (Job))."""
    from store import Store
    path.unlink(missing_ok=True)
    base_keys = KEYS[:3]
    opens = iter(range(1 << 20))

    def seeded(s: Store) -> Store:
        s._index.seed_heights(seed << 20 | next(opens))     # the index seeds them from the clock
        return s
    with seeded(Store.open(path, initial_size=initial_size, max_size=16 << 20, backend="none",
                           journal_size=journal_size)) as s:
        for k in base_keys:
            s.put(k, k.encode() * 3)
    # Tower heights are random: add keys the workload never touches until one of them
    # stands above level 0, so its inserts and deletes always cross upper levels (about 1
    # in 20 workloads had no tall record left at the end, and left them untested).
    workload_keys = {k.encode() for k in KEYS}
    while not any(r.height > 1 and r.key not in workload_keys for r in check_heap(path, records=True).store.records):
        if len(base_keys) == 100:     # p = 1/8 per level: all 97 at level 0 one time in ~400,000
            raise RuntimeError("97 keys added and none above level 0: the index's tower heights are not random")
        base_keys = [*base_keys, f"k/{len(base_keys):02d}~"]    # between the workload's keys
        with seeded(Store.open(path, backend="none", create=False)) as s:
            s.put(base_keys[-1], base_keys[-1].encode() * 3)
    return base_keys, seeded


def _workload_op(s, rng: random.Random, model: dict, i: int, op_count: int, heap_size: int,
                 after: str | None = None) -> str:
    """Operation i of a store workload, applied to the store and to the model; returns its
    key. after: half the time, take the key that follows it, so this op changes the link
    of the record the last op (on another thread) published -- the L8 case."""
    k = rng.choice(KEYS)
    if after is not None and rng.random() < 0.5:
        k = KEYS[(KEYS.index(after) + 1) % len(KEYS)]
    if i == op_count // 2:      # a value larger than the free space: the heap grows mid-workload
        v = rng.randbytes(heap_size)
        s.put(k, v)
        model[k] = v
    elif rng.random() < 0.25:     # an atomic batch of 2-4 puts and deletes
        with s.batch() as b:
            for kk in rng.sample(KEYS, rng.randint(2, 4)):
                if kk in model and rng.random() < 0.4:
                    b.delete(kk)
                    del model[kk]
                else:
                    v = rng.randbytes(rng.choice(SIZES))
                    b.put(kk, v)
                    model[kk] = v
    elif k in model and rng.random() < 0.35:
        s.delete(k)
        del model[k]
    else:
        v = rng.randbytes(rng.choice(SIZES))
        s.put(k, v, content_type=rng.choice([None, "text/plain"]))
        model[k] = v
    return k


def check_image_against(img: Path, point: crashsim.CrashPoint, models: list[dict]) -> None:
    """Check the crash image as found (the checker replays its lanes independently), then
    recover it (copy-on-write), compare with the model, and check the recovered heap."""
    acked, allowed = allowed_states(point, models)
    got = recovered_objects(img)
    assert got in allowed, (f"objects match neither the state before nor after op {acked}: "
                            f"keys {sorted(got)} vs {[sorted(a) for a in allowed]}")


def recovered_objects(img: Path) -> dict[str, bytes]:
    """The objects of a crash image after recovery (copy-on-write), once the checker found
    nothing wrong in the image as found (it replays the lanes independently) nor in the
    recovered heap, and all three agree on the object count."""
    from store import Store
    raw = check_heap(img, at_rest=False)
    assert raw.ok, "crashed image: " + "; ".join(map(str, raw.findings[:3]))
    with Store.open(img, backend="private", create=False) as s:
        got = {key: s.get(key)[0] for key in s}
        m = s.heap.mapping
        view = m.view(0, m.size)
        try:
            rep = check_image(view, name=str(img))   # the recovered heap is at rest
        finally:
            view.release()
    assert rep.ok, "; ".join(map(str, rep.findings[:3]))
    assert rep.objects == len(got) == raw.objects, \
        f"objects: {len(got)} in the store, {rep.objects} after recovery, {raw.objects} by the checker's own replay"
    return got


def run_workload(seed: int, op_count: int, max_subsets: int, workdir: Path, *, workers: int = 1,
                 journal_size: int = 0, threads: int = 1) -> crashsim.Result:
    base, trace, models = record_workload(workdir / f"w{seed}.heap", seed, op_count, journal_size, threads)

    def check(img, point):
        check_image_against(img, point, models)
    return crashsim.explore(base, trace, check, workdir=workdir, max_subsets=max_subsets, seed=seed,
                            private=True, workers=workers)


# ------------------------------------------------------------------ group commit, staged
GROUP_THREADS = 4           # one holds the writer lock inside its barrier while up to three queue
GROUP_SIZES = [0, 30, 100, 900, 3000]
GROUP_HEAP_SIZE = 4 << 20   # a page per class per thread: a group that ran out of pages would split


def _group_op(rng: random.Random, key: str, model: dict, holder: bool, avoid=()):
    """One writer's op on key: (call(store), the value it leaves if it succeeds (None: the
    key deleted), the error it must raise instead, or None). The holder's op always
    commits (it must reach a barrier); the others may fail a precondition or find no key,
    and their group skips them. The value it leaves is never the old one nor one in avoid,
    so whether an op was applied can be read off its key."""
    while True:
        op = _group_op_once(rng, key, model, holder)
        if op[2] is not None or (op[1] != model.get(key) and op[1] not in avoid):
            return op


def _group_op_once(rng: random.Random, key: str, model: dict, holder: bool):
    from store.errors import NoSuchKeyError, PreconditionFailedError
    old = model.get(key)
    v = rng.randbytes(rng.choice(GROUP_SIZES))
    kind = rng.random()
    if old is not None and kind < 0.25:
        if holder or rng.random() < 0.7:
            return (lambda s: s.delete(key)), None, None
        return (lambda s: s.delete(key, if_match="f" * 32)), None, PreconditionFailedError
    if holder:
        ctype = rng.choice([None, "text/plain"])
        return (lambda s: s.put(key, v, content_type=ctype)), v, None
    if old is None and kind < 0.35:
        return (lambda s: s.delete(key)), None, NoSuchKeyError
    if kind < 0.5:              # create-only: fails where the key exists
        return (lambda s: s.put(key, v, if_none_match=True)), v, None if old is None else PreconditionFailedError
    if old is not None and kind < 0.65:     # the current ETag, or a stale one
        good = rng.random() < 0.6
        etag = hashlib.md5(old).hexdigest() if good else "f" * 32
        return (lambda s: s.put(key, v, if_match=etag)), v, None if good else PreconditionFailedError
    ctype = rng.choice([None, "text/plain"])    # None: the put of one C call, else the Python path
    return (lambda s: s.put(key, v, content_type=ctype)), v, None


def record_group(path: Path, seed: int, round_count: int, journal_size: int = 0):
    """Rounds of concurrent writers sharing commits (group commit, FORMAT.md 8), staged so
    that the same seed gives the same trace. In each round one thread's put or delete is
    held inside its barrier, holding the writer lock; one to three other threads then join
    the group-commit queue, one at a time (plain and conditional puts, deletes: some fail
    their precondition or find no key, and their group skips them; when the last two share
    a key, the second waits for a group of its own); then the held op is let go and the
    first writer queued commits the others' ops in one commit. Marks 2i and 2i+1 bracket
    op i. An op's acknowledgement races the next commit, so it is marked once that commit
    is held at its first barrier (or, for the round's last, when the round is done): the
    same place on every run, and never before the op returned. Returns (base image,
    trace, keys, the objects before the first op, setters (op, key, value; None: deleted)
    of the ops that succeeded, groups (ops one commit applied, two or more))."""
    from store import Store
    rng = random.Random(seed)
    base_keys, seeded = _new_store(path, seed, journal_size, GROUP_HEAP_SIZE)
    s = seeded(Store.open(path, backend="none", create=False, group_commit=True))
    base = path.read_bytes()
    m = s.heap.mapping
    size0 = m.size
    if s._group.limit < GROUP_THREADS:
        raise RuntimeError(f"group commit takes {s._group.limit} ops a commit: too few for this workload")
    model = {k: k.encode() * 3 for k in base_keys}
    start = dict(model)
    setters: list[tuple[int, str, bytes | None]] = []
    groups: list[list[int]] = []
    pauses = _Pauses()
    pools = threads_pinned(GROUP_THREADS)
    idents = [p.submit(threading.get_ident).result() for p in pools]
    wait_s = 10.0
    i = 0

    def planned(key: str, holder: bool, avoid=()):
        nonlocal i
        call, value, err = _group_op(rng, key, model, holder, avoid)
        if err is None:
            setters.append((i, key, value))
            model.pop(key) if value is None else model.__setitem__(key, value)
        i += 1
        return i - 1, call, err

    def acked(done: list[tuple[int, object, type | None]]) -> None:
        """Mark ops acknowledged once each returned as the model expects."""
        for op, fut, err in done:
            try:
                fut.result(wait_s)
            except Exception as e:      # compared with the error the model expects
                if err is None or type(e) is not err:
                    raise RuntimeError(f"op {op} raised {e!r}; the model expected {err and err.__name__}") from e
            else:
                if err is not None:
                    raise RuntimeError(f"op {op} succeeded; the model expected {err.__name__}")
            m.trace_mark(2 * op + 1)

    def next_commit(t: int, armed: tuple[threading.Event, threading.Event], fut, done: list) -> None:
        """Thread t commits next: once it is held at its first barrier (if it has one: a
        group whose every op failed commits nothing), mark the ops done before it."""
        held, go = armed
        pauses.wait_held(idents[t], held, fut, wait_s)
        acked(done)
        go.set()

    try:
        m.set_fence_hook(pauses)
        m.trace_start()
        for _ in range(round_count):
            threads = rng.sample(range(GROUP_THREADS), rng.choice([2, 3, 4, 4]))
            keys = rng.sample(KEYS, len(threads))
            twin = len(threads) > 2 and rng.random() < 0.3
            if twin:
                keys[-1] = keys[-2]     # one key twice: the second op waits for a group of its own
            op, call, _err = planned(keys[0], True)
            held, go = pauses.arm(idents[threads[0]])
            m.trace_mark(2 * op)
            fut = pools[threads[0]].submit(call, s)
            if not pauses.wait_held(idents[threads[0]], held, fut, wait_s):
                # it returned without a barrier (a mutant's): nothing to queue behind, so the
                # round runs one op at a time, and the crash states show what it lost
                acked([(op, fut, None)])
                for t, key in zip(threads[1:], keys[1:], strict=True):
                    q, call, err = planned(key, False)
                    m.trace_mark(2 * q)
                    acked([(q, pools[t].submit(call, s), err)])
                continue
            queued = []
            before = {k: model.get(k) for k in keys}
            for j, (t, key) in enumerate(zip(threads[1:], keys[1:], strict=True)):
                q, call, err = planned(key, False, (before[key],))     # the twin: never back to before
                leads = j == 0 or (twin and j == len(threads) - 2)     # held at its first barrier
                armed = pauses.arm(idents[t]) if leads else None
                m.trace_mark(2 * q)
                qf = pools[t].submit(call, s)
                for _ in range(int(wait_s / 0.001)):
                    if s._index.group_queued() == j + 1 or qf.done():
                        break
                    time.sleep(0.001)
                if s._index.group_queued() != j + 1:
                    raise RuntimeError(f"op {q} did not join the group-commit queue ({s._index.group_queued()} "
                                       f"queued, {j} expected before it)")
                queued.append((q, t, qf, err, armed))
            go.set()
            first = queued[:-1] if twin else queued
            _q, t, qf, _err, armed = first[0]
            next_commit(t, armed, qf, [(op, fut, None)])
            done = [(q, qf, err) for q, _t, qf, err, _a in first]
            if twin:
                q, t, qf, err, armed = queued[-1]
                next_commit(t, armed, qf, done)
                done = [(q, qf, err)]
            acked(done)
            group = [q for q, _t, _f, err, _a in first if err is None]
            if len(group) > 1:
                groups.append(group)
        if m.size != size0:
            raise RuntimeError("the heap grew: a group that runs out of pages splits, and the rounds are not staged")
        m.set_fence_hook(None)
        trace = m.trace_take()
    finally:
        _end_staged(s.heap, pauses, pools, s)
    return base, trace, sorted({*base_keys, *KEYS}), start, setters, groups


def group_check(keys: list[str], start: dict, setters, groups: list[list[int]]):
    """The check of a group workload's crash image: the checker finds nothing before or
    after recovery; every key holds the value of its last acknowledged op or of a later
    one that had started (the objects before the first op when none did); no other key
    exists; and the ops one commit applied are all there or none."""
    def prior(i: int, key: str):
        return next((v for j, k, v in reversed(setters) if k == key and j < i), start.get(key))
    mine = {i: (k, prior(i, k)) for i, k, _v in setters}     # op -> (its key, the value before it)

    def check(img, point):
        got = recovered_objects(img)
        acked, started = op_marks(point)
        allowed = settle_allowed(keys, setters, acked, started, start)
        bad = {k: len(got[k]) if k in got else None for k in keys if got.get(k) not in allowed[k]}
        assert not bad, f"keys hold values no acknowledged or started op left (key: size found): {bad}"
        assert set(got) <= set(keys), f"keys no op wrote: {sorted(set(got) - set(keys))}"
        for g in groups:   # an op is applied if its key moved on from the value before it
            flight = [i for i in g if i in started and i not in acked]
            new = [got.get(mine[i][0]) != mine[i][1] for i in flight]
            assert all(new) or not any(new), f"the group of ops {g} half applied: {dict(zip(flight, new))}"
    return check


def run_group(seed: int, round_count: int, max_subsets: int, workdir: Path, *, workers: int = 1,
              journal_size: int = 0) -> crashsim.Result:
    base, trace, keys, start, setters, groups = record_group(workdir / f"g{seed}.heap", seed, round_count,
                                                             journal_size)
    return crashsim.explore(base, trace, group_check(keys, start, setters, groups), workdir=workdir,
                            max_subsets=max_subsets, seed=seed, private=True, workers=workers)


@dataclasses.dataclass(frozen=True)
class Job:
    """One workload of the suite, named fully enough to rerun it alone: the same seed gives
    the same trace and the same crash states, given the same explorer count (each explorer
    samples subsets with seed + its index). `pmstore crashtest --replay "<spec>"`."""
    kind: str               # one of KINDS
    seed: int
    ops: int                # operations (store, sched), commits (redo), rounds (group)
    subsets: int            # most dirty-unit subsets tried per crash point
    threads: int = 1        # store: op i runs on thread i % threads (L8)
    journal_size: int = 0   # store, redo, sched, group: barriers through a journal this small (7.11)
    lanes: int = REDO_LANES     # redo

    KINDS = ("store", "redo", "limbo", "settle", "sched", "group")

    def run(self, workdir: Path, workers: int = 1) -> crashsim.Result:
        if self.kind == "store":
            return run_workload(self.seed, self.ops, self.subsets, workdir, workers=workers,
                                journal_size=self.journal_size, threads=self.threads)
        if self.kind == "redo":
            return run_redo(self.seed, self.ops, self.subsets, workdir, workers=workers, lane_count=self.lanes,
                            journal_size=self.journal_size)
        if self.kind == "sched":
            return run_sched(self.seed, self.ops, self.subsets, workdir, workers=workers,
                             journal_size=self.journal_size)
        if self.kind == "group":
            return run_group(self.seed, self.ops, self.subsets, workdir, workers=workers,
                             journal_size=self.journal_size)
        if self.kind == "settle":
            return run_settle(self.seed, self.ops, self.subsets, workdir, workers=workers)
        return run_limbo(self.seed, self.ops, self.subsets, workdir, workers=workers)

    def spec(self) -> str:
        """'store seed=37 ops=20 subsets=48 threads=3': the fields that differ from their defaults."""
        extra = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)[4:]
                 if getattr(self, f.name) != f.default]
        return " ".join([self.kind, f"seed={self.seed}", f"ops={self.ops}", f"subsets={self.subsets}", *extra])

    @classmethod
    def parse(cls, spec: str) -> Job:
        kind, *pairs = spec.split()
        if kind not in cls.KINDS:
            raise ValueError(f"job kind {kind!r}: expected one of {', '.join(cls.KINDS)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        fields = {}
        for pair in pairs:
            name, eq, value = pair.partition("=")
            if not eq or name not in names or not value.isdigit():
                raise ValueError(f"{pair!r}: expected name=integer, name one of {', '.join(sorted(names))}")
            fields[name] = int(value)
        missing = {"seed", "ops", "subsets"} - fields.keys()
        if missing:
            raise ValueError(f"job {spec!r} lacks {', '.join(sorted(missing))}")
        return cls(kind, **fields)

    def failure(self, res: crashsim.Result, workers: int, shown: int = 5) -> str:
        """What a test prints when res has violations: the first few, and how to rerun them."""
        lines = [str(v) for v in res.violations[:shown]]
        rerun = f"pmstore crashtest --replay '{self.spec()}' --workers {workers}"
        return "\n".join([*lines, f"{len(res.violations)} violations; rerun this workload alone: {rerun}"])


@dataclasses.dataclass
class Totals:
    workloads: int = 0
    crash_states: int = 0
    persist_points: int = 0
    violations: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)     # the Jobs with violations


def jobs(plan: Plan) -> list[Job]:
    """Two multi-lane redo workloads, the limbo and settle workloads, staged schedules (a
    quarter of the seeds, at least two, and one through a small journal), every store
    workload of the plan, a quarter of them (at least two) from three threads (L8), staged
    group commits (as many, of half as many rounds as the plan's ops, and one through a
    small journal), then one redo and the three-thread store workloads through a small
    barrier journal."""
    quarter = plan.seeds[:max(2, len(plan.seeds) // 4)]   # the quick plan: both seeds (L8 needs them)
    out = [Job("redo", seed, 2 * plan.op_count, 4 * plan.max_subsets) for seed in plan.seeds[:2]]
    out += [Job("limbo", plan.seeds[0], 4, plan.max_subsets)]
    out += [Job("settle", plan.seeds[0], 6, plan.max_subsets)]
    out += [Job("sched", seed, 2 * plan.op_count, plan.max_subsets) for seed in quarter]
    out += [Job("sched", seed, 2 * plan.op_count, plan.max_subsets, journal_size=JOURNAL_STORE)
            for seed in plan.seeds[:1]]
    out += [Job("store", seed, plan.op_count, plan.max_subsets) for seed in plan.seeds]
    out += [Job("store", seed, plan.op_count, plan.max_subsets, threads=3) for seed in quarter]
    out += [Job("group", seed, plan.op_count // 2, plan.max_subsets) for seed in quarter]
    out += [Job("group", seed, plan.op_count // 2, plan.max_subsets, journal_size=JOURNAL_STORE)
            for seed in plan.seeds[:1]]
    out += [Job("redo", seed, 2 * plan.op_count, 4 * plan.max_subsets, journal_size=JOURNAL_REDO)
            for seed in plan.seeds[:1]]
    out += [Job("store", seed, plan.op_count, plan.max_subsets, threads=3, journal_size=JOURNAL_STORE)
            for seed in quarter]
    return out


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def run(plan: Plan | list[Job], *, workers: int | None = None,
        progress: Callable[[int, int, crashsim.Result], None] | None = None, workdir: str | None = None,
        stop_at_first: bool = False) -> Totals:
    """Every job of the plan (jobs(plan)), or the jobs given; progress(i, count, result)
    after each. stop_at_first: end after the first job with violations (a mutant is
    caught; the rest of the plan would only find more)."""
    workers = workers or default_workers()
    todo = jobs(plan) if isinstance(plan, Plan) else plan
    tot = Totals()
    with tempfile.TemporaryDirectory(prefix="pmstore-crashtest-", dir=workdir or _fast_tmp()) as d:
        for i, job in enumerate(todo):
            res = job.run(Path(d), workers)
            tot.workloads += 1
            tot.crash_states += res.states
            tot.persist_points += res.points
            tot.violations += res.violations
            if res.violations:
                tot.failed.append(job)
            if progress:
                progress(i, len(todo), res)
            if stop_at_first and res.violations:
                break
    return tot


def fast_workdir(tmp_path_factory) -> Path:
    """A pytest workdir on tmpfs when there is one (removed with the session's tmp dirs otherwise)."""
    shm = _fast_tmp()
    if shm is None:
        return tmp_path_factory.mktemp("crash")
    d = Path(tempfile.mkdtemp(prefix="pmstore-crash-", dir=shm))
    _CLEANUP.append(d)
    return d


_CLEANUP: list[Path] = []


@atexit.register
def _cleanup() -> None:
    for d in _CLEANUP:
        shutil.rmtree(d, ignore_errors=True)


def _fast_tmp() -> str | None:
    """tmpfs when there is one: images are rewritten thousands of times."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def main(argv: list[str] | None = None) -> int:
    """`python -m recovery.crashtest [quick|default|long] [--first]`, or `... replay SPEC
    WORKERS` (one Job): one JSON line of totals, with the spec of every job that had
    violations (used by recovery/mutants.py to run a mutant build in a fresh interpreter).
    --first: stop after the first job with violations."""
    import json
    import sys
    import time
    args = sys.argv[1:] if argv is None else argv
    first = "--first" in args
    args = [a for a in args if a != "--first"]
    plan = args[0] if args else "quick"
    t0 = time.perf_counter()
    if plan == "replay":
        workers = int(args[2]) if len(args) > 2 else default_workers()
        tot = run([Job.parse(args[1])], workers=workers)
    else:
        workers = default_workers()
        tot = run(PLANS[plan], workers=workers, stop_at_first=first)
    print(json.dumps({"plan": plan, "workloads": tot.workloads, "crash_states": tot.crash_states,
                      "persist_points": tot.persist_points, "violations": len(tot.violations),
                      "first_violation": str(tot.violations[0]) if tot.violations else None,
                      "replay": [job.spec() for job in tot.failed], "workers": workers,
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
