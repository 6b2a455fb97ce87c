"""kill -9 soak: a multi-threaded writer process SIGKILLed at random moments, in both
durabilities (a process crash must lose nothing in `os` mode either; FORMAT.md 1, 7.9).

Each cycle starts tests/crash/soak_writer.py on the same heap (state accumulates), kills
it -- usually 0.05-0.4 s after its store is open, sometimes within its start-up,
import or recovery -- and then: the checker finds nothing in the crashed file
(at_rest=False); Store.open recovers it; every acknowledged operation is there (content
sha256) unless a later acknowledged one replaced or deleted it; each thread's one
in-flight op (begun, not acknowledged) shows all of its old state or all of its new
state (batches included); no key appears that was never written; after a clean close
the checker finds nothing at rest. The ack channel is a pipe: a line the writer wrote
before dying is still read by this process.

    PMSTORE_SOAK_CYCLES=500 PMSTORE_SOAK_SEED=1234 .venv/bin/pytest tests/crash/test_kill9_soak.py -s
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recovery.check import check_heap, format_report
from store import Store

WRITER = Path(__file__).with_name("soak_writer.py")
CYCLES = int(os.environ.get("PMSTORE_SOAK_CYCLES", "50"))
THREAD_COUNT, KEYS_PER_THREAD = 4, 40
EARLY_KILL_SHARE = 0.1          # cycles killed 20-150 ms after spawn: in start-up, open or recovery
MIN_RUN_S, MAX_RUN_S = 0.05, 0.4   # other cycles: killed this long (s) after the writer opened the store
READY_TIMEOUT_S = 30.0
SPAN_SIZE = 64 << 10            # values above this take whole pages (spans)


def _seed() -> int:
    env = os.environ.get("PMSTORE_SOAK_SEED")
    return int(env) if env else random.SystemRandom().getrandbits(32)


def _parse_op(fields: list[str]) -> list[tuple[str, str | None, int]]:
    """[(key, sha256 or None for a delete, size)] from a B line's items."""
    ops = []
    for item in fields:
        kind, key, *rest = item.split(",")
        ops.append((key, rest[1], int(rest[0])) if kind == "P" else (key, None, 0))
    return ops


