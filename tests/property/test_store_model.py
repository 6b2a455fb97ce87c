"""Hypothesis state machine: the object store (store/store.py) against a dict model
{key: (value, content_type)}, with puts inline and out of line, conditional puts
(if_none_match, if_match with the right or a wrong etag), deletes of present and absent
keys (plain and with if_match), gets, ranges, listings with a random prefix, `after` and
page size, clean reopen and process-crash reopen (abandon).

Invariants after every step: len == the model's size, every key holds exactly the
model's bytes and etag, a full listing is sorted(model keys as bytes). At every reopen
and at teardown the independent checker finds no violation and exactly the store's
blocks: superblock, head, one record per object, one block per value > 4096 bytes (I3).
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from recovery.check import check_heap, format_report
from store import Store
from store.errors import NoSuchKeyError, PreconditionFailedError

TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None
INLINE_MAX = 4096
WRONG_ETAG = "f" * 32
ALPHABET = "ab/.é"

# short keys collide often (replace, delete of present keys, conditions that hold);
# longer ones exercise the tower and the prefix logic
KEYS = st.one_of(st.text(ALPHABET, min_size=1, max_size=3), st.text(ALPHABET, min_size=1, max_size=3),
                 st.text(ALPHABET + "B", min_size=1, max_size=20))
PREFIXES = st.one_of(st.just(""), st.text(ALPHABET, min_size=1, max_size=3))
_RANGES = [(0, 0), (1, 64), (65, 4095), (4096, 4097), (4098, 6000)]
SIZES = st.sampled_from(_RANGES).flatmap(lambda r: st.integers(*r))
CTYPES = st.sampled_from([None, "text/plain", "application/octet-stream", "x/é"])


def _value(seed: int, size: int) -> bytes:
    """Binary (random) or text-like (a repeated tag) bytes, by the seed's low bit."""
    if seed & 1:
        return random.Random(seed).randbytes(size)
    tag = f"<{seed}>".encode()
    return (tag * (size // len(tag) + 1))[:size]


def _b(key: str) -> bytes:
    return key.encode()


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.TemporaryDirectory(dir=TMP_ROOT)
        self.path = Path(self.dir.name) / "model.heap"
        self.store = self._open()
        self.model: dict[str, tuple[bytes, str | None]] = {}

    def _open(self) -> Store:
        return Store.open(self.path, initial_size=4 << 20, max_size=64 << 20, durability="os")

    def teardown(self):
        try:
            if not self.store.closed:
                self.store.close()
            self._check_file()
        finally:
            self.dir.cleanup()

    # ------------------------------------------------------------ helpers
    def _pick(self, data, key: str) -> str:
        """key, or (half the time) a key the model holds."""
        if self.model and data.draw(st.booleans(), label="existing"):
            return data.draw(st.sampled_from(sorted(self.model)), label="existing key")
        return key

    def _etag(self, key: str) -> str:
        return hashlib.md5(self.model[key][0]).hexdigest()

    def _check_file(self) -> None:
        """The closed heap passes the checker and holds exactly the model's blocks (I3)."""
        rep = check_heap(self.path)
        assert rep.ok, format_report(rep)
        large = sum(1 for v, _ in self.model.values() if len(v) > INLINE_MAX)
        assert len(rep.blocks) == 2 + len(self.model) + large, (
            f"checker sees {len(rep.blocks)} blocks; the store holds 2 + {len(self.model)} records "
            f"+ {large} value blocks")

    def _put_ok(self, key, value, ctype, **cond):
        info = self.store.put(key, value, content_type=ctype, **cond)
        assert (info.key, info.size, info.etag, info.content_type) == \
            (key, len(value), hashlib.md5(value).hexdigest(), ctype)
        self.model[key] = (value, ctype)

    # ------------------------------------------------------------ rules
    @initialize(keys=st.lists(KEYS, max_size=16), seed=st.integers(0, 2**32))
    def populate(self, keys, seed):
        """Start from a few objects, so that listings, conditions and deletes meet neighbours."""
        rng = random.Random(seed)
        for key in keys:
            self._put_ok(key, _value(seed, rng.choice([0, 10, 300, 5000])), None)

    @rule(data=st.data(), key=KEYS, size=SIZES, seed=st.integers(0, 2**32), ctype=CTYPES)
    def put(self, data, key, size, seed, ctype):
        self._put_ok(self._pick(data, key), _value(seed, size), ctype)

    @rule(data=st.data(), key=KEYS, size=SIZES, seed=st.integers(0, 2**32))
    def put_if_none_match(self, data, key, size, seed):
        key, value = self._pick(data, key), _value(seed, size)
        if key in self.model:
            old = self.model[key][0]
            try:
                self.store.put(key, value, if_none_match=True)
                raise AssertionError(f"put({key!r}, if_none_match=True) replaced an existing object")
            except PreconditionFailedError:
                pass
            assert self.store.get(key)[0] == old
        else:
            self._put_ok(key, value, None, if_none_match=True)

    @rule(data=st.data(), key=KEYS, size=SIZES, seed=st.integers(0, 2**32), right=st.booleans())
    def put_if_match(self, data, key, size, seed, right):
        key, value = self._pick(data, key), _value(seed, size)
        if key in self.model and right:
            self._put_ok(key, value, "cond/put", if_match=self._etag(key))
            return
        etag = WRONG_ETAG if not right or key not in self.model else self._etag(key)
        if key in self.model and hashlib.md5(self.model[key][0]).hexdigest() == etag:
            return                                                  # astronomically unlikely
        try:
            self.store.put(key, value, if_match=etag)
            raise AssertionError(f"put({key!r}, if_match={etag}) succeeded: "
                                 f"{'absent key' if key not in self.model else 'wrong etag'}")
        except PreconditionFailedError:
            pass

    @rule(data=st.data(), key=KEYS, mode=st.sampled_from(["plain", "right", "wrong"]))
    def delete(self, data, key, mode):
        key = self._pick(data, key)
        present = key in self.model
        if_match = None if mode == "plain" else (self._etag(key) if mode == "right" and present else WRONG_ETAG)
        if present and mode != "wrong":
            self.store.delete(key, if_match=if_match)
            del self.model[key]
            return
        want = NoSuchKeyError if not present and mode == "plain" else PreconditionFailedError
        try:
            self.store.delete(key, if_match=if_match)
            raise AssertionError(f"delete({key!r}, if_match={if_match}) succeeded; present={present}")
        except want:
            pass

    @rule(data=st.data(), key=KEYS, zero_copy=st.booleans())
    def get(self, data, key, zero_copy):
        key = self._pick(data, key)
        if key not in self.model:
            for read in (lambda: self.store.get(key, zero_copy=zero_copy), lambda: self.store.get_value(key)):
                try:
                    read()
                    raise AssertionError(f"get({key!r}) of an absent key returned a value")
                except NoSuchKeyError:
                    pass
            return
        value, ctype = self.model[key]
        got, info = self.store.get(key, zero_copy=zero_copy)
        assert bytes(got) == value, f"get({key!r}): {len(got)} bytes, want {len(value)}"
        assert self.store.get_value(key) == value, f"get_value({key!r}) differs from the model"
        assert (info.size, info.etag, info.content_type) == (len(value), hashlib.md5(value).hexdigest(), ctype)

    @rule(data=st.data(), key=KEYS, start=st.integers(0, 7000), length=st.none() | st.integers(0, 7000))
    def get_range(self, data, key, start, length):
        key = self._pick(data, key)
        end = None if length is None else start + length
        if key not in self.model:
            try:
                self.store.get_range(key, start, end)
                raise AssertionError(f"get_range({key!r}) of an absent key returned a value")
            except NoSuchKeyError:
                return
        got, info = self.store.get_range(key, start, end)
        value = self.model[key][0]
        assert got == value[start:end], f"get_range({key!r}, {start}, {end}) of {len(value)} bytes"
        assert info.size == len(value)

    @rule(data=st.data(), limit=st.integers(1, 12),
          prefix_kind=st.sampled_from(["none", "any", "of-held"]),
          after_kind=st.sampled_from(["none", "any", "held", "prefix-of-prefix"]))
    def list_pages(self, data, limit, prefix_kind, after_kind):
        if prefix_kind == "of-held" and self.model:
            held = data.draw(st.sampled_from(sorted(self.model)), label="prefix of")
            prefix = held[:data.draw(st.integers(1, len(held)), label="prefix length")]
        else:
            prefix = "" if prefix_kind == "none" else data.draw(PREFIXES, label="prefix")
        if after_kind == "held" and self.model:
            after = data.draw(st.sampled_from(sorted(self.model)), label="after")
        elif after_kind == "prefix-of-prefix" and len(prefix) > 1:     # sorts just before the prefix's range
            after = prefix[:data.draw(st.integers(1, len(prefix) - 1), label="after length")]
        elif after_kind == "none":
            after = None
        else:
            after = data.draw(KEYS, label="after")
        want = sorted(k for k in map(_b, self.model) if k.startswith(_b(prefix)) and (after is None or k > _b(after)))
        got, nxt, pages = [], after, 0
        while True:
            infos, nxt = self.store.list(prefix=prefix, after=nxt, limit=limit)
            pages += 1
            assert len(infos) == limit or nxt is None, f"a non-last page of {len(infos)} < {limit} objects"
            for i in infos:
                value, ctype = self.model.get(i.key, (None, None))
                assert value is not None, f"list returned {i.key!r}, which the model does not hold"
                assert (i.size, i.etag, i.content_type) == (len(value), hashlib.md5(value).hexdigest(), ctype)
            got += [_b(i.key) for i in infos]
            if nxt is None:
                break
            assert pages <= len(self.model) + 1, "pagination does not end"
        assert got == want, (f"list(prefix={prefix!r}, after={after!r}, limit={limit}) paginated to {got}, "
                             f"expected {want}")

    @rule()
    def reopen(self):
        self.store.close()
        self._check_file()
        self.store = self._open()

    @rule()
    def crash_and_reopen(self):
        self.store.abandon()
        self.store = self._open()

    # ------------------------------------------------------------ invariants
    @invariant()
    def matches_model(self):
        s = self.store
        assert len(s) == len(self.model), f"len {len(s)}, model holds {len(self.model)}"
        for key, (value, _) in self.model.items():
            assert s.get(key)[0] == value, f"{key!r} differs from the model"
        infos, nxt = s.list(limit=1000)
        assert nxt is None
        assert [_b(i.key) for i in infos] == sorted(map(_b, self.model)), "full listing is not the sorted model"


StoreModel.TestCase.settings = settings(max_examples=30, stateful_step_count=40, deadline=None, print_blob=True,
                                        suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.filter_too_much])
test_store_model = StoreModel.TestCase
