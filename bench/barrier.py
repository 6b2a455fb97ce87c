"""Persist barrier floor: what one barrier (k lines written back, one SFENCE) costs on this CPU.

No allocator and no log: bench/barrier_driver.c (built here at run time with gcc into a
temp dir) stores 8 bytes into each of k cache lines of a MAP_SHARED file on /dev/shm,
writes them back, and fences, in a loop per thread (each thread its own 4 MiB). A pmstore
barrier on the flush backend is this with k = 3 (a commit's lane line, and the two words
its previous commit applied), so these rows bound from below what an alloc+free pair
(2 barriers) can cost here, and show whether the CPU overlaps the write-backs of one
barrier (cost flat in k) or runs them one after another (cost growing with k).

Modes (`system`): clwb, clflushopt, nt (MOVNTI stores, no write-back instruction),
store (stores and SFENCE only). Placement (`workload` suffix): hot (the same lines every
barrier) or spread (new lines each barrier, 4160 bytes apart).

    .venv/bin/python bench/barrier.py --quick --json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import common

DRIVER_SRC = Path(__file__).resolve().parent / "barrier_driver.c"
MODES = ["clwb", "clflushopt", "nt", "store"]
PLACEMENTS = ["hot", "spread"]
TABLE_COLUMNS = ["system", "workload", "threads", "lines", "ns_per_barrier", "ops_per_s", "median_of"]


def build_driver(out_dir: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("barrier.py: gcc not found (apt-get install -y gcc), or pass --driver "
                         "a barrier_driver built elsewhere")
    exe = out_dir / "barrier_driver"
    proc = subprocess.run([gcc, "-O2", "-std=gnu11", "-pthread", str(DRIVER_SRC), "-o", str(exe)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"barrier.py: building the driver failed:\n{proc.stderr}")
    return exe


def rows_from(out: list[dict], fs: str) -> tuple[list[dict], list[str]]:
    rows, skipped = [], []
    for o in out:
        if "skipped" in o:
            skipped.append(o["skipped"])
            continue
        ops_per_s = common.median(o["barriers_per_s"])
        rows.append({
            "system": o["mode"], "workload": f"{o['lines']}-line-{o['placement']}", "threads": o["threads"],
            "lines": o["lines"], "placement": o["placement"], "backend": "flush", "path_kind": "dev-shm", "fs": fs,
            "ops_per_s": round(ops_per_s, 1),
            "ns_per_barrier": round(o["threads"] * 1e9 / ops_per_s, 1) if ops_per_s else None,
            "median_of": len(o["barriers_per_s"]), "runs": [round(x, 1) for x in o["barriers_per_s"]],
        })
    return rows, skipped


def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    cpus = os.cpu_count() or 1
    p.add_argument("--threads", type=common.int_list, default=sorted({1, cpus}), metavar="N,..",
                   help=f"thread counts (default 1,{cpus}: one, and os.cpu_count())")
    p.add_argument("--lines", type=common.int_list, default=[1, 2, 3, 4], metavar="K,..",
                   help="cache lines per barrier, 1..16 (default 1,2,3,4)")
    p.add_argument("--modes", type=common.str_list, default=MODES, metavar="M,..",
                   help=f"write-back modes (default {','.join(MODES)})")
    p.add_argument("--placements", type=common.str_list, default=PLACEMENTS, metavar="P,..",
                   help="hot (same lines every barrier), spread (new lines); default both")
    p.add_argument("--driver", type=Path, default=None, metavar="EXE",
                   help="a barrier_driver built earlier (gcc -O2 -pthread bench/barrier_driver.c), for a "
                        "machine without gcc")
    args = common.parse_args(p, argv)
    for name, values, allowed in (("mode", args.modes, MODES), ("placement", args.placements, PLACEMENTS)):
        common.check_choices(p, name, values, allowed)
    if any(not 1 <= k <= 16 for k in args.lines) or any(t < 1 for t in args.threads):
        p.error("--lines must be 1..16 and --threads positive")

    with tempfile.TemporaryDirectory(prefix="pmstore-bench-build-") as build_dir, \
            common.scratch_dir("dev-shm") as d:
        exe = args.driver or build_driver(Path(build_dir))
        kv = {"path": d / "barrier.bench", "threads": ",".join(map(str, args.threads)),
              "lines": ",".join(map(str, args.lines)), "modes": ",".join(args.modes),
              "placements": ",".join(args.placements), "runs": args.run_count, "duration": args.duration_s}
        common.note(f"barrier: {len(args.threads) * len(args.modes) * len(args.placements) * len(args.lines)} cases")
        proc = subprocess.run([str(exe), *(f"{k}={v}" for k, v in kv.items())], check=False,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"barrier.py: the driver failed (exit {proc.returncode}):\n{proc.stderr}")
        rows, skipped = rows_from([json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")],
                                  common.fs_type(d))
    for mode in skipped:
        print(f"barrier.py: skipping {mode}: this CPU lacks it", file=sys.stderr)
    env = common.environment(cpu=common.cpu_model(), duration_s=args.duration_s, runs=args.run_count,
                             quick=args.quick, skipped={m: "not supported by this CPU" for m in skipped})
    common.emit("barrier", rows, args.json, env, columns=TABLE_COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
