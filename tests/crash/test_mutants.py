"""The crash suite has teeth: every mutant C core (one barrier removed, one commit step
reordered, or freed memory reused too early: recovery/mutants.py) is caught by the quick
crash plan, and the job it names reruns alone to the same violations."""

from __future__ import annotations

import pytest

from recovery import mutants


@pytest.mark.skipif(not mutants.compiler_available(), reason="no C compiler to build mutants with")
def test_L1_L5_L7_every_mutant_is_caught_by_the_quick_crash_plan():
    results = mutants.run_all()
    assert [r.name for r in results] == list(mutants.MUTANTS) and len(results) >= 5
    for r in results:
        print(f"\n[mutant] {r.name}: caught={r.caught} violations={r.violations}/{r.crash_states} "
              f"-- {r.description}; first: {(r.first_violation or r.error or '')[:160]}; "
              f"rerun '{r.replay}': {r.replayed_violations} violations")
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    missed = [r.name for r in results if not r.caught]
    assert not missed, f"mutants not caught by the crash suite: {missed}"
    # the rerun a failure prints (pmstore crashtest --replay) reproduces it: workloads,
    # index shape and sampled subsets all come from the seed
    unreplayed = {r.name: r.replay for r in results if not r.replayed_violations}
    assert not unreplayed, f"a violating job rerun alone found nothing: {unreplayed}"
