"""A crash test's failure reruns alone (recovery/crashtest.py Job, `pmstore crashtest
--replay`): the workload, the index's tower heights, the lanes its threads take and the
sampled dirty subsets all come from the job's seed, and the failure message prints the
command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from recovery import crashsim, crashtest
from recovery.check import check_heap
from service.cli import app
from store import Store


def _heights(path, seed: int | None) -> list[tuple[bytes, int, int]]:
    with Store.open(path, backend="none") as s:
        if seed is not None:
            s._index.seed_heights(seed)
        for i in range(300):
            s.put(f"k/{i:03d}", b"v" * (i % 7))
    return [(r.key, r.height, r.off) for r in check_heap(path, records=True).store.records]


def test_seed_heights_makes_the_index_shape_repeatable(tmp_path):
    one = _heights(tmp_path / "a.heap", 7)
    assert _heights(tmp_path / "b.heap", 7) == one
    assert [h for _k, h, _o in _heights(tmp_path / "c.heap", 8)] != [h for _k, h, _o in one]
    assert max(h for _k, h, _o in one) > 1, "300 keys and no tower above level 0"


def _recorded(path, seed: int, threads: int) -> tuple:
    _base, trace, models = crashtest.record_workload(path, seed, 10, threads=threads)
    events = crashsim.parse_trace(trace)
    fences = sum(e.kind == crashsim.TRACE_FENCE for e in events)
    Store.open(path, create=False, backend="none").close()      # recover the abandoned heap
    records = [(r.key, r.height, r.off, r.value_block) for r in check_heap(path, records=True).store.records]
    return records, len(events), fences, models


@pytest.mark.parametrize("threads", [1, 3])
def test_a_store_workload_records_the_same_trace_from_the_same_seed(tmp_path, threads):
    first = _recorded(tmp_path / "a.heap", 101, threads)
    assert _recorded(tmp_path / "b.heap", 101, threads) == first
    assert first[2] > 10, "the workload must reach persist points"


def test_the_group_workload_records_the_same_trace_from_the_same_seed(tmp_path):
    """Group commit's writers race by nature; the workload stages them (one queued at a
    time, acknowledgements marked at the next commit's first barrier), so the trace --
    writes, barriers and marks, in order -- is the same on every run."""
    def shape(name):
        _base, trace, _keys, _start, setters, groups = crashtest.record_group(tmp_path / name, 33, 8)
        return [(e.kind, e.off, e.size) for e in crashsim.parse_trace(trace)], setters, groups
    first = shape("a.heap")
    assert shape("b.heap") == first
    assert first[2], "no commit applied two queued ops"


def test_a_job_spec_round_trips_through_its_failure_message():
    job = crashtest.Job("store", 37, 20, 48, threads=3, journal_size=crashtest.JOURNAL_STORE)
    assert job.spec() == "store seed=37 ops=20 subsets=48 threads=3 journal_size=16384"
    v = crashsim.Violation("ordered", 12, [3, 4], [(64, 8)], "objects match neither state")
    text = job.failure(crashsim.Result(violations=[v]), workers=2)
    assert str(v) in text and text.endswith("--workers 2")
    spec = text.split("--replay '")[1].split("'")[0]
    assert crashtest.Job.parse(spec) == job
    assert crashtest.Job.parse("redo seed=9 ops=12 subsets=128 lanes=1") == crashtest.Job("redo", 9, 12, 128, lanes=1)


@pytest.mark.parametrize("spec, why", [
    ("tree seed=1 ops=2 subsets=3", "job kind 'tree'"),
    ("store seed=1 ops=2", "lacks subsets"),
    ("store seed=1 ops=2 subsets=x", "expected name=integer"),
    ("store seed=1 ops=2 subsets=3 depth=4", "expected name=integer"),
])
def test_a_bad_job_spec_is_refused_with_what_is_wrong(spec, why):
    with pytest.raises(ValueError, match=why):
        crashtest.Job.parse(spec)
    r = CliRunner().invoke(app, ["crashtest", "--replay", spec])
    assert r.exit_code == 2 and "--replay" in r.output and why in r.output


def test_pmstore_crashtest_replay_reruns_one_job_to_the_same_states():
    args = ["crashtest", "--replay", "store seed=101 ops=6 subsets=4 threads=3", "--workers", "1", "--json"]
    runs = []
    for _ in range(2):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        runs.append(json.loads(r.output.strip().splitlines()[-1]))
    a, b = runs
    assert a["plan"] == "replay" and a["workloads"] == 1 and a["mutants"] == 0
    assert a["crash_states"] > 100 and a["violations"] == 0 and a["replay"] == []
    assert (a["crash_states"], a["persist_points"]) == (b["crash_states"], b["persist_points"])


@pytest.mark.parametrize("spec", ["store seed=32 ops=20 subsets=48", "sched seed=3 ops=12 subsets=8"])
def test_a_job_reaches_the_same_crash_states_again_and_in_a_fresh_process(tmp_path, spec):
    """Each run starts new threads, and this process has run other tests' threads; a fresh
    one has not. The lanes each thread takes (pm_thread_set_idx) come from the job alone:
    unpinned, two runs of the first spec in one process reach different state counts."""
    job = crashtest.Job.parse(spec)
    here = [job.run(tmp_path, workers=1) for _ in range(2)]
    r = subprocess.run([sys.executable, "-m", "recovery.crashtest", "replay", spec, "1"], capture_output=True,
                       text=True, check=True, timeout=300)
    there = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x.states, x.points) for x in here] == [(there["crash_states"], there["persist_points"])] * 2
    assert there["violations"] == len(here[0].violations) == 0
