"""Redo commit throughput: atomic durable commits of 1, 4 and 16 word updates.

Measures HeapFile's redo lanes (FORMAT.md 7.1, one persist barrier per commit; its
applied words ride the next commit's barrier) per backend: msync on a disk file under /tmp, CLWB+SFENCE ("flush") on
/dev/shm. Two paths: "packed" calls Mapping.redo_commit with entries packed before
the clock starts (the C commit plus the binding's per-call cost); "python-api" calls
HeapFile.commit with (op, off, value) tuples (adds packing in Python). Two layouts of
the words: "spread" gives each word its own cache line, "line" packs eight words to a
line (a table of offsets, a record's links), which a barrier writes back once per line.
Writes only into scratch heaps it creates and removes.

    .venv/bin/python bench/redo.py --quick --json
"""

from __future__ import annotations

import itertools
import sys

import common

from allocator import HeapFile, _native, layout

ENTRY_COUNTS = (1, 4, 16)
PATH_KIND = {"msync": "tmp-file", "flush": "dev-shm", "none": "dev-shm"}
# A commit's words lie on up to 4 OS pages, one page apart, so msync cannot merge
# them into one call (as with scattered allocator metadata); within a page each word
# has its own cache line, so CLWB writes back one line per entry.
SPREAD_PAGE_COUNT = 4
SPREAD_PAGE_STRIDE_SIZE = 2 * layout.OS_PAGE_SIZE
LINE_SIZE = 64
THREAD_REGION_SIZE = layout.PAGE_SIZE  # each thread commits into its own words
WARMUP_MAX_S = 0.1                     # faults the pages in and settles the lane choice
TABLE_COLUMNS = ["system", "backend", "fs", "path", "layout", "entries_per_commit", "threads", "ops_per_s", "us_per_op",
                 "persists_per_op", "median_of"]


