"""Shared fixtures: crash-state totals printed at the end of the run."""

from __future__ import annotations

import pytest


class CrashTotals:
    def __init__(self):
        self.rows: list[tuple[str, int, int, int, int]] = []

    def add(self, name: str, res) -> None:
        self.rows.append((name, res.states, res.points, len(res.violations), res.seed))
        print(f"\n[crash] {name}: {res.states} crash states at {res.points} persist points, "
              f"{len(res.violations)} violations (seed {res.seed})")


_TOTALS = CrashTotals()


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
