"""Recovery time: Store.open after a clean close and after kill -9, against heap size and object count; checker throughput.

One heap per size (--sizes-gib: 1, 4, 16; 1, 4 with --quick), created with
initial_size = max_size = that size, so the file is that big from the start and never
grows. HeapFile.create fallocates the whole file; the bench then punches holes over the
untouched data area (nothing was written there, so it reads as the same zeros), so the
file is sparse: on /dev/shm (--path-kind dev-shm, the default) it holds only the pages
the objects touch, under /tmp (tmp-file) only their disk blocks. Each heap is filled
untimed (durability os, batches of 1,000) with 100 B objects up to each count of
--objects (10k, 100k, 1M; 10k, 100k with --quick), and measured at each count:

  open-clean  Store.open after a clean close (the default durability, sync), then close
  open-crash  a writer process (4 threads, durability sync) puts into 64 keys of its own;
              once each thread has 250 puts acknowledged it is SIGKILLed; then Store.open
              (redo replay of the lanes it left sealed, allocator scan, index walk)
  check       recovery.check.check_heap over the cleanly closed file

open rows: the median of --runs opens (page cache warm), with the open's breakdown from
Store.report (replay_ms, scan_ms, index_ms; other_ms = the rest: header, lock, mapping)
and `goal_ms` = 50 ms/GiB x heap + 1 us x live objects. check rows: `check_MBps` = file
bytes / s (goal 500 MB/s), `check_used_MBps` = allocated bytes / s, `objects_per_s`.

    .venv/bin/python bench/recovery.py --quick --json
    .venv/bin/python bench/recovery.py --plot recovery.png
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import common


def _import_project():
    """(Store, check_heap) from the project's packages, not this directory: bench/ is first on
    sys.path when a script runs, and holds store.py and recovery.py, which shadow them."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    shadows = {n: sys.modules.pop(n) for n in ("store", "recovery") if n in sys.modules}
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from recovery.check import check_heap
        from store.store import Store
    finally:
        sys.path[:] = saved
        for n, m in shadows.items():
            sys.modules.setdefault(n, m)
    return Store, check_heap


Store, check_heap = _import_project()
# The crash writer runs in the directory holding the `store` package this process imported.
PROJECT_ROOT = Path(sys.modules[Store.__module__].__file__).resolve().parents[1]

GIB = 1 << 30
PAGE_SIZE = 64 << 10            # an allocator page (FORMAT.md 4.4)
VALUE_SIZE = 100
FILL_BATCH_COUNT = 1000
OPEN_GOAL_MS_PER_GIB, OPEN_GOAL_US_PER_OBJECT = 50.0, 1.0
CHECK_GOAL_MBPS = 500.0
CRASH_THREAD_COUNT, CRASH_ACKS_PER_THREAD = 4, 250
CRASH_READY_TIMEOUT_S = 120.0
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
TABLE_COLUMNS = ["workload", "heap_gib", "objects", "open_ms", "goal_ms", "goal_met", "replay_ms", "scan_ms",
                 "index_ms", "lanes_replayed", "check_ms", "check_MBps", "check_used_MBps", "objects_per_s",
                 "resident_MiB"]

# The crashing writer: a fresh interpreter in PROJECT_ROOT (so `store` is the package, not this directory's).
CRASH_WRITER = f"""
import os, sys, threading
from store import Store
s = Store.open(sys.argv[1], create=False, durability="sync")
def work(t):
    for i in range(1 << 62):
        s.put(f"crash/{{t}}/{{i % 16}}", b"c" * {VALUE_SIZE})
        if i == {CRASH_ACKS_PER_THREAD}:
            os.write(1, b"W\\n")
for t in range({CRASH_THREAD_COUNT}):
    threading.Thread(target=work, args=(t,), daemon=True).start()
sys.stdin.buffer.read()
os._exit(0)
"""


