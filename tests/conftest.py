"""Shared fixtures: crash-state totals printed at the end of the run, and the
independent checker run over every heap a test leaves in its tmp_path (STYLE.md 8)."""

from __future__ import annotations

import fcntl
import os

import pytest
from heaputil import create_heap

from recovery.check import check_heap, format_report


class CrashTotals:
    def __init__(self):
        self.rows: list[tuple[str, int, int, int, int]] = []

    def add(self, name: str, res) -> None:
        self.rows.append((name, res.states, res.points, len(res.violations), res.seed))
        print(f"\n[crash] {name}: {res.states} crash states at {res.points} persist points, "
              f"{len(res.violations)} violations (seed {res.seed})")

    def run(self, name: str, job, workdir, workers: int, min_states: int):
        """Explore job's crash states, count them here, and fail on a violation (with the
        command that reruns the job alone) or on fewer states than the workload must reach."""
        res = job.run(workdir, workers)
        self.add(name, res)
        assert res.states > min_states, f"{name}: only {res.states} crash states"
        assert not res.violations, job.failure(res, workers)
        return res


_TOTALS = CrashTotals()


@pytest.fixture
def heap(tmp_path):
    """A small heap (1 MiB, growing to 16 MiB, no flushes), closed after the test."""
    h = create_heap(tmp_path / "h.heap")
    yield h
    if not h.closed:
        h.close()


@pytest.fixture
def crash_totals():
    return _TOTALS


def pytest_terminal_summary(terminalreporter):
    if not _TOTALS.rows:
        return
    states = sum(r[1] for r in _TOTALS.rows)
    bad = sum(r[3] for r in _TOTALS.rows)
    terminalreporter.write_sep("-", "crash simulator")
    for name, st, pts, v, seed in _TOTALS.rows:
        terminalreporter.write_line(f"{name:40s} {st:8d} states {pts:6d} points {v} violations seed {seed}")
    terminalreporter.write_line(f"total: {states} crash states explored, {bad} violations")


def _is_heap(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"PMSTHEAP" and os.fstat(f.fileno()).st_size >= 8192
    except OSError:
        return False


def _locked(path) -> bool:
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@pytest.fixture(autouse=True)
def _check_heaps_at_teardown(request):
    """Every heap file a test leaves behind must pass the independent checker, as a crash
    may leave it (at_rest=False). Tests that corrupt heaps on purpose opt out with
    @pytest.mark.corrupts_heap. On findings the file is kept and its path printed."""
    if "tmp_path" not in request.fixturenames or request.node.get_closest_marker("corrupts_heap"):
        yield
        return
    tmp = request.getfixturevalue("tmp_path")
    yield
    for path in sorted(tmp.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or not _is_heap(path) or _locked(path):
            continue
        rep = check_heap(path, at_rest=False)
        if not rep.ok:
            pytest.fail(f"heap left by the test fails the checker (kept at {path}):\n{format_report(rep)}")