class Cycle:
    """One writer process: spawn, kill at a random moment, collect its protocol lines."""

    def __init__(self, path: Path, durability: str, seed: int, err_path: Path):
        self.err_path = err_path
        with open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(path), durability, str(seed), str(THREAD_COUNT),
                 str(KEYS_PER_THREAD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self.lines: list[bytes] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line == b"R\n":
                self.ready.set()
        self.ready.set()                # EOF: the writer is gone (killed, or failed on its own)

    def kill_after(self, rng: random.Random) -> bool:
        """SIGKILL the writer at a random moment; True if it was killed early (maybe before R)."""
        early = rng.random() < EARLY_KILL_SHARE
        if early:
            time.sleep(rng.uniform(0.02, 0.15))
        else:
            assert self.ready.wait(READY_TIMEOUT_S), "the writer did not open the store in time"
            time.sleep(rng.uniform(MIN_RUN_S, MAX_RUN_S))
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join()
        self.proc.stdin.close()
        self.proc.stdout.close()
        assert self.proc.returncode == -signal.SIGKILL, (
            f"the writer exited on its own (rc {self.proc.returncode}):\n{self.err_path.read_text()[-3000:]}")
        return early


class Soak:
    """The model: key -> sha256 of its value, as verified after the last cycle."""

    def __init__(self):
        self.model: dict[str, str] = {}
        self.acked = self.inflight_old = self.inflight_new = self.inflight_either = 0
        self.keys_verified = self.large_puts = self.batches = self.early_kills = self.replays = 0

    def expected(self, lines: list[bytes]):
        """(model after the acknowledged ops, {tid: in-flight op}) from one writer's lines."""
        assert all(line.endswith(b"\n") for line in lines), "a torn protocol line (pipe writes are atomic)"
        model = dict(self.model)
        pending: dict[int, tuple[int, list]] = {}
        for line in lines:
            kind, *fields = line.decode().split()
            if kind == "B":
                tid, n = int(fields[0]), int(fields[1])
                assert tid not in pending, f"thread {tid} began op {n} before op {pending[tid][0]} returned"
                pending[tid] = (n, _parse_op(fields[2:]))
            elif kind == "A":
                tid, n = int(fields[0]), int(fields[1])
                began, ops = pending.pop(tid)
                assert began == n, f"thread {tid}: ack for op {n}, but op {began} was in flight"
                for key, sha, size in ops:
                    model.pop(key, None) if sha is None else model.__setitem__(key, sha)
                    self.large_puts += size > SPAN_SIZE
                self.batches += len(ops) > 1
                self.acked += 1
        return model, pending

    def verify(self, observed: dict[str, str], model: dict[str, str], pending) -> None:
        """Acknowledged state exact; each in-flight op all old or all new; nothing else."""
        inflight_keys: set[str] = set()
        for tid, (n, ops) in sorted(pending.items()):
            keys = [k for k, _, _ in ops]
            inflight_keys.update(keys)
            old = {k: model.get(k) for k in keys}
            new = dict(old)
            for key, sha, _ in ops:
                new[key] = sha
            got = {k: observed.get(k) for k in keys}
            assert got in (old, new), (f"thread {tid} op {n} was in flight: keys {keys} hold {got}, "
                                       f"neither the old state {old} nor the new {new} (not atomic)")
            if old == new:
                self.inflight_either += 1
            elif got == old:
                self.inflight_old += 1
            else:
                self.inflight_new += 1
        for key in sorted(set(observed) | set(model)):
            if key in inflight_keys:
                continue
            assert key in model or key not in observed, f"{key!r} is in the store but was never acknowledged"
            assert key in observed, f"acknowledged {key!r} is missing after recovery"
            assert observed[key] == model[key], f"{key!r} differs from its last acknowledged value"
        self.keys_verified += len(observed)
        self.model = dict(observed)


def _assert_checker_clean(path: Path, at_rest: bool, when: str) -> None:
    rep = check_heap(path, at_rest=at_rest)
    assert rep.ok, f"checker findings {when} (heap kept at {path}):\n{format_report(rep)}"


@pytest.mark.parametrize("durability", ["sync", "os"])
def test_I1_I4_kill9_soak_loses_no_acknowledged_op(tmp_path, durability):
    seed = _seed()
    print(f"\n[soak] {durability}: seed {seed} (PMSTORE_SOAK_SEED), {CYCLES} cycles (PMSTORE_SOAK_CYCLES)")
    rng = random.Random(seed)
    path = tmp_path / "soak.heap"
    Store.open(path, initial_size=2 << 20, max_size=512 << 20, durability=durability).close()
    soak, t0 = Soak(), time.perf_counter()
    for cycle in range(CYCLES):
        writer = Cycle(path, durability, rng.getrandbits(32), tmp_path / "writer.err")
        soak.early_kills += writer.kill_after(rng)
        where = f"after kill {cycle + 1} (seed {seed})"
        _assert_checker_clean(path, False, f"in the crashed file {where}")
        model, pending = soak.expected(writer.lines)
        with Store.open(path, create=False, durability=durability) as s:
            if b"R\n" in writer.lines:
                assert not s.report["was_clean"], f"the writer had the store open, yet it looks clean {where}"
            soak.replays += s.report["lanes_replayed"]
            observed = {k: hashlib.sha256(s.get(k)[0]).hexdigest() for k in s}
            assert len(s) == len(observed), f"count {len(s)} != listed keys {len(observed)} {where}"
        try:
            soak.verify(observed, model, pending)
        except AssertionError as e:
            raise AssertionError(f"{e} {where}") from None
        _assert_checker_clean(path, True, f"at rest {where}")
    wall = time.perf_counter() - t0
    inflight = soak.inflight_old + soak.inflight_new + soak.inflight_either
    print(f"[soak] {durability}: {CYCLES} cycles in {wall:.1f} s ({soak.early_kills} early kills), "
          f"{soak.acked} acked ops verified ({soak.batches} batches, {soak.large_puts} puts > 64 KiB), "
          f"{soak.keys_verified} key checks, {inflight} in-flight outcomes: {soak.inflight_old} old, "
          f"{soak.inflight_new} new, {soak.inflight_either} indistinguishable; {soak.replays} lanes replayed; "
          f"heap {path.stat().st_size >> 20} MiB, {len(soak.model)} keys; seed {seed}")
    assert soak.acked >= CYCLES, f"the writers acknowledged only {soak.acked} ops in {CYCLES} cycles"
    if soak.acked >= 500:
        assert soak.large_puts and soak.batches, "the workload never made a span-sized put or a batch"
