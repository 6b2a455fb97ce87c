"""Mutants: builds of the C core with one barrier removed, one commit step reordered, or
freed memory reused before the commits that wrote into it are gone (nolimbo).

The crash suite has teeth only if it fails on a broken protocol. Each mutant is built
(allocator/_build.py, PMSTORE_MUTANT=<name>) into a scratch copy of the packages and
runs the quick crash plan (recovery/crashtest.py) in its own interpreter; it is caught
when the plan reports a violation (or the run dies). The plan stops at the first workload
that finds one: its counts are those of the workloads run until then.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# name -> what the mutant breaks (allocator/csrc/redo.c, alloc.c, journal.c, store/csrc/index.c;
# PMSTORE_MUTANT_<NAME>)
MUTANTS = {
    "noinval": "a lane's invalidation is never made durable by later commit points (L4)",
    "noapplyfence": "a commit's applied words never join a later barrier (FORMAT.md 7.1 steps 2 and 4)",
    "nocheck": "recovery replays a lane whose CHECK ranges fail their CRC (L5)",
    "nodata": "the published data is left out of the commit-point barrier (7.1 step 4)",
    "applyfirst": "the words are applied before the commit point (7.1 steps reordered)",
    "earlyclear": "a settled lane's seal is cleared before the barrier that makes its words durable (L4)",
    "nolimbo": "freed memory is reused while a sealed commit can still replay a word into it (L7)",
    "noreplay": "open skips the journal's records: barriers' bytes never written back are lost (J1, J3)",
    "jnlnosync": "a journal record is appended but not persisted before the barrier returns (7.11)",
    "datalinks": "a new record's links ride as CHECKed data, not SET entries: a later commit on another "
                 "thread changes them while the first is DEFERRED (L8)",
    "clearedgone": "a seal is cleared once its dependencies' seals are cleared, before that clearing is durable "
                   "(L6)",
    "txcheck": "a transaction's data is CHECKed in its commit point instead of made durable before it: a "
               "published object changed at once on another thread fails the CHECK (7.6, L8)",
    "norangegone": "a plain persisted write (Heap.write) is made durable while a commit that set a word it "
                   "overwrites is still sealed: replayed, the commit puts the older word back (L9)",
    "lineskip": "a barrier skips a one-line range whose 4 KiB page (not line) an earlier range covered: the "
                "line-once write-back drops lines it must write back (pmem.c written_back)",
}
PACKAGES = ("allocator", "store", "recovery")


@dataclasses.dataclass
class MutantResult:
    name: str
    description: str
    caught: bool = False
    crash_states: int = 0
    violations: int = 0
    first_violation: str | None = None
    error: str | None = None        # the build or the run failed
    seconds: float = 0.0
    replay: str | None = None       # the first violating job's spec (crashtest.Job)
    replayed_violations: int = 0    # violations when that job reran alone: it reproduces


def _source_root() -> Path:
    import allocator
    return Path(allocator.__file__).resolve().parent.parent


def build(name: str, dest: Path) -> None:
    """Copy the packages to dest and compile the C core there with the mutant's knob."""
    src = _source_root()
    for pkg in PACKAGES:
        shutil.copytree(src / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"))
    code = ("import runpy; runpy.run_path('allocator/_build.py')['ffibuilder']"
            ".compile(tmpdir='.', verbose=False)")
    env = {**os.environ, "PMSTORE_MUTANT": name, "PMSTORE_DEBUG": "0"}
    r = subprocess.run([sys.executable, "-c", code], cwd=dest, env=env, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"building mutant {name} failed: {(r.stderr or r.stdout)[-600:]}")


def run_one(name: str, workdir: Path, plan: str = "quick") -> MutantResult:
    res = MutantResult(name, MUTANTS[name])
    dest = workdir / name
    dest.mkdir(parents=True)
    try:
        build(name, dest)
    except (RuntimeError, OSError) as e:
        res.error = str(e)
        return res
    out, err = _crash_run(dest, [plan, "--first"])
    if out is None:     # a mutant that kills the suite outright is caught too, but say so
        res.caught, res.error = True, err
        return res
    res.crash_states, res.violations = out["crash_states"], out["violations"]
    res.first_violation, res.seconds = out["first_violation"], out["seconds"]
    res.caught = res.violations > 0
    if out["replay"]:   # the job the failure names, rerun alone: the same violations come back
        res.replay = out["replay"][0]
        again, err = _crash_run(dest, ["replay", res.replay, str(out["workers"])])
        if again is None:
            res.error = err
        else:
            res.replayed_violations = again["violations"]
    return res


def _crash_run(dest: Path, args: list[str]) -> tuple[dict | None, str | None]:
    """`python -m recovery.crashtest ARGS` on the build in dest: (its JSON totals, None), or
    (None, why) when it did not finish."""
    env = {**os.environ, "PYTHONPATH": str(dest)}
    r = subprocess.run([sys.executable, "-m", "recovery.crashtest", *args], cwd=dest, env=env, check=False,
                       capture_output=True, text=True, timeout=900)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = None
    if out is None or r.returncode:
        return None, f"the crash run exited {r.returncode}: {(r.stderr or r.stdout)[-400:]}"
    return out, None


def compiler_available() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None or shutil.which("gcc") is not None


def run_all(names=None, *, jobs: int = 2, plan: str = "quick",
            progress: Callable[[MutantResult], None] | None = None) -> list[MutantResult]:
    """Build and run every mutant (jobs at a time); results in MUTANTS order."""
    names = list(names or MUTANTS)
    with tempfile.TemporaryDirectory(prefix="pmstore-mutants-") as d, ThreadPoolExecutor(jobs) as ex:
        futures = [ex.submit(run_one, n, Path(d), plan) for n in names]
        out = []
        for f in futures:
            r = f.result()
            if progress:
                progress(r)
            out.append(r)
    return out
