"""Transaction throughput: `with heap.transaction()` replacing a published object.

Each transaction frees the block a thread's slot word points to, allocates a new one
into the slot, and (workload "tx-data") copies the object's bytes into it with
tx.write -- or (workload "tx-nodata") leaves them out. With data the commit takes two
barriers: the data is made durable before the commit point (FORMAT.md 7.6); without,
one. Per backend: CLWB+SFENCE ("flush") on /dev/shm, msync on a file under /tmp.
Threads replace objects in their own slots. Writes only into scratch heaps it creates
and removes.

    .venv/bin/python bench/tx.py --quick --json
"""

from __future__ import annotations

import sys

import common

from allocator import Heap, _native, layout

WORKLOADS = ("tx-data", "tx-nodata")
SIZES = (64, 4096)
PATH_KIND = {"msync": "tmp-file", "flush": "dev-shm", "none": "dev-shm"}
SLOT_COUNT = 64                 # objects per thread, replaced in turn
WARMUP_MAX_S = 0.1              # faults the pages in and builds the thread's runs
TABLE_COLUMNS = ["system", "backend", "workload", "size", "threads", "ops_per_s", "us_per_op",
                 "persists_per_op", "median_of"]


def make_worker_factory(heap: Heap, slot_off: int, workload: str, size: int):
    """make_worker(thread_idx) for common.run_timed: work(n) does n replacing transactions."""

    def make_worker(thread_idx: int):
        slots = [slot_off + 8 * (thread_idx * SLOT_COUNT + i) for i in range(SLOT_COUNT)]
        payload = bytes([thread_idx + 1]) * size
        load8, transaction = heap.mapping.load8, heap.transaction
        state = {"next": 0}

        def work(n: int) -> None:
            k = state["next"]
            for _ in range(n):
                slot = slots[k]
                k = (k + 1) % SLOT_COUNT
                with transaction() as tx:
                    old = load8(slot)
                    if old:
                        tx.free(old)
                    off = tx.alloc_into(slot, size)
                    if workload == "tx-data":
                        tx.write(off, payload)
            state["next"] = k
        return work

    return make_worker


def check_slots(heap: Heap, slot_off: int, workload: str, size: int, thread_count: int) -> None:
    """Every slot the bench filled points at a block holding its thread's bytes (tx-data):
    the bench did not time a no-op."""
    for t in range(thread_count):
        for i in range(SLOT_COUNT):
            off = heap.mapping.load8(slot_off + 8 * (t * SLOT_COUNT + i))
            if off and workload == "tx-data" and heap.read(off, size) != bytes([t + 1]) * size:
                raise AssertionError(f"slot {i} of thread {t} points at a block without the bytes written")


def bench_case(heap: Heap, slot_off: int, backend: str, fs: str, workload: str, size: int, thread_count: int,
               args) -> dict:
    make_worker = make_worker_factory(heap, slot_off, workload, size)
    common.run_timed(make_worker, thread_count, min(WARMUP_MAX_S, args.duration_s))
    persist_before_count = heap.persist_count
    runs = [common.run_timed(make_worker, thread_count, args.duration_s) for _ in range(args.run_count)]
    tx_count = sum(r.op_count for r in runs)
    check_slots(heap, slot_off, workload, size, thread_count)
    ops_per_s = common.median(r.ops_per_s for r in runs)
    return {
        "system": "pmstore", "workload": workload, "size": size, "threads": thread_count, "backend": backend,
        "path_kind": PATH_KIND[backend], "fs": fs, "ops_per_s": round(ops_per_s, 1),
        "us_per_op": round(thread_count * 1e6 / ops_per_s, 3),    # as one thread sees it
        "persists_per_op": round((heap.persist_count - persist_before_count) / tx_count, 3),
        "transactions": tx_count, "median_of": len(runs), "runs": [round(r.ops_per_s, 1) for r in runs],
    }


def bench_backend(backend: str, args) -> list[dict]:
    """Every case of one backend on one scratch heap (created and removed here)."""
    max_threads = max(args.threads)
    with common.scratch_dir(PATH_KIND[backend]) as d:
        lane_count = max(layout.DEFAULT_LANE_COUNT, 4 * max_threads)
        with Heap.create(d / "tx.heap", size=(16 + 2 * max_threads) << 20, backend=backend,
                         lane_count=lane_count) as heap:
            fs = common.fs_type(d)
            slot_off = heap.alloc(8 * SLOT_COUNT * max_threads)
            heap.write(slot_off, bytes(8 * SLOT_COUNT * max_threads))
            results = []
            for workload in WORKLOADS:
                for size in SIZES:
                    for thread_count in args.threads:
                        common.note(f"tx: {backend} {workload} size={size} threads={thread_count}")
                        results.append(bench_case(heap, slot_off, backend, fs, workload, size, thread_count, args))
            return results


def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=common.int_list, default=[1, 2], metavar="N,..",
                   help="thread counts to run (default 1,2)")
    p.add_argument("--backends", type=common.str_list, default=["flush", "msync"], metavar="B,..",
                   help="persist backends: flush (/dev/shm), msync (file under /tmp), none (/dev/shm, no "
                        "barriers: the software ceiling); default flush,msync")
    args = common.parse_args(p, argv)
    common.check_choices(p, "backend", args.backends, PATH_KIND)
    results = [r for b in args.backends for r in bench_backend(b, args)]
    env = common.environment(flush_kind=_native.flush_kind(), duration_s=args.duration_s, quick=args.quick)
    common.emit("tx", results, args.json, env, columns=TABLE_COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
