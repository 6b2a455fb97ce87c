"""Allocator throughput: pmstore vs PMDK libpmemobj vs glibc malloc and mimalloc, in one run.

One op = one allocation plus its free (a pair); `ops_per_s` is pairs per second, all
threads together. Workloads (ANCHORS.md "Allocator"), each thread on its own objects:
W1 alloc+free pairs of 16..1024 B; W2 allocate 100,000 objects of 16..1024 B, free them
in a random order, repeat; W3 like W2 with 10,000 objects of 1..64 KiB.

Systems, each timed by the same C driver (bench/alloc_driver.c, built here at run time
into a temp dir with gcc) except pmstore-python and pmstore-cffi:
  pmstore         pm_alloc_into / pm_free_from: each block published into a slot word
                  inside the heap (one redo commit each). Backends: flush (CLWB+SFENCE,
                  /dev/shm), msync (file under /tmp), none (no barriers: software cost).
  pmdk            pmemobj_alloc / pmemobj_free with the PMEMoid slots inside the pool's
                  root object. flush = /dev/shm with PMEM_IS_PMEM_FORCE=1, msync = file
                  under /tmp, none = PMEM_IS_PMEM_FORCE=1 PMEM_NO_FLUSH=1.
  glibc, mimalloc malloc/free and mi_malloc/mi_free: volatile ceilings.
  pmstore-python  heap.alloc_into / free_from, the Python API: C methods (allocator._fast)
                  that keep the GIL and raise on error, flush backend.
  pmstore-cffi    lib.pm_alloc_into / pm_free_from called bare through cffi, as the PMDK
                  anchor (ANCHORS.md, 2.53 us a pair) calls pmemobj_alloc, flush backend.
The msync backends cost ~100 us per barrier on a disk: their runs are short and W2/W3
use --slow-objects objects per thread (the row's `objects` says how many).
Heaps and pools are created in scratch dirs and removed afterwards.

    .venv/bin/python bench/alloc.py --quick --json
"""

from __future__ import annotations

import functools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from itertools import cycle, islice
from pathlib import Path

import common

from allocator import Heap, _native, layout
from recovery.check import check_heap, format_report

REPO = Path(__file__).resolve().parent.parent
DRIVER_SRC = Path(__file__).resolve().parent / "alloc_driver.c"
CSRC = REPO / "allocator" / "csrc"

WORKLOADS = {   # driver kind, objects per thread, sizes in bytes (inclusive)
    "W1": {"kind": "w1", "objects": 1, "min_size": 16, "max_size": 1024},
    "W2": {"kind": "w2", "objects": 100_000, "min_size": 16, "max_size": 1024},
    "W3": {"kind": "w2", "objects": 10_000, "min_size": 1024, "max_size": 65536},
}
SYSTEMS = ["pmstore", "pmstore-python", "pmstore-cffi", "pmdk", "glibc", "mimalloc"]
PY_SYSTEMS = ("pmstore-python", "pmstore-cffi")
C_SYSTEMS = {"pmstore": "SYS_PMSTORE", "pmdk": "SYS_PMDK", "glibc": "SYS_GLIBC", "mimalloc": "SYS_MIMALLOC"}
BACKENDS = ["flush", "msync", "none"]
PATH_KIND = {"flush": "dev-shm", "msync": "tmp-file", "none": "dev-shm", "volatile": "dram"}
SLOW_BACKENDS = {"msync"}
PM_BACKEND = {"msync": 1, "flush": 2, "none": 3}    # PM_BACKEND_* in csrc/pm_api.h
PMDK_ENV = {"flush": {"PMEM_IS_PMEM_FORCE": "1"}, "msync": {"PMEM_IS_PMEM_FORCE": "0"},
            "none": {"PMEM_IS_PMEM_FORCE": "1", "PMEM_NO_FLUSH": "1"}}
