"""The heap under threads (allocator/heap.py, csrc/alloc.c: thread heaps, local and
thread free lists, run adoption at thread exit, growth under contention).

Eight threads allocate, write a pattern naming (thread, sequence), free their own
blocks and blocks other threads hand them through a queue (cross-thread frees). free,
read and write release the GIL (alloc keeps it off the msync backend), so the allocator
really runs concurrently. Afterwards every
survivor must be intact and disjoint from every other, the stats must count exactly
the survivors, and freed blocks must be reused rather than grow the file.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time

from allocator import Heap, layout

THREADS = 8
RUN_SECONDS = 1.5
SPAN_SIZE = 70 * 1024
MAX_OWN = 200


def _pattern(tid: int, seq: int, n: int) -> bytes:
    return (bytes([tid]) + seq.to_bytes(7, "little")) * (n // 8) + bytes([tid]) * (n % 8)


def _assert_disjoint(heap: Heap, offs) -> None:
    spans = sorted((off, heap.block_size(off)) for off in offs)
    for (a, an), (b, _) in itertools.pairwise(spans):
        assert a + an <= b, f"block {a} (+{an}) overlaps block {b}"


def test_threads_alloc_and_free_across_threads(tmp_path):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    path = tmp_path / "h.heap"
    heap = Heap.create(path, size=1 << 20, max_size=96 << 20, backend="none")
    handoff: queue.Queue = queue.Queue()
    owned: list[dict[int, tuple[int, int, int]]] = [{} for _ in range(THREADS)]  # off -> (size, tid, seq)
    live: set[int] = set()              # every block handed out and not yet freed, all threads
    live_lock = threading.Lock()
    errors: list[str] = []
    counts = {"alloc": 0, "free": 0, "cross_free": 0}
    count_lock = threading.Lock()
    start = threading.Barrier(THREADS)
    deadline = [0.0]

    def check_and_free(off, size, tid, seq, what):
        got = heap.read(off, size)
        if got != _pattern(tid, seq, size):
            errors.append(f"{what}: block {off} of thread {tid} seq {seq} ({size} B) was overwritten")
        with live_lock:                 # out of the live set before another thread can get it
            live.discard(off)
        heap.free(off)

    def worker(tid: int) -> None:
        rng = random.Random(seed * 31 + tid)
        mine = owned[tid]
        n = {"alloc": 0, "free": 0, "cross_free": 0}
        try:
            start.wait()
            seq = 0
            while time.monotonic() < deadline[0]:
                r = rng.random()
                if r < 0.5 and len(mine) < MAX_OWN:
                    size = SPAN_SIZE if rng.random() < 0.04 else rng.randint(16, 2048)
                    off = heap.alloc(size)
                    with live_lock:
                        if off in live:
                            errors.append(f"thread {tid}: block {off} handed out while still live")
                        live.add(off)
                    seq += 1
                    heap.write(off, _pattern(tid, seq, size))
                    mine[off] = (size, tid, seq)
                    n["alloc"] += 1
                elif r < 0.7 and mine:
                    off = rng.choice(list(mine))
                    check_and_free(off, *mine.pop(off), f"thread {tid} own free")
                    n["free"] += 1
                elif r < 0.8 and mine:          # hand over (taken twice as often: the queue stays short)
                    off = rng.choice(list(mine))
                    handoff.put((off, *mine.pop(off)))
                else:
                    try:
                        off, size, otid, oseq = handoff.get_nowait()
                    except queue.Empty:
                        continue
                    if rng.random() < 0.7 or len(mine) >= MAX_OWN:
                        check_and_free(off, size, otid, oseq, f"thread {tid} cross-thread free")
                        n["cross_free"] += otid != tid
                    else:
                        mine[off] = (size, otid, oseq)     # kept: freed later by its new owner
        except Exception as e:  # noqa: BLE001 - reported below with the thread id
            errors.append(f"thread {tid}: {type(e).__name__}: {e}")
        with count_lock:
            for k, v in n.items():
                counts[k] += v

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    deadline[0] = time.monotonic() + RUN_SECONDS
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"seed {seed}: " + "; ".join(errors[:10])
    print(f"counts {counts}, file size {heap.mapping.size}, handoff queue {handoff.qsize()}")
    assert counts["alloc"] > 1000 and counts["cross_free"] > 50, f"too little concurrency: {counts}"

    held = [item for mine in owned for item in mine.items()]
    while not handoff.empty():
        off, *rest = handoff.get_nowait()
        held.append((off, tuple(rest)))
    survivors = dict(held)
    assert len(survivors) == len(held), "one block is held twice (by two threads or the queue)"
    assert set(survivors) == live, "the tests' own bookkeeping lost a block"
    _assert_disjoint(heap, survivors)
    for off, (size, tid, seq) in survivors.items():
        assert heap.read(off, size) == _pattern(tid, seq, size), f"block {off} of thread {tid} damaged"
    st = heap.stats()
    assert st["live_blocks"] == len(survivors), f"stats count {st['live_blocks']}, {len(survivors)} live"
    assert st["live_block_bytes"] == sum(heap.block_size(off) for off in survivors)
    assert st["bytes_used"] + st["bytes_free"] == st["pages"] * layout.PAGE_SIZE

    # free everything (the threads are gone: every free is now a cross-thread free)
    sizes = sorted((size for size, _, _ in survivors.values()))
    for off in survivors:
        heap.free(off)
    st = heap.stats()
    assert (st["live_blocks"], st["live_block_bytes"], st["large_objects"]) == (0, 0, 0)
    grown = heap.mapping.size
    heap.close()

    with Heap.open(path, backend="none") as heap:
        assert heap.report.live_blocks == 0
        assert heap.stats()["live_blocks"] == 0
        # the same blocks again (small ones first): the runs and freed pages are reused
        offs = [heap.alloc(n) for n in sizes]
        assert heap.mapping.size == grown, (
            f"reallocating {len(sizes)} blocks that fit before grew the file {grown} -> {heap.mapping.size}")
        assert heap.stats()["live_blocks"] == len(offs)
        _assert_disjoint(heap, offs)


def test_L7_python_threads_holding_the_gil_do_not_fill_the_heap(tmp_path):
    """alloc_into/free_from keep the GIL off the msync backend, so one Python thread runs
    thousands of pairs per GIL slice while the others, paused, leave DEFERRED commits its
    freed blocks wait on (L7). A thread whose limbo is that full settles those commits and
    reuses its blocks (alloc.c, run_find_generic, LIMBO_STUCK) instead of taking new pages,
    which only it can use: without that, 16 threads of alloc/free pairs took 11-14 MiB of
    this 16 MiB heap in runs (and filled bench/alloc.py's)."""
    threads_n, pairs, rounds = 16, 25_000, 4
    heap = Heap.create(tmp_path / "h.heap", size=16 << 20, max_size=16 << 20, backend="flush",
                       lane_count=4 * threads_n)     # as bench/alloc.py: every thread its own lanes
    table = heap.alloc(threads_n * 64)      # one word per thread, a cache line apart
    sizes = [random.Random(7).randint(16, 1024) for _ in range(4096)]
    errors: list[str] = []
    def worker(tid: int) -> None:
        word = table + 64 * tid
        try:
            for k in range(pairs):
                heap.alloc_into(word, sizes[(k + 97 * tid) % len(sizes)])
                heap.free_from(word)
        except Exception as e:  # noqa: BLE001 - reported below with the thread id
            errors.append(f"thread {tid} after its pairs: {type(e).__name__}: {e}")

    for _ in range(rounds):     # fresh threads each round, as a thread pool's come and go
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert not errors, "; ".join(errors[:4])
    st = heap.stats()
    assert st["live_blocks"] == 1, f"{st['live_blocks']} live blocks; only the word table should be"
    # about 5 MiB in runs here; 11-14 MiB without the settling
    assert st["bytes_used"] <= st["pages"] * layout.PAGE_SIZE // 2, (
        f"{st['bytes_used'] >> 20} MiB in runs for one live block per thread")
    heap.close()