def punch_data_holes(path: Path, page_size: int) -> None:
    """Deallocate the data area past the last allocated page (never written: it reads as
    zeros either way), so the file is sparse. Allocated blocks come from the checker."""
    rep = check_heap(path)
    data_off = max(off + size for off, size in rep.blocks.items())
    data_off = -(-data_off // page_size) * page_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, data_off, size - data_off) != 0:
            err = ctypes.get_errno()
            common.note(f"recovery.py: cannot punch holes in {path} ({os.strerror(err)}); the file stays allocated")
    finally:
        os.close(fd)


def resident_mib(path: Path) -> float:
    return os.stat(path).st_blocks * 512 / (1 << 20)


def fill(path: Path, start: int, stop: int) -> None:
    value = b"v" * VALUE_SIZE
    with Store.open(path, create=False, durability="os") as s:
        for lo in range(start, stop, FILL_BATCH_COUNT):
            with s.batch() as b:
                for i in range(lo, min(stop, lo + FILL_BATCH_COUNT)):
                    b.put(f"o/{i:08d}", value)


def crash(path: Path) -> None:
    """Run the writer on the store and SIGKILL it in the middle of its puts."""
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(path)], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + CRASH_READY_TIMEOUT_S
        ready = 0
        while ready < CRASH_THREAD_COUNT and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            ready += line == b"W\n"
        if ready < CRASH_THREAD_COUNT:
            proc.kill()
            raise SystemExit(f"recovery.py: the crash writer did not get going:\n{proc.stderr.read().decode()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    if proc.returncode != -signal.SIGKILL:
        raise SystemExit(f"recovery.py: the crash writer exited with {proc.returncode}, not SIGKILL")


def goal_ms(heap_gib: float, objects: int) -> float:
    return OPEN_GOAL_MS_PER_GIB * heap_gib + OPEN_GOAL_US_PER_OBJECT * objects / 1e3


def timed_open(path: Path) -> tuple[float, dict, int, str]:
    t0 = time.perf_counter()
    s = Store.open(path, create=False)
    ms = (time.perf_counter() - t0) * 1e3
    try:
        return ms, dict(s.report), len(s), s.heap.mapping.backend
    finally:
        s.close()


def open_row(kind: str, path: Path, heap_gib: float, objects: int, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        if kind == "open-crash":
            crash(path)
        samples.append(timed_open(path))
    samples.sort(key=lambda x: x[0])
    ms, rep, live, backend = samples[len(samples) // 2]
    if kind == "open-crash" and rep["was_clean"]:
        raise SystemExit(f"recovery.py: {path} looks clean after a kill -9 of its writer")
    goal = goal_ms(heap_gib, live)
    parts = {k: round(rep.get(k, 0.0), 3) for k in ("replay_ms", "scan_ms", "index_ms")}
    return {"system": "pmstore", "workload": kind, "threads": 1, "backend": backend, "heap_gib": heap_gib,
            "objects": objects, "objects_live": live, "open_ms": round(ms, 3), "goal_ms": round(goal, 3),
            "goal_met": ms <= goal, **parts, "other_ms": round(ms - sum(parts.values()), 3),
            "lanes_replayed": rep.get("lanes_replayed", 0), "was_clean": rep["was_clean"],
            "ops_per_s": round(1e3 / ms, 1), "runs": [round(x[0], 3) for x in samples], "median_of": runs,
            "resident_MiB": round(resident_mib(path), 1)}


def check_row(path: Path, heap_gib: float, objects: int, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        rep = check_heap(path)
        samples.append((time.perf_counter() - t0, rep))
    samples.sort(key=lambda x: x[0])
    dt, rep = samples[len(samples) // 2]
    file_bytes = os.path.getsize(path)
    used_bytes = sum(rep.blocks.values())
    mbps = file_bytes / dt / 1e6
    return {"system": "pmstore", "workload": "check", "threads": 1, "heap_gib": heap_gib, "objects": objects,
            "check_ms": round(dt * 1e3, 3), "check_MBps": round(mbps, 1),
            "check_used_MBps": round(used_bytes / dt / 1e6, 1), "objects_per_s": round(objects / dt),
            "goal_MBps": CHECK_GOAL_MBPS, "goal_met": mbps >= CHECK_GOAL_MBPS, "findings": len(rep.findings),
            "blocks": len(rep.blocks), "ops_per_s": round(1 / dt, 2), "runs": [round(x[0] * 1e3, 3) for x in samples],
            "median_of": runs, "resident_MiB": round(resident_mib(path), 1)}


def bench_size(heap_gib: float, counts: list[int], args) -> list[dict]:
    rows = []
    size = int(heap_gib * GIB)
    with common.scratch_dir(args.path_kind) as d:
        path = d / "recovery.heap"
        Store.open(path, initial_size=size, max_size=size, durability="os").close()
        punch_data_holes(path, PAGE_SIZE)
        have = 0
        for n in sorted(counts):
            common.note(f"recovery.py: {heap_gib} GiB heap, filling to {n} objects")
            fill(path, have, n)
            have = n
            row = check_row(path, heap_gib, n, args.run_count)
            if row["findings"]:
                raise SystemExit(f"recovery.py: the checker finds {row['findings']} problems in {path}")
            for kind in ("open-clean", "open-crash"):
                common.note(f"recovery.py: {heap_gib} GiB, {n} objects: {kind}")
                rows.append(open_row(kind, path, heap_gib, n, args.run_count))
            rows.append(row)
    return rows


def plot(results: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opens = [r for r in results if r["workload"].startswith("open")]
    sizes = sorted({r["heap_gib"] for r in opens})
    counts = sorted({r["objects"] for r in opens})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # colour: the heap size (left) or the object count (right); solid clean, dashed crash, dotted goal
    for i, g in enumerate(sizes):
        c = colors[i % len(colors)]
        for kind, style in (("open-clean", "-"), ("open-crash", "--")):
            pts = sorted((r["objects"], r["open_ms"]) for r in opens if r["workload"] == kind and r["heap_gib"] == g)
            ax1.plot(*zip(*pts), style, color=c, marker="o", label=f"{kind}, {g:g} GiB")
        ax1.plot(counts, [goal_ms(g, n) for n in counts], ":", color=c, linewidth=1, label=f"goal, {g:g} GiB")
    for i, n in enumerate(counts):
        c = colors[i % len(colors)]
        for kind, style in (("open-clean", "-"), ("open-crash", "--")):
            pts = sorted((r["heap_gib"], r["open_ms"]) for r in opens if r["workload"] == kind and r["objects"] == n)
            ax2.plot(*zip(*pts), style, color=c, marker="o", label=f"{kind}, {n:,} objects")
        ax2.plot(sizes, [goal_ms(g, n) for g in sizes], ":", color=c, linewidth=1, label=f"goal, {n:,} objects")
    ax1.set(xscale="log", yscale="log", xlabel="live objects (100 B)", ylabel="Store.open (ms)",
            title="open time vs objects")
    ax2.set(xscale="log", yscale="log", xlabel="heap size (GiB, sparse)", ylabel="Store.open (ms)",
            title="open time vs heap size")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    p.add_argument("--sizes-gib", type=common.int_list, default=None, metavar="G,..",
                   help="heap sizes in GiB (default 1,4,16; 1,4 with --quick)")
    p.add_argument("--objects", type=common.int_list, default=None, metavar="N,..",
                   help="object counts (default 10000,100000,1000000; 10000,100000 with --quick)")
    p.add_argument("--path-kind", choices=sorted(common.SCRATCH_ROOTS), default="dev-shm",
                   help="where the heaps live (default dev-shm: sparse, only touched pages use RAM)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE",
                   help="also write a PNG: open time vs objects and vs heap size (needs matplotlib)")
    args = common.parse_args(p, argv)
    sizes = args.sizes_gib or ([1, 4] if args.quick else [1, 4, 16])
    counts = args.objects or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    results = [r for g in sizes for r in bench_size(g, counts, args)]
    scratch = common.SCRATCH_ROOTS[args.path_kind]
    backends = sorted({r["backend"] for r in results if "backend" in r})
    env = common.environment(path_kind=args.path_kind, backend=",".join(backends), fs=common.fs_type(scratch), value_size=VALUE_SIZE,
                             runs=args.run_count, quick=args.quick, page_cache="warm")
    common.emit("recovery", results, args.json, env, columns=TABLE_COLUMNS)
    if args.plot:
        plot(results, args.plot)
        print(f"recovery.py: wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
