"""Store batches (store/batch.py, pm_index_apply): all or nothing, preconditions first."""

from __future__ import annotations

import pytest

from store import PreconditionFailedError, Store


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "b.heap", initial_size=4 << 20, max_size=64 << 20, durability="os")
    yield s
    s.close()


def test_batch_applies_every_op_and_reports_each(store):
    store.put("a", b"1")
    store.put("c", b"3")
    with store.batch() as b:
        b.put("a", b"11")
        b.put("b", b"2")
        b.delete("c")
        b.delete("zz")                  # absent, no if_match: a no-op
    assert b.results == {"a": "replaced", "b": "created", "c": "deleted", "zz": "absent"}
    assert sorted(store) == ["a", "b"] and store.get("a")[0] == b"11" and len(store) == 2


def test_batch_of_only_absent_deletes_changes_nothing(store):
    store.put("a", b"1")
    with store.batch() as b:
        b.delete("x")
        b.delete("y")
    assert b.results == {"x": "absent", "y": "absent"}
    assert list(store) == ["a"]


@pytest.mark.parametrize("failing", ["if_none_match", "if_match_absent", "if_match_wrong"])
def test_batch_with_a_failing_precondition_applies_nothing(store, failing):
    info = store.put("a", b"1")
    store.put("d", b"4")
    with pytest.raises(PreconditionFailedError, match="nothing was applied"), store.batch() as b:
        b.put("new", b"n")
        b.delete("d")
        if failing == "if_none_match":
            b.put("a", b"2", if_none_match=True)
        elif failing == "if_match_absent":
            b.delete("nope", if_match=info.etag)
        else:
            b.put("a", b"2", if_match="0" * 32)
    assert sorted(store) == ["a", "d"] and store.get("a")[0] == b"1"


def test_the_last_op_on_a_key_wins(store):
    with store.batch() as b:
        b.put("k", b"first")
        b.put("k", b"second")
    assert store.get("k")[0] == b"second"
