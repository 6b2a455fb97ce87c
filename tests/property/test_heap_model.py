"""Hypothesis state machine: the heap (allocator/heap.py) against a dict model
{offset: (size, bytes)}, with allocs of every size range, frees, publish/unpublish into a
table block, transactions (committed or aborted), clean reopen, process-crash reopen
(abandon) and growth-forcing allocations.

Invariants after every step: live blocks never overlap, every block holds exactly the
bytes the model says, stats()["live_blocks"] counts exactly the model's blocks (P4).
At every reopen and at teardown the independent checker (recovery/check.py) must find
no violation and exactly the model's blocks allocated (P1-P5).
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from allocator import Heap, HeapFullError, layout
from recovery.check import check_heap, format_report

TABLE_WORDS = 16
MAX_SIZE = 32 << 20
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None

# request sizes: mostly small and medium, 4097..70000 often enough to reach 8-page runs
# and 2-page spans, and 1 in 20 a span of up to 300000 bytes
_RANGES = [(1, 256)] * 7 + [(257, 4096)] * 6 + [(4097, 70_000)] * 6 + [(70_001, 300_000)]
SIZES = st.integers(0, len(_RANGES) - 1).flatmap(lambda k: st.integers(*_RANGES[k]))


def _payload(seed: int, n: int) -> bytes:
    """n bytes that differ per seed; a tile of prime length, so shifted copies do not match."""
    tile = random.Random(seed).randbytes(min(n, 4093))
    return (tile * (n // len(tile) + 1))[:n]


class Aborted(Exception):
    """Raised inside a transaction to make it abort."""


class HeapModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.TemporaryDirectory(dir=TMP_ROOT)
        self.path = Path(self.dir.name) / "model.heap"
        self.heap = Heap.create(self.path, size=1 << 20, max_size=MAX_SIZE, backend="none")
        self.model: dict[int, tuple[int, bytes]] = {}   # unpublished and published blocks
        self.words: list[int] = [0] * TABLE_WORDS        # what each table word holds

    @initialize()
    def publish_table(self):
        self.table = self.heap.alloc_into(layout.ROOT_OFF, 8 * TABLE_WORDS)
        self.heap.write(self.table, bytes(8 * TABLE_WORDS))

    # ------------------------------------------------------------ helpers
    def _new_block(self, off: int, size: int, seed: int, *, write=None) -> None:
        assert off not in self.model and off != self.table, f"offset {off} handed out while live"
        data = _payload(seed, size)
        (write or self.heap.write)(off, data)
        self.model[off] = (size, data)

    def _unpublished(self) -> list[int]:
        published = set(self.words)
        return sorted(off for off in self.model if off not in published)

    def _check_file(self) -> None:
        rep = check_heap(self.path, at_rest=False)
        assert rep.ok, format_report(rep)
        want = set(self.model) | {self.table}
        assert set(rep.blocks) == want, (
            f"checker sees blocks {sorted(set(rep.blocks) ^ want)} differently from the model")

    # ------------------------------------------------------------ rules
    @rule(size=SIZES, seed=st.integers(0, 2**32))
    def alloc(self, size, seed):
        try:
            off = self.heap.alloc(size)
        except HeapFullError:
            event("alloc: heap full")
            return                       # the invariants check that nothing changed
        self._new_block(off, size, seed)

    @precondition(lambda self: len(self.model) > len([w for w in self.words if w]))
    @rule(pick=st.integers(0, 10**6))
    def free(self, pick):
        cands = self._unpublished()
        off = cands[pick % len(cands)]
        self.heap.free(off)
        del self.model[off]

    @rule(i=st.integers(0, TABLE_WORDS - 1), size=SIZES, seed=st.integers(0, 2**32))
    def alloc_into(self, i, size, seed):
        if self.words[i]:
            return
        try:
            off = self.heap.alloc_into(self.table + 8 * i, size)
        except HeapFullError:
            return
        self._new_block(off, size, seed)
        self.words[i] = off

    @precondition(lambda self: any(self.words))
    @rule(pick=st.integers(0, 10**6))
    def free_from(self, pick):
        full = [i for i, w in enumerate(self.words) if w]
        i = full[pick % len(full)]
        self.heap.free_from(self.table + 8 * i)
        del self.model[self.words[i]]
        self.words[i] = 0

    @rule(data=st.data(), abort=st.booleans())
    def transaction(self, data, abort):
        model, words = dict(self.model), list(self.words)
        steps = data.draw(st.lists(st.sampled_from(["alloc", "alloc_into", "free", "free_from"]),
                                   min_size=1, max_size=5))
        freed = set()
        try:
            with self.heap.transaction() as tx:
                for op in steps:
                    if op == "alloc":
                        n = data.draw(SIZES)
                        off = tx.alloc(n)
                        payload = _payload(data.draw(st.integers(0, 2**32)), n)
                        tx.write(off, payload)
                        model[off] = (n, payload)
                    elif op == "alloc_into":
                        empty = [i for i, w in enumerate(words) if not w]
                        if not empty:
                            continue
                        i = data.draw(st.sampled_from(empty))
                        n = data.draw(st.integers(1, 5000))
                        off = tx.alloc_into(self.table + 8 * i, n)
                        payload = _payload(data.draw(st.integers(0, 2**32)), n)
                        tx.write(off, payload)
                        model[off], words[i] = (n, payload), off
                    elif op == "free":
                        cands = sorted(o for o in model if o not in set(words) and o not in freed
                                       and o in self.model)
                        if not cands:
                            continue
                        off = data.draw(st.sampled_from(cands))
                        tx.free(off)
                        freed.add(off)
                        del model[off]
                    else:
                        full = [i for i, w in enumerate(words) if w and w in self.model and w not in freed]
                        if not full:
                            continue
                        i = data.draw(st.sampled_from(full))
                        tx.free_from(self.table + 8 * i)
                        freed.add(words[i])
                        del model[words[i]]
                        words[i] = 0
                if abort:
                    raise Aborted()
        except Aborted:
            event("transaction aborted")
            return
        except HeapFullError:
            event("transaction: heap full")
            return
        event("transaction committed")
        self.model, self.words = model, words

    @rule()
    def reopen_clean(self):
        self.heap.close()
        self._check_file()
        self.heap = Heap.open(self.path, backend="none")
        assert self.heap.report.was_clean
        assert self.heap.root == self.table
        assert self.heap.report.live_blocks == len(self.model) + 1

    @rule()
    def reopen_after_process_crash(self):
        self.heap.abandon()
        self._check_file()
        self.heap = Heap.open(self.path, backend="none")
        assert not self.heap.report.was_clean
        assert self.heap.root == self.table
        assert self.heap.report.live_blocks == len(self.model) + 1

    @precondition(lambda self: self.heap.mapping.size < MAX_SIZE)
    @rule(seed=st.integers(0, 2**32))
    def alloc_forcing_growth(self, seed):
        st0 = self.heap.stats()
        size = st0["largest_free_span_bytes"] + layout.PAGE_SIZE + 1
        if st0["file_size"] + size > MAX_SIZE:
            event("growth: no room below max_size")
            return
        runs_before = sum(c["runs"] for c in st0["classes"])
        off = self.heap.alloc(size)
        self._new_block(off, size, seed)
        runs_after = sum(c["runs"] for c in self.heap.stats()["classes"])
        assert self.heap.mapping.size > st0["file_size"] or runs_after < runs_before, (
            "an allocation larger than any free span neither grew the heap nor reclaimed an empty run")
        assert self.heap.file.header.file_size == self.heap.mapping.size

    # ------------------------------------------------------------ invariants
    @invariant()
    def blocks_are_disjoint_and_hold_their_bytes(self):
        if not hasattr(self, "table"):
            return
        spans = sorted((off, self.heap.block_size(off)) for off in [*self.model, self.table])
        for (a, an), (b, _) in itertools.pairwise(spans):
            assert a + an <= b, f"block {a} (+{an}) overlaps block {b}"
        for off, (size, data) in self.model.items():
            assert self.heap.block_size(off) >= size
            assert self.heap.read(off, size) == data, f"block {off} ({size} B) does not hold its bytes"
        assert [self.heap.load8(self.table + 8 * i) for i in range(TABLE_WORDS)] == self.words
        assert self.heap.root == self.table

    @invariant()
    def live_blocks_match_the_model(self):
        if not hasattr(self, "table"):
            return
        assert self.heap.stats()["live_blocks"] == len(self.model) + 1

    def teardown(self):
        try:
            if hasattr(self, "heap") and not self.heap.closed:
                self.heap.close()
                if hasattr(self, "table"):
                    self._check_file()
        finally:
            self.dir.cleanup()


HeapModel.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                       print_blob=True, suppress_health_check=[HealthCheck.too_slow])
test_heap_model = HeapModel.TestCase