INSTALL_HINT = {"pmdk": "apt-get install -y libpmemobj-dev", "mimalloc": "apt-get install -y libmimalloc-dev"}
PERM_COUNT = 4                  # free orders per thread, as in the driver
LANES_PER_THREAD = 4            # a pair per thread, and as many spare (FORMAT.md 7.1 step 1)
SLOT_STRIDE = 8                 # W1: one slot per thread, threads a cache line apart
FAST_WARMUP_S = 0.1             # plus one whole W2/W3 cycle: faults pages in, builds runs
SLOW_WARMUP_S = 0.02
TABLE_COLUMNS = ["system", "backend", "workload", "threads", "objects", "ops_per_s", "us_per_op",
                 "persists_per_op", "msyncs_per_op", "vs_pmdk", "space_ratio", "median_of"]


# ---------------------------------------------------------------- building the drivers
def build_drivers(systems: list[str], build_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Compile one driver per C system (in parallel); returns (executables, skip reasons)."""
    gcc = shutil.which("gcc")
    wanted = [s for s in systems if s in C_SYSTEMS]
    if not wanted:
        return {}, {}
    if gcc is None:
        raise SystemExit("alloc.py: gcc not found; the C drivers are built at run time "
                         "(apt-get install -y gcc), or run only --systems pmstore-python")
    base = [gcc, "-O2", "-std=gnu11", "-DNDEBUG", "-pthread", str(DRIVER_SRC)]
    extra = {
        "pmstore": ["-I", str(CSRC), *sorted(str(p) for p in CSRC.glob("*.c"))],
        "pmdk": ["-rdynamic", "-lpmemobj"],     # -rdynamic: libpmem's msync calls reach the driver's counter
        "glibc": [],
        "mimalloc": ["-lmimalloc"],
    }
    procs = {}
    for s in wanted:
        exe = build_dir / f"alloc_driver_{s}"
        cmd = [*base[:-1], f"-D{C_SYSTEMS[s]}", base[-1], *extra[s], "-ldl", "-o", str(exe)]
        procs[s] = (exe, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    built, skipped = {}, {}
    for s, (exe, proc) in procs.items():
        _, err = proc.communicate()
        if proc.returncode == 0:
            built[s] = exe
            continue
        lines = err.strip().splitlines() or ["?"]
        first = next((ln for ln in lines if "error" in ln), lines[-1])
        if s in INSTALL_HINT and ("No such file" in err or "cannot find -l" in err):
            skipped[s] = f"not installed ({INSTALL_HINT[s]}): {first.strip()}"
        elif s == "pmstore":
            raise SystemExit(f"alloc.py: building the pmstore driver failed:\n{err}")
        else:
            skipped[s] = f"build failed: {first.strip()}"
    return built, skipped


# ---------------------------------------------------------------- sizing
def mean_size(wl: dict) -> float:
    return (wl["min_size"] + wl["max_size"]) / 2


def class_slack_bytes(wl: dict) -> int:
    """Two runs of every size class the workload's sizes fall in: partly filled runs."""
    table = _native.class_table()
    lo, hi = wl["min_size"], wl["max_size"]
    total, prev = 0, 0
    for size, pages, _ in table:
        if size >= lo and prev < hi:
            total += 2 * pages * layout.PAGE_SIZE
        prev = size
    return total


def slots_per_thread(objects: int) -> int:
    return max(objects, SLOT_STRIDE)


def pmstore_heap_size(wl: dict, objects: int, thread_count: int) -> int:
    """Bytes the heap needs so the driver never grows it (growth is a fatal error there):
    per thread, objects x mean size x 1.4 (class rounding <= 12.5%, run tails, bitmaps)
    plus two runs per class; then the slot table and 16 MiB."""
    per_thread = objects * mean_size(wl) * 1.4 + class_slack_bytes(wl)
    total = thread_count * per_thread + thread_count * slots_per_thread(objects) * 8 + (16 << 20)
    return -(-int(total) // layout.PAGE_SIZE) * layout.PAGE_SIZE


def pmdk_pool_size(wl: dict, objects: int, thread_count: int) -> int:
    per_thread = objects * mean_size(wl) * 2 + (128 << 20)   # PMDK keeps a run per class per arena
    return max(int(thread_count * per_thread + thread_count * slots_per_thread(objects) * 16) + (64 << 20),
               16 << 20)


# ---------------------------------------------------------------- running a driver
def case_params(args, wl_name: str, backend: str) -> dict:
    """Objects, duration and warm-up for one (workload, backend): slow backends run short."""
    wl = WORKLOADS[wl_name]
    slow = backend in SLOW_BACKENDS
    objects = wl["objects"] if wl["kind"] == "w1" or not slow else min(wl["objects"], args.slow_objects)
    return {"objects": objects, "duration_s": min(args.duration_s, args.slow_duration_s) if slow else args.duration_s,
            "warmup_s": SLOW_WARMUP_S if slow else min(FAST_WARMUP_S, args.duration_s),
            "warmup_cycles": 0 if slow else 1}


def run_driver(exe: Path, params: dict, extra: dict, env_extra: dict, args) -> list[dict]:
    """Run the driver once (all thread counts); one parsed JSON line per thread count."""
    wl = WORKLOADS[params["workload"]]
    kv = {"workload": wl["kind"], "threads": ",".join(map(str, args.threads)), "runs": args.run_count,
          "duration": params["duration_s"], "warmup": params["warmup_s"], "warmup_cycles": params["warmup_cycles"],
          "objects": params["objects"], "min_size": wl["min_size"], "max_size": wl["max_size"], "seed": args.seed,
          **extra}
    cmd = [str(exe), *(f"{k}={v}" for k, v in kv.items())]
    budget = len(args.threads) * (args.run_count * params["duration_s"] * 3 + 60) + 120
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, **env_extra},
                          timeout=budget)
    if proc.returncode != 0:
        raise SystemExit(f"alloc.py: driver failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def driver_rows(out: list[dict], system: str, wl_name: str, backend: str, fs: str, params: dict) -> list[dict]:
    rows = []
    for o in out:
        pairs = sum(o["allocs_plus_frees"]) / 2
        ops_per_s = common.median(o["ops_per_s"])
        row = {
            "system": system, "workload": wl_name, "threads": o["threads"], "backend": backend,
            "path_kind": PATH_KIND[backend], "fs": fs,
            "ops_per_s": round(ops_per_s, 1),
            "us_per_op": round(o["threads"] * 1e6 / ops_per_s, 4) if ops_per_s else None,
            "persists_per_op": None, "objects": o["objects"],
            "size_min": WORKLOADS[wl_name]["min_size"], "size_max": WORKLOADS[wl_name]["max_size"],
            "duration_s": params["duration_s"], "median_of": len(o["ops_per_s"]),
            "runs": [round(x, 1) for x in o["ops_per_s"]], "served_by": o["served_by"],
        }
        if system == "pmstore" and pairs:
            row["persists_per_op"] = round(sum(o["persists"]) / pairs, 3)
        if backend == "msync" and pairs:
            # one msync system call per PMDK persist/flush on a file pool; a pmstore barrier
            # makes one or more (pmem.c decides how it covers the barrier's pages)
            row["msyncs_per_op"] = round(sum(o["msyncs"]) / pairs, 3)
            if system == "pmdk":
                row["persists_per_op"] = row["msyncs_per_op"]
                row["persists_counted_as"] = "msync calls"
        for k in ("space_used_bytes", "space_requested_bytes", "space_block_bytes"):
            if k in o:
                row[k] = o[k]
        rows.append(row)
    return rows


def bench_pmstore_c(exe: Path, wl_name: str, backend: str, space: bool, args) -> list[dict]:
    """pmstore from the C driver: Python creates the heap and a slot table, the driver maps it."""
    params = {"workload": wl_name, **case_params(args, wl_name, backend)}
    wl, max_threads = WORKLOADS[wl_name], max(args.threads)
    with common.scratch_dir(PATH_KIND[backend]) as d:
        path = d / "alloc.heap"
        size = pmstore_heap_size(wl, params["objects"], max_threads)
        lane_count = max(layout.DEFAULT_LANE_COUNT, LANES_PER_THREAD * max_threads)
        with Heap.create(path, size=size, max_size=size, backend=backend, lane_count=lane_count) as heap:
            slot_off = heap.alloc(max_threads * slots_per_thread(params["objects"]) * 8)
            h = heap.file.header
            geometry = {"path": path, "backend": PM_BACKEND[backend], "file_size": h.file_size,
                        "max_size_heap": h.max_size, "redo_off": h.redo_off, "lane_count": h.lane_count,
                        "lane_size": h.lane_size, "meta_off": h.meta_off, "data_off": h.data_off,
                        "slot_off": slot_off, "space": int(space)}
        out = run_driver(exe, params, geometry, {}, args)
        check_after(path, slot_off, PATH_KIND[backend])
        return driver_rows(out, "pmstore", wl_name, backend, common.fs_type(d), params)


def check_after(path: Path, slot_off: int, path_kind: str) -> None:
    """The independent checker (recovery/check.py) on the heap after the bench: no findings,
    and the slot table is the only block left (every allocation was freed). On failure the
    file is kept (renamed out of the scratch dir) and its path printed."""
    rep = check_heap(path)
    if rep.ok and list(rep.blocks) == [slot_off]:
        return
    kept = Path(common.SCRATCH_ROOTS[path_kind]) / f"pmstore-bench-alloc-failed-{os.getpid()}.heap"
    path.rename(kept)
    raise SystemExit(f"alloc.py: the heap failed its check after the bench (kept at {kept}); "
                     f"expected only the slot table at {slot_off} allocated:\n{format_report(rep)}")


def bench_pmdk(exe: Path, wl_name: str, backend: str, args) -> list[dict]:
    params = {"workload": wl_name, **case_params(args, wl_name, backend)}
    wl = WORKLOADS[wl_name]
    with common.scratch_dir(PATH_KIND[backend]) as d:
        extra = {"path": d / "alloc.pool", "pool_size": pmdk_pool_size(wl, params["objects"], max(args.threads))}
        out = run_driver(exe, params, extra, PMDK_ENV[backend], args)
        return driver_rows(out, "pmdk", wl_name, backend, common.fs_type(d), params)


def bench_volatile(exe: Path, system: str, wl_name: str, args) -> list[dict]:
    params = {"workload": wl_name, **case_params(args, wl_name, "volatile")}
    out = run_driver(exe, params, {}, {}, args)
    return driver_rows(out, system, wl_name, "volatile", "-", params)


# ---------------------------------------------------------------- pmstore from Python
def _raw_calls(mapping):
    """pmstore-cffi: the bare cffi functions, as the PMDK anchor (2.53 us) calls
    pmemobj_alloc; the handle bound with functools.partial (C, no Python frame). They
    return negative error codes instead of raising: the loops below check every result."""
    from allocator._native import lib
    h = mapping.handle
    return functools.partial(lib.pm_alloc_into, h), functools.partial(lib.pm_free_from, h)


def _failed(what: str, rc) -> None:
    raise RuntimeError(f"alloc.py: {what} failed with code {rc}")


class PyWorker:
    """One thread's objects and position in its workload, driving the heap's calls."""

    def __init__(self, heap, wl: dict, objects: int, slot_off: int, thread_idx: int, seed: int, raw: bool):
        rnd = random.Random(seed * 1000003 + thread_idx)
        self.heap, self.objects = heap, objects
        self.alloc_into, self.free_from = _raw_calls(heap.mapping) if raw else (heap.alloc_into, heap.free_from)
        base = slot_off + thread_idx * slots_per_thread(objects) * 8
        if wl["kind"] == "w1":
            self.sizes = [rnd.randint(wl["min_size"], wl["max_size"]) for _ in range(4096)]
            self.work = self._w1_work(base)
            return
        self.dests = [base + 8 * i for i in range(objects)]
        self.sizes = [rnd.randint(wl["min_size"], wl["max_size"]) for _ in range(objects)]
        self.free_orders = []
        for _ in range(PERM_COUNT):
            order = self.dests[:]
            rnd.shuffle(order)
            self.free_orders.append(order)
        self.pos = self.cycle = 0
        self.work = self._w2_work

    def _w1_work(self, dest: int):
        alloc_into, free_from, sizes = self.alloc_into, self.free_from, cycle(self.sizes)

        def work(n: int) -> None:
            for size in islice(sizes, n):
                if alloc_into(dest, size) < 0:      # raw calls return errors (the API raises)
                    _failed("alloc_into", size)
                if free_from(dest):
                    _failed("free_from", dest)
        return work

    def _w2_work(self, n: int) -> None:
        """n pairs' worth of the cycle: 2n single allocations or frees."""
        alloc_into, free_from = self.alloc_into, self.free_from
        dests, sizes, count = self.dests, self.sizes, self.objects
        pos, cyc = self.pos, self.cycle
        order = self.free_orders[cyc % PERM_COUNT]
        for _ in range(2 * n):
            if pos < count:
                if alloc_into(dests[pos], sizes[pos]) < 0:
                    _failed("alloc_into", sizes[pos])
            elif free_from(order[pos - count]):
                _failed("free_from", order[pos - count])
            pos += 1
            if pos == 2 * count:
                pos, cyc = 0, cyc + 1
                order = self.free_orders[cyc % PERM_COUNT]
        self.pos, self.cycle = pos, cyc

    def cleanup(self) -> None:
        """Free what a run left allocated mid-cycle (untimed); the next run starts a cycle."""
        if getattr(self, "pos", 0) == 0:
            return
        if self.pos < self.objects:
            for dest in self.dests[:self.pos]:
                self.heap.free_from(dest)
        else:
            for dest in self.free_orders[self.cycle % PERM_COUNT][self.pos - self.objects:]:
                self.heap.free_from(dest)
        self.pos, self.cycle = 0, self.cycle + 1


def bench_pmstore_python(system: str, wl_name: str, args) -> list[dict]:
    """alloc_into / free_from from Python threads, flush backend on /dev/shm: through the
    heap's methods (pmstore-python) or the bare cffi functions (pmstore-cffi)."""
    backend, wl, max_threads = "flush", WORKLOADS[wl_name], max(args.py_threads)
    objects = wl["objects"]
    rows = []
    with common.scratch_dir(PATH_KIND[backend]) as d:
        size = pmstore_heap_size(wl, objects, max_threads)
        lane_count = max(layout.DEFAULT_LANE_COUNT, LANES_PER_THREAD * max_threads)
        path = d / "alloc-py.heap"
        with Heap.create(path, size=size, max_size=size, backend=backend, lane_count=lane_count) as heap:
            fs = common.fs_type(d)
            slot_off = heap.alloc(max_threads * slots_per_thread(objects) * 8)
            for thread_count in args.py_threads:
                common.note(f"alloc: {system} {wl_name} threads={thread_count}")
                workers = [PyWorker(heap, wl, objects, slot_off, t, args.seed, system == "pmstore-cffi")
                           for t in range(thread_count)]

                def make_worker(idx: int, workers=workers):
                    return workers[idx].work

                common.run_timed(make_worker, thread_count, min(FAST_WARMUP_S, args.duration_s))
                for w in workers:
                    w.cleanup()
                runs, persist_count = [], 0
                for _ in range(args.run_count):
                    before = heap.persist_count
                    runs.append(common.run_timed(make_worker, thread_count, args.duration_s))
                    persist_count += heap.persist_count - before
                    for w in workers:
                        w.cleanup()
                ops_per_s = common.median(r.ops_per_s for r in runs)
                pairs = sum(r.op_count for r in runs)
                rows.append({
                    "system": system, "workload": wl_name, "threads": thread_count, "backend": backend,
                    "path_kind": PATH_KIND[backend], "fs": fs, "ops_per_s": round(ops_per_s, 1),
                    "us_per_op": round(thread_count * 1e6 / ops_per_s, 4),
                    "persists_per_op": round(persist_count / pairs, 3), "objects": objects,
                    "size_min": wl["min_size"], "size_max": wl["max_size"], "duration_s": args.duration_s,
                    "median_of": len(runs), "runs": [round(r.ops_per_s, 1) for r in runs],
                    "served_by": ("allocator._pmstore_c (cffi), bare" if system == "pmstore-cffi" else
                                  "allocator._fast (Heap methods, GIL held)"),
                })
        check_after(path, slot_off, PATH_KIND[backend])
    return rows


# ---------------------------------------------------------------- derived keys
def add_ratios(results: list[dict]) -> None:
    """vs_pmdk on pmstore rows: ops_per_s / PMDK's for the same workload, threads and backend
    (flush vs PMDK on /dev/shm with PMEM_IS_PMEM_FORCE=1, msync vs PMDK on a /tmp file)."""
    pmdk = {(r["workload"], r["threads"], r["backend"]): r["ops_per_s"] for r in results if r["system"] == "pmdk"}
    for r in results:
        if r["system"] == "pmstore":
            ref = pmdk.get((r["workload"], r["threads"], r["backend"]))
            r["vs_pmdk"] = round(r["ops_per_s"] / ref, 3) if ref else None


def add_space(results: list[dict]) -> None:
    """Copy the W2 peak-space measurement onto every pmstore W2 row with the full object count."""
    src = next((r for r in results if "space_used_bytes" in r), None)
    if src is None:
        return
    used, requested = src.pop("space_used_bytes"), src.pop("space_requested_bytes")
    block = src.pop("space_block_bytes")
    for r in results:
        r.pop("space_used_bytes", None), r.pop("space_requested_bytes", None), r.pop("space_block_bytes", None)
        if r["system"].startswith("pmstore") and r["workload"] == "W2" and r["objects"] == src["objects"]:
            r.update(space_used_bytes=used, space_requested_bytes=requested, space_ratio=round(used / requested, 4),
                     space_block_ratio=round(block / requested, 4))


def environment(args, skipped: dict) -> dict:
    gcc = shutil.which("gcc")
    gcc_version = (subprocess.run([gcc, "-dumpfullversion"], check=False, capture_output=True, text=True)
                   .stdout.strip() if gcc else None)
    return common.environment(cpu=common.cpu_model(), flush_kind=_native.flush_kind(), gcc=gcc_version,
                              os=platform.platform(), duration_s=args.duration_s,
                              slow_duration_s=min(args.duration_s, args.slow_duration_s),
                              runs=args.run_count, quick=args.quick, seed=args.seed, skipped=skipped)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    cpus = os.cpu_count() or 1
    p.add_argument("--threads", type=common.int_list, default=list(range(1, cpus + 1)), metavar="N,..",
                   help=f"thread counts for the C drivers (default 1..{cpus}, os.cpu_count())")
    p.add_argument("--py-threads", type=common.int_list, default=None, metavar="N,..",
                   help="thread counts for pmstore-python and pmstore-cffi (default: --threads)")
    p.add_argument("--systems", type=common.str_list, default=SYSTEMS, metavar="S,..",
                   help=f"systems to run (default {','.join(SYSTEMS)})")
    p.add_argument("--backends", type=common.str_list, default=None, metavar="B,..",
                   help="persistent backends for pmstore and pmdk: flush (/dev/shm, CLWB), msync (file "
                        "under /tmp), none (/dev/shm, no flushes: the software cost); default "
                        "flush,msync,none (flush,msync with --quick)")
    p.add_argument("--workloads", type=common.str_list, default=list(WORKLOADS), metavar="W,..",
                   help="workloads to run (default W1,W2,W3)")
    p.add_argument("--slow-objects", type=int, default=256, metavar="N",
                   help="objects per thread for W2/W3 on the msync backends (default 256)")
    p.add_argument("--slow-duration-s", type=float, default=None, metavar="S",
                   help="seconds per timed run on the msync backends, at most --duration-s "
                        "(default 0.2, 0.1 with --quick)")
    p.add_argument("--seed", type=int, default=1, help="seed for sizes and free orders (default 1)")
    p.add_argument("--driver-dir", type=Path, default=None, metavar="DIR",
                   help="use the C drivers built earlier in DIR (alloc_driver_<system>, as --build-drivers "
                        "writes them) instead of compiling: for a machine without gcc or the libraries' headers")
    p.add_argument("--build-drivers", type=Path, default=None, metavar="DIR",
                   help="only compile the C drivers of --systems into DIR, then exit")
    args = common.parse_args(p, argv)
    args.py_threads = args.py_threads or args.threads
    args.backends = args.backends or (["flush", "msync"] if args.quick else BACKENDS)
    args.slow_duration_s = args.slow_duration_s or (0.1 if args.quick else 0.2)
    for name, values, allowed in (("system", args.systems, SYSTEMS), ("backend", args.backends, BACKENDS),
                                  ("workload", args.workloads, list(WORKLOADS))):
        common.check_choices(p, name, values, allowed)
    if args.slow_objects < 1 or args.slow_duration_s <= 0:
        p.error("--slow-objects and --slow-duration-s must be positive")

    if args.build_drivers is not None:
        args.build_drivers.mkdir(parents=True, exist_ok=True)
        built, skipped = build_drivers(args.systems, args.build_drivers)
        for system, reason in skipped.items():
            print(f"alloc.py: not built: {system}: {reason}", file=sys.stderr)
        print("\n".join(str(exe) for exe in built.values()))
        return 0
    with tempfile.TemporaryDirectory(prefix="pmstore-bench-build-") as build_dir:
        if args.driver_dir is not None:
            drivers = {s: args.driver_dir / f"alloc_driver_{s}" for s in args.systems if s in C_SYSTEMS}
            skipped = {s: f"no {exe} (--driver-dir)" for s, exe in drivers.items() if not exe.is_file()}
            drivers = {s: exe for s, exe in drivers.items() if s not in skipped}
        else:
            drivers, skipped = build_drivers(args.systems, Path(build_dir))
        for system in PY_SYSTEMS:
            if system in args.systems and "flush" not in args.backends:
                skipped[system] = "runs on the flush backend only; add flush to --backends"
        for system, reason in skipped.items():
            print(f"alloc.py: skipping {system}: {reason}", file=sys.stderr)
        results = []
        space_done = False
        for wl_name in args.workloads:   # systems side by side per workload: close in time
            for backend in args.backends:
                if "pmstore" in drivers:
                    common.note(f"alloc: pmstore {backend} {wl_name}")
                    full = wl_name == "W2" and backend not in SLOW_BACKENDS and not space_done
                    results += bench_pmstore_c(drivers["pmstore"], wl_name, backend, full, args)
                    space_done = space_done or full
                if "pmdk" in drivers:
                    common.note(f"alloc: pmdk {backend} {wl_name}")
                    results += bench_pmdk(drivers["pmdk"], wl_name, backend, args)
            for system in PY_SYSTEMS:
                if system in args.systems and "flush" in args.backends:
                    results += bench_pmstore_python(system, wl_name, args)
            for system in ("glibc", "mimalloc"):
                if system in drivers:
                    common.note(f"alloc: {system} {wl_name}")
                    results += bench_volatile(drivers[system], system, wl_name, args)
    add_ratios(results)
    add_space(results)
    common.emit("alloc", results, args.json, environment(args, skipped), columns=TABLE_COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
