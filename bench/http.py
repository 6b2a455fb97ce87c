"""HTTP throughput and latency of the REST service, with wrk on loopback.

Servers (each one uvicorn worker, uvloop + httptools, no access log):
  pmstore        `pmstore serve` over a fresh heap (default: /dev/shm, durability sync).
  fastapi-noop   GET /healthz of that same app: a FastAPI route doing nothing (the ceiling
                 the issue's goal compares against).
  raw-asgi-noop  a bare ASGI app answering a 2-byte body: the server's own ceiling.
Workloads, at 8 and 64 connections: GET and PUT of 1 KiB and 64 KiB (random keys out of
a preloaded set; a PUT replaces an existing key), and a 90/10 GET/PUT mix of 1 KiB.
Reported: req/s, p50 and p99 (wrk --latency), non-2xx answers, and ratios against the
no-op routes of the same run. wrk and the server share this machine's CPUs: compare
ratios within one run, not figures across machines.

    .venv/bin/python bench/http.py --quick --json
"""

from __future__ import annotations

import os
import sys

# This file is named http.py: keep bench/ behind the standard library on sys.path, or
# `import http` (by httpx, uvicorn, email ...) would load this script instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import common
import httpx

CONNECTIONS = [8, 64]
VALUE_SIZES = [1024, 65536]
KEY_COUNT = 1000                # preloaded keys per value size
MIX_GET_FRACTION = 0.9
FULL_CASE_S, QUICK_CASE_S = 3, 1    # wrk counts whole seconds
WRK_THREAD_COUNT = 1            # one load thread: the other CPU serves
STARTUP_TIMEOUT_S = 30.0
TABLE_COLUMNS = ["server", "workload", "value_size", "connections", "req_per_s", "p50_ms", "p99_ms", "errors",
                 "vs_fastapi_noop", "vs_raw_noop", "p99_vs_noop"]

