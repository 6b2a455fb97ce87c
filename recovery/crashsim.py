"""Crash simulator: materialise every file a power failure could leave behind.

The pmem layer, in trace mode, logs every store (WRITE), every range handed to a
barrier (FLUSH) and every barrier (FENCE); workloads add MARKs. Replaying that log,
the simulator keeps two images: `volatile` (what the program sees) and `durable`
(what survives a power cut). At each persist point -- just before every FENCE, and at
the end -- a crash leaves `durable` plus ANY subset of the dirty units, at one of
three granularities (FORMAT.md section 1, "Failure model"):

  8B          aligned 8-byte words (persistent memory's power-fail atomic unit); a
              barrier writes back whole 64-byte lines, as CLWB does
  64B         cache lines (a line is written back whole or not at all)
  4KiB/512B   msync'd file pages: a barrier makes whole 4 KiB OS pages durable, and a
              dirty page may reach the disk in any subset of its 512-byte sectors

Every subset is tried when there are at most 8 dirty units; beyond that, a seeded
random sample (the seed is printed). A dirty unit whose bytes equal the durable ones
is not counted. Simplification: a unit rewritten several times between barriers is
modelled with its last value only.

Pure data: this module reads the trace format (csrc/trace.c) and never imports the
allocator; the caller supplies the open-and-check function.
"""

from __future__ import annotations

import dataclasses
import itertools
import mmap
import os
import pickle
import random
import struct
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

# Trace record kinds (csrc/pm_api.h PM_TRACE_*); checked against C by tests/unit/test_layout.py.
TRACE_WRITE = 1
TRACE_FLUSH = 2
TRACE_FENCE = 3
TRACE_MARK = 4
TRACE_GROW = 5  # the file grew (zero-filled); its size is durable (fdatasync) before any use
_REC = struct.Struct("<IIQ")


@dataclasses.dataclass(frozen=True)
class Model:
    """A failure model: the unit that may or may not survive, and what a barrier covers."""

    name: str
    unit_size: int      # bytes that survive or vanish together
    persist_size: int   # a barrier makes whole aligned blocks of this many bytes durable


# A barrier makes whole 64-byte lines durable on persistent memory (CLWB writes back the
# line, so a barrier names one range per line it needs), whole 4 KiB pages on a file.
MODELS = {m.name: m for m in (Model("8B", 8, 64), Model("64B", 64, 64), Model("4KiB/512B", 512, 4096))}


@dataclasses.dataclass
class Event:
    kind: int
    off: int
    size: int
    data: bytes = b""


def parse_trace(raw: bytes) -> list[Event]:
    """Decode the trace log written by csrc/trace.c."""
    events, pos = [], 0
    while pos < len(raw):
        kind, size, off = _REC.unpack_from(raw, pos)
        pos += _REC.size
        if kind == TRACE_WRITE:
            events.append(Event(kind, off, size, raw[pos:pos + size]))
            pos += (size + 7) & ~7
        elif kind in (TRACE_FLUSH, TRACE_FENCE, TRACE_MARK, TRACE_GROW):
            events.append(Event(kind, off, size))
        else:
            raise ValueError(f"trace record of unknown kind {kind} at byte {pos - _REC.size}")
    return events


@dataclasses.dataclass
class CrashPoint:
    """One place a crash may strike: before fence number `fence_idx` (or at the end)."""

    fence_idx: int          # barriers completed before this point
    marks: list[int]        # MARK ids logged before this point, in order
    dirty_units: list[int]  # unit indices whose volatile bytes differ from the durable ones


@dataclasses.dataclass
class Violation:
    model: str
    fence_idx: int
    marks: list[int]
    units: list[int]
    message: str

    def __str__(self) -> str:
        return (f"[{self.model}] crash before barrier {self.fence_idx} (after marks {self.marks[-3:]}), "
                f"surviving dirty units {self.units[:8]}{'...' if len(self.units) > 8 else ''}: {self.message}")


@dataclasses.dataclass
class Result:
    states: int = 0
    points: int = 0
    sampled_points: int = 0
    violations: list[Violation] = dataclasses.field(default_factory=list)
    seed: int = 0