def word_offs(data_off: int, thread_idx: int, entry_count: int, word_layout: str = "spread") -> list[int]:
    """The distinct 8-byte words one thread's commits of entry_count entries touch."""
    base_off = data_off + thread_idx * THREAD_REGION_SIZE
    if word_layout == "line":
        return [base_off + 8 * i for i in range(entry_count)]
    return [base_off + (i % SPREAD_PAGE_COUNT) * SPREAD_PAGE_STRIDE_SIZE + (i // SPREAD_PAGE_COUNT) * LINE_SIZE
            for i in range(entry_count)]


def commit_sets(offs: list[int], thread_idx: int) -> list[list[tuple[int, int, int]]]:
    """Two alternating entry lists (distinct values) so every commit really changes the words."""
    return [[(layout.REDO_OP_SET, off, (thread_idx << 40) | (flip << 32) | i) for i, off in enumerate(offs)]
            for flip in (0, 1)]


def make_worker_factory(hf: HeapFile, entry_count: int, path: str, word_layout: str):
    """make_worker(thread_idx) for common.run_timed: work(n) does n commits."""

    def make_worker(thread_idx: int):
        sets = commit_sets(word_offs(hf.header.data_off, thread_idx, entry_count, word_layout), thread_idx)
        if path == "packed":
            commit = hf.mapping.redo_commit
            next_packed = itertools.cycle(
                [b"".join(layout.pack_redo_entry(*e) for e in s) for s in sets]).__next__

            def work(n: int) -> None:
                for _ in range(n):
                    commit(next_packed(), entry_count)
        else:
            commit = hf.commit
            next_entries = itertools.cycle(sets).__next__

            def work(n: int) -> None:
                for _ in range(n):
                    commit(next_entries())
        return work

    return make_worker


def check_words(hf: HeapFile, entry_count: int, thread_count: int, word_layout: str) -> None:
    """Each word holds one of the values committed to it: the bench did not time a no-op."""
    for t in range(thread_count):
        offs = word_offs(hf.header.data_off, t, entry_count, word_layout)
        sets = commit_sets(offs, t)
        for i, off in enumerate(offs):
            got = hf.mapping.load8(off)
            if got not in (sets[0][i][2], sets[1][i][2]):
                raise AssertionError(f"word at {off} holds {got:#x} after the bench, not a committed value")


def bench_case(hf: HeapFile, backend: str, fs: str, entry_count: int, thread_count: int, path: str,
               word_layout: str, args) -> dict:
    """Warm up, then args.run_count timed runs; the median throughput and barriers per commit."""
    make_worker = make_worker_factory(hf, entry_count, path, word_layout)
    common.run_timed(make_worker, thread_count, min(WARMUP_MAX_S, args.duration_s))
    persist_before_count = hf.mapping.persist_count
    runs = [common.run_timed(make_worker, thread_count, args.duration_s) for _ in range(args.run_count)]
    persist_count = hf.mapping.persist_count - persist_before_count
    commit_count = sum(r.op_count for r in runs)
    check_words(hf, entry_count, thread_count, word_layout)
    ops_per_s = common.median(r.ops_per_s for r in runs)
    return {
        "system": "pmstore",
        "workload": (f"redo-{entry_count}" + ("-line" if word_layout == "line" else "")
                     + ("-python-api" if path == "python-api" else "")),
        "path": path,
        "layout": word_layout,
        "entries_per_commit": entry_count,
        "threads": thread_count,
        "backend": backend,
        "path_kind": PATH_KIND[backend],
        "fs": fs,
        "ops_per_s": round(ops_per_s, 1),
        "us_per_op": round(thread_count * 1e6 / ops_per_s, 3),   # as one thread sees it
        "persists_per_op": round(persist_count / commit_count, 3),
        "commits": commit_count,
        "median_of": len(runs),
        "runs": [round(r.ops_per_s, 1) for r in runs],
    }


def bench_backend(backend: str, thread_counts: list[int], paths: list[str], layouts: list[str],
                  args) -> list[dict]:
    """All cases of one backend on one scratch heap (created and removed here)."""
    max_threads = max(thread_counts)
    with common.scratch_dir(PATH_KIND[backend]) as d:
        lane_count = max(layout.DEFAULT_LANE_COUNT, 2 * max_threads)
        meta_off = layout.meta_off_for(lane_count, layout.DEFAULT_LANE_SIZE)
        size = layout.data_off_for(meta_off, 0) + max_threads * THREAD_REGION_SIZE
        with HeapFile.create(d / "redo.heap", size=size, lane_count=lane_count, backend=backend) as hf:
            fs = common.fs_type(d)
            results = []
            for path in paths:
                for word_layout in layouts:
                    for entry_count in ENTRY_COUNTS:
                        if word_layout == "line" and entry_count == 1:
                            continue    # one word: the same commit as spread
                        for thread_count in thread_counts:
                            common.note(f"redo: {backend} {path} {word_layout} entries={entry_count} "
                                        f"threads={thread_count}")
                            results.append(bench_case(hf, backend, fs, entry_count, thread_count, path,
                                                      word_layout, args))
            return results


def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=common.int_list, default=[1, 2], metavar="N,..",
                   help="thread counts to run (default 1,2)")
    p.add_argument("--backends", type=common.str_list, default=["msync", "flush"], metavar="B,..",
                   help="persist backends: msync (file under /tmp), flush (/dev/shm), none (/dev/shm, "
                        "no barriers: the software ceiling); default msync,flush")
    p.add_argument("--paths", type=common.str_list, default=["packed", "python-api"], metavar="P,..",
                   help="commit paths: packed (Mapping.redo_commit), python-api (HeapFile.commit)")
    p.add_argument("--layouts", type=common.str_list, default=["spread", "line"], metavar="L,..",
                   help="where a commit's words lie: spread (a cache line each), line (eight to a line); "
                        "default spread,line")
    args = common.parse_args(p, argv)
    common.check_choices(p, "backend", args.backends, PATH_KIND)
    common.check_choices(p, "path", args.paths, ("packed", "python-api"))
    common.check_choices(p, "layout", args.layouts, ("spread", "line"))

    results = [r for b in args.backends for r in bench_backend(b, args.threads, args.paths, args.layouts, args)]
    env = common.environment(flush_kind=_native.flush_kind(), duration_s=args.duration_s, quick=args.quick)
    common.emit("redo", results, args.json, env, columns=TABLE_COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