RAW_NOOP_APP = textwrap.dedent("""
    import sys, uvicorn
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(argv: list[str], port: int, ready_path: str, env: dict | None = None):
    """Run a server process until the block ends (SIGTERM, then wait)."""
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {argv[:3]} exited: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {argv[:3]} did not become ready in {STARTUP_TIMEOUT_S} s")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lua_script(workload: str, value_size: int) -> str:
    """A wrk script: random keys among KEY_COUNT under v<size>/."""
    keys = f'"/v1/objects/v{value_size}%2F" .. math.random(0, {KEY_COUNT - 1})'
    body = f'local body = string.rep("x", {value_size})\n'
    hdr = 'local hdr = {["Content-Type"] = "application/octet-stream"}\n'
    if workload == "get":
        return f"request = function()\n  return wrk.format(\"GET\", {keys})\nend\n"
    if workload == "put":
        return body + hdr + f"request = function()\n  return wrk.format(\"PUT\", {keys}, hdr, body)\nend\n"
    return body + hdr + (f"request = function()\n  if math.random() < {MIX_GET_FRACTION} then\n"
                         f"    return wrk.format(\"GET\", {keys})\n  end\n"
                         f"  return wrk.format(\"PUT\", {keys}, hdr, body)\nend\n")


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, connections: int, duration_s: int, script: str | None, scratch: Path) -> dict:
    argv = ["wrk", f"-t{WRK_THREAD_COUNT}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    if script:
        path = scratch / f"wrk-{abs(hash(script))}.lua"
        path.write_text(script)
        argv += ["-s", str(path)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {m.group(1): float(m.group(2)) * _UNITS_MS[m.group(3)]
           for m in re.finditer(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"req_per_s": rps, "p50_ms": pct.get("50"), "p99_ms": pct.get("99"), "errors": errors}


def median_run(url, connections, duration_s, script, scratch, run_count) -> dict:
    runs = [run_wrk(url, connections, duration_s, script, scratch) for _ in range(run_count)]
    runs.sort(key=lambda r: r["req_per_s"])
    return {**runs[len(runs) // 2], "median_of": run_count}


def preload(base_url: str, sizes: list[int]) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        for size in sizes:
            value = b"x" * size
            for i in range(KEY_COUNT):
                c.put(f"/v1/objects/v{size}%2F{i}", content=value).raise_for_status()


def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    p.add_argument("--connections", type=common.int_list, default=CONNECTIONS, metavar="N,..",
                   help="wrk connections (default 8,64)")
    p.add_argument("--sizes", type=common.int_list, default=VALUE_SIZES, metavar="N,..",
                   help="value sizes in bytes (default 1024,65536)")
    p.add_argument("--path", choices=list(common.SCRATCH_ROOTS), default="dev-shm",
                   help="where the heap lives (default dev-shm; tmp-file: the disk, msync per commit)")
    p.add_argument("--durability", choices=["sync", "os"], default="sync")
    args = p.parse_args(argv)
    # wrk runs whole seconds, and one run per case unless --runs says otherwise
    args.run_count = args.runs or 1
    args.duration_s = max(1, round(args.duration_s)) if args.duration_s else (QUICK_CASE_S if args.quick
                                                                               else FULL_CASE_S)
    if shutil.which("wrk") is None:
        print("bench/http.py: wrk is not installed; it is the load generator (a Python client tops out near "
              "1 k req/s). Install it with: apt-get install wrk", file=sys.stderr)
        return 2
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0].strip()
    pmstore_bin = str(Path(sys.executable).with_name("pmstore"))
    t_start = time.perf_counter()
    results: list[dict] = []
    with common.scratch_dir(args.path) as d, tempfile.TemporaryDirectory(prefix="pmstore-wrk-") as wd:
        scratch = Path(wd)
        port, raw_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        heap = d / "bench.heap"
        serve = [pmstore_bin, "serve", "--heap", str(heap), "--port", str(port), "--durability", args.durability,
                 "--initial-size", "256MiB", "--log-level", "warning"]
        with server(serve, port, "/readyz") as _:
            preload(base, args.sizes)
            svc = httpx.get(f"{base}/v1/stats").json()["service"]
            run_wrk(f"{base}/healthz", 8, 1, None, scratch)     # warm up
            for conns in args.connections:
                common.note(f"http: fastapi-noop c={conns}")
                results.append({"server": "fastapi-noop", "workload": "noop", "value_size": 0,
                                "connections": conns,
                                **median_run(f"{base}/healthz", conns, args.duration_s, None, scratch,
                                             args.run_count)})
                cases = [(w, s) for s in args.sizes for w in ("get", "put")] + \
                        [("mix90/10", s) for s in args.sizes if s == min(args.sizes)]
                for workload, size in cases:
                    common.note(f"http: pmstore {workload} {size} c={conns}")
                    results.append({"server": "pmstore", "workload": workload, "value_size": size,
                                    "connections": conns,
                                    **median_run(base, conns, args.duration_s, lua_script(workload, size),
                                                 scratch, args.run_count)})
        with server([sys.executable, "-c", RAW_NOOP_APP, str(raw_port)], raw_port, "/") as _:
            run_wrk(f"http://127.0.0.1:{raw_port}/", 8, 1, None, scratch)
            for conns in args.connections:
                common.note(f"http: raw-asgi-noop c={conns}")
                results.append({"server": "raw-asgi-noop", "workload": "noop", "value_size": 0,
                                "connections": conns,
                                **median_run(f"http://127.0.0.1:{raw_port}/", conns, args.duration_s, None,
                                             scratch, args.run_count)})
        fs = common.fs_type(d)
    for r in results:   # ratios against the ceilings at the same connection count
        noop = next(x for x in results if x["server"] == "fastapi-noop" and x["connections"] == r["connections"])
        raw = next(x for x in results if x["server"] == "raw-asgi-noop" and x["connections"] == r["connections"])
        r["vs_fastapi_noop"] = round(r["req_per_s"] / noop["req_per_s"], 2)
        r["vs_raw_noop"] = round(r["req_per_s"] / raw["req_per_s"], 2)
        r["p99_vs_noop"] = round(r["p99_ms"] / noop["p99_ms"], 2) if r["p99_ms"] and noop["p99_ms"] else None
    env = common.environment(wrk=wrk_version, wrk_threads=WRK_THREAD_COUNT, case_s=args.duration_s,
                             runs=args.run_count, path_kind=args.path, fs_type=fs, durability=args.durability,
                             backend=svc["backend"], group_commit=svc["group_commit"],
                             write_thread_count=svc["write_thread_count"], keys_per_size=KEY_COUNT,
                             elapsed_s=round(time.perf_counter() - t_start, 1))
    common.emit("http", results, args.json, env, columns=TABLE_COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