class Replay:
    """Walks a trace under one model, yielding crash points with the images behind them."""

    def __init__(self, base_image: bytes, events: list[Event], model: Model):
        self.model = model
        self.events = events
        self.volatile = bytearray(base_image)
        self.durable = bytearray(base_image)
        self._dirty: set[int] = set()

    def _units(self, off: int, size: int, gran: int) -> range:
        u = self.model.unit_size
        start = (off // gran) * gran
        end = -(-(off + size) // gran) * gran
        return range(start // u, min(end, len(self.volatile)) // u)

    def points(self) -> Iterator[CrashPoint]:
        """Yield a crash point before every FENCE and at the end of the trace."""
        u = self.model.unit_size
        flushing: set[int] = set()
        marks: list[int] = []
        fences = 0
        for ev in self.events:
            if ev.kind == TRACE_WRITE:
                end = ev.off + ev.size
                if end > len(self.volatile):
                    raise ValueError(f"trace writes past the end of the file ({end} > {len(self.volatile)})")
                self.volatile[ev.off:end] = ev.data
                self._dirty.update(self._units(ev.off, ev.size, u))
            elif ev.kind == TRACE_FLUSH:
                flushing.update(self._units(ev.off, ev.size, self.model.persist_size))
            elif ev.kind == TRACE_GROW and ev.off > len(self.volatile):
                grow = ev.off - len(self.volatile)
                self.volatile.extend(bytes(grow))
                self.durable.extend(bytes(grow))
            elif ev.kind == TRACE_MARK:
                marks.append(ev.off)
            elif ev.kind == TRACE_FENCE:
                yield CrashPoint(fences, list(marks), self._real_dirty())
                for x in flushing & self._dirty:
                    self.durable[x * u:(x + 1) * u] = self.volatile[x * u:(x + 1) * u]
                self._dirty -= flushing
                flushing.clear()
                fences += 1
        yield CrashPoint(fences, list(marks), self._real_dirty())

    def _real_dirty(self) -> list[int]:
        u = self.model.unit_size
        out = [x for x in self._dirty if self.volatile[x * u:(x + 1) * u] != self.durable[x * u:(x + 1) * u]]
        self._dirty = set(out)  # units rewritten with their durable bytes are clean again
        return sorted(out)

    def image(self, units) -> bytearray:
        """durable + the given dirty units taken from volatile."""
        img = bytearray(self.durable)
        u = self.model.unit_size
        for x in units:
            img[x * u:(x + 1) * u] = self.volatile[x * u:(x + 1) * u]
        return img


def subsets(units: list[int], max_subsets: int, rng: random.Random) -> tuple[Iterator[list[int]], bool]:
    """All subsets when there are at most log2(max_subsets) units, else a sample
    (always including none and all). Returns (subsets, sampled).

    Beyond GROUPS units (a large value being written), the sample flips one coin per
    group of adjacent units rather than per unit: any partial subset of a large range
    already fails its CHECK (L5), and this keeps a state's cost independent of the value size."""
    n = len(units)
    if (1 << n) <= max_subsets:
        return (list(c) for r in range(n + 1) for c in itertools.combinations(units, r)), False
    groups = [units[i * n // GROUPS:(i + 1) * n // GROUPS] for i in range(GROUPS)] if n > GROUPS \
        else [[x] for x in units]
    group_runs = [_runs(g) for g in groups]

    def sample():
        yield Units([], [])
        yield Units(units, [r for runs in group_runs for r in runs])
        g = len(groups)
        for _ in range(max_subsets - 2):
            bits = f"{rng.getrandbits(g):0{g}b}"   # one fair coin per group
            pick = [i for i, b in enumerate(bits) if b == "1"]
            yield Units([x for i in pick for x in groups[i]], [r for i in pick for r in group_runs[i]])
    return sample(), True


class Units(list):
    """A subset of dirty units, with its runs of adjacent units precomputed."""

    def __init__(self, units, runs):
        super().__init__(units)
        self.runs = runs


def _runs(units: list[int]) -> list[tuple[int, int]]:
    """[start, end) unit ranges covering the sorted units."""
    out = []
    for x in units:
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


GROUPS = 512


CheckFn = Callable[[Path, CrashPoint], None]


class _ImageFile:
    """The crash image on disk, patched in place through a shared mapping: the durable
    image once per crash point, then only the chosen units (and back) per state. Valid
    only while the checks never write the file: they open it with the "private"
    (copy-on-write) backend."""

    def __init__(self, path: Path, replay: Replay):
        self.replay = replay
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.map = None

    def durable(self) -> None:
        size = len(self.replay.durable)
        if self.map is None or len(self.map) != size:
            if self.map is not None:
                self.map.close()
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)
        self.map[:] = self.replay.durable

    def _put(self, src: bytearray, units: list[int]) -> None:
        u, m, view = self.replay.model.unit_size, self.map, memoryview(src)
        for a, b in getattr(units, "runs", None) or _runs(units):   # one copy per run of adjacent units
            m[a * u:b * u] = view[a * u:b * u]

    def apply(self, units: list[int]) -> None:
        self._put(self.replay.volatile, units)

    def revert(self, units: list[int]) -> None:
        self._put(self.replay.durable, units)

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


def explore(base_image: bytes, trace: bytes | list[Event], check: CheckFn, *, workdir: str | os.PathLike,
            models=tuple(MODELS), max_subsets: int = 256, seed: int | None = None,
            max_states: int | None = None, stop_on_violation: bool = False,
            private: bool = False, workers: int = 1) -> Result:
    """Run `check(image_path, point)` on every crash image of the trace.

    `check` opens the image through normal recovery and raises AssertionError on a
    violation (any other exception counts as a violation too). Returns the count of
    crash states explored and every violation found.

    private=True promises that `check` never writes the image (it opens it with the
    "private" backend), so images are patched by difference instead of rewritten whole.
    workers > 1 forks that many processes, each taking every workers-th crash point
    (its own image file and RNG stream: seed + worker index).
    """
    events = parse_trace(trace) if isinstance(trace, (bytes, bytearray)) else trace
    seed = random.randrange(1 << 32) if seed is None else seed
    if workers > 1 and max_states is None and not stop_on_violation:
        return _explore_forked(base_image, events, check, Path(workdir), models, max_subsets, seed, private, workers)
    return _explore(base_image, events, check, Path(workdir), models, max_subsets, seed, max_states,
                    stop_on_violation, private, 0, 1)


def _explore(base_image, events, check, workdir: Path, models, max_subsets, seed, max_states,
             stop_on_violation, private, worker: int, workers: int) -> Result:
    rng = random.Random(seed + worker)
    res = Result(seed=seed)
    path = workdir / f"crash{worker}.img"
    for name in models:
        replay = Replay(base_image, events, MODELS[name])
        img = _ImageFile(path, replay) if private else None
        try:
            for k, point in enumerate(replay.points()):
                if k % workers != worker:
                    continue
                res.points += 1
                chosen, sampled = subsets(point.dirty_units, max_subsets, rng)
                res.sampled_points += sampled
                if img:
                    img.durable()
                for units in chosen:
                    if img:
                        img.apply(units)
                    else:
                        path.write_bytes(replay.image(units))
                    res.states += 1
                    try:
                        check(path, point)
                    except Exception as e:  # noqa: BLE001 - every failure of the check is a finding
                        res.violations.append(Violation(name, point.fence_idx, point.marks, units,
                                                        f"{type(e).__name__}: {e}"))
                        if stop_on_violation:
                            return res
                    if img:
                        img.revert(units)
                    if max_states is not None and res.states >= max_states:
                        return res
        finally:
            if img:
                img.close()
    return res


def _explore_forked(base_image, events, check, workdir: Path, models, max_subsets, seed, private,
                    workers: int) -> Result:
    """Fork `workers` explorers; each sends its Result back through a pipe."""
    procs = []
    for w in range(workers):
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: explore its share, report, and leave without running any parent cleanup
            code = 0
            try:
                os.close(r)
                res = _explore(base_image, events, check, workdir, models, max_subsets, seed, None,
                               False, private, w, workers)
                with os.fdopen(wfd, "wb") as out:
                    pickle.dump(res, out)
            except BaseException:  # noqa: BLE001 - report anything, then exit
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        procs.append((pid, r))
    total = Result(seed=seed)
    for pid, r in procs:
        with os.fdopen(r, "rb") as f:
            raw = f.read()
        _, status = os.waitpid(pid, 0)
        if not raw or os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"crash explorer worker {pid} failed (exit {os.waitstatus_to_exitcode(status)})")
        res = pickle.loads(raw)
        total.states += res.states
        total.points += res.points
        total.sampled_points += res.sampled_points
        total.violations += res.violations
    return total
