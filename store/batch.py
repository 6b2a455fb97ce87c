"""Atomic batches: many puts and deletes applied in one redo commit, all or nothing.

    with store.batch() as b:
        b.put("a", b"1")
        b.delete("b", if_match=etag)

Preconditions are checked first, inside the commit: if any fails, nothing is applied
and PreconditionFailedError names the key. Deleting an absent key without if_match is
a no-op. A key may appear once per batch (the last operation on it wins).
"""

from __future__ import annotations

import hashlib
import time
from typing import Self

from allocator._native import lib
from store import _index
from store.errors import ObjectTooLargeError, PreconditionFailedError


class Batch:
    def __init__(self, store):
        self._store = store
        self._ops: dict[bytes, tuple] = {}
        self._done = False
        self.results: dict[str, str] = {}

    def put(self, key, value, *, content_type: str | None = None, if_match: str | None = None,
            if_none_match: bool = False) -> None:
        st = self._store
        k = st._key(key)
        if len(value) > st.max_object_size:
            raise ObjectTooLargeError(f"value of {len(value)} bytes exceeds max_object_size for key {k[:64]!r}")
        cond, match = st._cond(if_match, if_none_match)
        ctype = (content_type or "").encode("utf-8")
        if len(ctype) > 255:
            raise ValueError("content_type must be at most 255 bytes of UTF-8")
        self._ops.pop(k, None)
        self._ops[k] = (0, k, value, ctype, hashlib.md5(value).digest(), cond, match, time.time_ns())

    def delete(self, key, *, if_match: str | None = None) -> None:
        k = self._store._key(key)
        cond, match = self._store._cond(if_match, False)
        self._ops.pop(k, None)
        self._ops[k] = (1, k, b"", b"", b"", cond, match, 0)

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> dict[str, str]:
        """Apply everything in one commit; returns {key: "created"|"replaced"|"deleted"|"absent"}."""
        if self._done:
            raise RuntimeError("batch already committed or discarded")
        self._done = True
        ops = list(self._ops.values())
        if not ops:
            return {}
        rc, results = apply_growing(self._store, ops, atomic=True)
        if rc == lib.PM_E_PRECONDITION:
            bad = next(op[1] for op, r in zip(ops, results) if r == lib.PM_E_PRECONDITION)
            raise PreconditionFailedError(f"batch: precondition failed for key {bad.decode()!r}; nothing was "
                                          "applied")
        _index.check(rc, "batch of", f"{len(ops)} operations".encode())
        names = {1: "created", 0: "replaced"}
        self.results = {op[1].decode(): ("absent" if r == lib.PM_E_NOT_FOUND else "deleted" if op[0] == 1
                                         else names[r]) for op, r in zip(ops, results)}
        return self.results

    def discard(self) -> None:
        self._done = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class GroupCommitter:
    """Concurrent writers share commits: each op joins a queue in C (pm_index_submit, the
    GIL released while it waits); one waiting writer applies everyone's queued operations
    (distinct keys) in one redo commit, so one barrier covers many writers. The writer
    count lives in C, where the common put (pm_index_put_plain) keeps it itself."""

    MAX_GROUP = 64

    def __init__(self, store):
        self._store = store
        # ops per group: the lane holds their redo entries (up to about 40 each with the
        # tallest towers: links of the predecessors and of the new record, L8)
        self.limit = min(self.MAX_GROUP, max(1, store.heap.mapping.redo_capacity // 40))
        store._index.set_group(self.limit)

    def enter(self) -> bool:
        """Count a writer in; True if another was already in flight (then share its commit)."""
        return self._store._index.writer_enter()

    def leave(self) -> None:
        self._store._index.writer_leave()

    def submit(self, op: tuple) -> int | BaseException:
        """Apply one op (as Index.apply takes it) in some group's commit; returns its result
        code, or the exception that stopped it (HeapFullError) -- never raises."""
        st = self._store
        while True:
            seen = st.heap.mapping.size
            r = st._index.submit(op, self.limit)
            if r != lib.PM_E_NEED_GROW:
                return r
            try:        # the group ran out of pages: grow (once, whoever gets here first) and requeue
                st.heap._grow(seen, len(op[2]) + len(op[1]) + 512)
            except Exception as e:  # noqa: BLE001 - HeapFullError: the caller raises it
                return e


def apply_growing(st, ops: list[tuple], atomic: bool) -> tuple[int, list[int]]:
    """Index.apply, growing the heap (HeapFullError at max_size) while it runs out of pages."""
    while True:
        seen = st.heap.mapping.size
        rc, results = st._index.apply(ops, atomic=atomic)
        if rc != lib.PM_E_NEED_GROW:
            return rc, results
        st.heap._grow(seen, sum(len(op[2]) + len(op[1]) + 512 for op in ops))


__all__ = ["Batch", "GroupCommitter", "apply_growing"]
