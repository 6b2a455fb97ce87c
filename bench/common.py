"""Shared helpers for the bench scripts: arguments, timed loops, scratch dirs, output.

Every bench prints exactly one JSON object with --json ({"bench", "env", "results"}),
otherwise a table; progress notes go to stderr so stdout stays machine-readable.
Runs are bounded by time, not by count, because one op costs from ~1 us (CLWB on
/dev/shm) to ~100 us per msync (ext4 disk): a fixed count cannot suit both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Where each backend's heap lives: msync needs a real disk file, flush wants memory-backed pages.
SCRATCH_ROOTS = {"tmp-file": "/tmp", "dev-shm": "/dev/shm"}

QUICK_DURATION_S, FULL_DURATION_S = 0.25, 1.0
QUICK_RUN_COUNT, FULL_RUN_COUNT = 3, 5
_CHUNK_TARGET_S = 0.001   # read the clock about once a millisecond, not once an op
_CHUNK_MAX_COUNT = 4096


# ---------------------------------------------------------------- arguments
def int_list(text: str) -> list[int]:
    """argparse type for "1,2,4"."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, not {text!r}")
    return values


def str_list(text: str) -> list[str]:
    """argparse type for "msync,flush"."""
    return [x.strip() for x in text.split(",") if x.strip()]


def make_parser(description: str) -> argparse.ArgumentParser:
    """The base parser every bench extends: --json, --quick, --runs, --duration-s."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    p.add_argument("--quick", action="store_true",
                   help=f"short runs ({QUICK_RUN_COUNT} x {QUICK_DURATION_S} s per case) for CI and smoke tests")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help=f"timed runs per case; the median is reported (default {FULL_RUN_COUNT}, "
                        f"{QUICK_RUN_COUNT} with --quick)")
    p.add_argument("--duration-s", type=float, default=None, metavar="S",
                   help=f"seconds per timed run (default {FULL_DURATION_S}, {QUICK_DURATION_S} with --quick)")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse and fill the --quick-dependent defaults (run_count, duration_s)."""
    args = p.parse_args(argv)
    args.run_count = args.runs or (QUICK_RUN_COUNT if args.quick else FULL_RUN_COUNT)
    args.duration_s = args.duration_s or (QUICK_DURATION_S if args.quick else FULL_DURATION_S)
    if args.run_count < 1 or args.duration_s <= 0:
        p.error("--runs and --duration-s must be positive")
    return args


def check_choices(p: argparse.ArgumentParser, name: str, values, allowed) -> None:
    """Exit through p.error naming the first of values that is not in allowed."""
    for v in values:
        if v not in allowed:
            p.error(f"unknown {name} {v!r}; choose from {', '.join(map(str, allowed))}")


def note(msg: str) -> None:
    """A progress line on stderr (only for a person watching a terminal)."""
    if sys.stderr.isatty():
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing
@dataclasses.dataclass
class TimedRun:
    op_count: int       # ops completed by all threads together
    elapsed_s: float    # wall time from the first thread's start to the last thread's stop

    @property
    def ops_per_s(self) -> float:
        return self.op_count / self.elapsed_s if self.elapsed_s > 0 else 0.0


def median(values) -> float:
    return float(statistics.median(values))


def run_timed(make_worker: Callable[[int], Callable[[int], None]], thread_count: int,
              duration_s: float, max_count: int | None = None) -> TimedRun:
    """Run `thread_count` workers for about duration_s; count the ops they complete.

    make_worker(thread_idx) returns work(n), which does n ops in a tight loop (so the
    per-op cost is the bench's, not this runner's). Workers are built before the clock
    starts and released together; n grows until one chunk takes ~1 ms, so the clock
    is read rarely and the run overshoots by at most a chunk.
    max_count (optional): each thread also stops after that many ops (work never gets
    an n that would pass it), for workloads with a finite supply of keys or bytes.
    """
    workers = [make_worker(i) for i in range(thread_count)]
    gate = threading.Barrier(thread_count)

    def body(idx: int) -> tuple[float, float, int]:
        work, done_count, chunk_count = workers[idx], 0, 1
        gate.wait()
        start = now = time.perf_counter()
        deadline = start + duration_s
        while now < deadline and (max_count is None or done_count < max_count):
            n = chunk_count if max_count is None else min(chunk_count, max_count - done_count)
            work(n)
            done_count += n
            last, now = now, time.perf_counter()
            if now - last < _CHUNK_TARGET_S and chunk_count < _CHUNK_MAX_COUNT:
                chunk_count *= 2
        return start, now, done_count

    with ThreadPoolExecutor(max_workers=thread_count, thread_name_prefix="bench") as pool:
        futures = [pool.submit(body, i) for i in range(thread_count)]
        spans = [f.result() for f in futures]  # re-raises a worker's exception here
    return TimedRun(op_count=sum(s[2] for s in spans),
                    elapsed_s=max(s[1] for s in spans) - min(s[0] for s in spans))


# ---------------------------------------------------------------- scratch space
@contextlib.contextmanager
def scratch_dir(path_kind: str) -> Iterator[Path]:
    """A fresh directory under /tmp ("tmp-file") or /dev/shm ("dev-shm"), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pmstore-bench-", dir=SCRATCH_ROOTS[path_kind]) as d:
        yield Path(d)


def fs_type(path) -> str:
    """The file system type of the mount holding path ("ext4", "tmpfs", ...), from /proc/mounts."""
    path, best, kind = os.path.realpath(path), "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1]
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" where there is none)."""
    try:
        return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), "?")
    except OSError:
        return "?"


def environment(**extra) -> dict:
    """Facts a reader needs to compare figures across machines."""
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "kernel": platform.release(), **extra}


# ---------------------------------------------------------------- output
def emit(bench_name: str, results: list[dict], as_json: bool, env: dict | None = None,
         columns: list[str] | None = None) -> None:
    """Print the results: one JSON object, or a table of `columns` (default: every scalar key).

    In the table, a column whose value is the same in every row moves to the footer.
    """
    if as_json:
        json.dump({"bench": bench_name, "env": env or {}, "results": results}, sys.stdout)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    keys = columns or [k for k in dict.fromkeys(k for r in results for k in r)
                       if not any(isinstance(r.get(k), (list, dict)) for r in results)]
    same = {k: results[0].get(k) for k in keys if len(results) > 1 and len({str(r.get(k)) for r in results}) == 1}
    table = Table(title=f"bench: {bench_name}")
    shown = [k for k in keys if k not in same]
    for k in shown:
        numeric = any(isinstance(r.get(k), (int, float)) for r in results)
        table.add_column(k, justify="right" if numeric else "left", no_wrap=True)
    for r in results:
        table.add_row(*(_cell(r.get(k)) for k in shown))
    console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: don't squeeze to 80
    console.print(table)
    footer = {**same, **(env or {})}
    if footer:
        console.print(", ".join(f"{k}={v}" for k, v in footer.items()), soft_wrap=True)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
