"""Hypothesis state machine: redo commits against a dict model, with clean reopen,
process-crash reopen (abandon) and growth steps. Words must always match the model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from allocator import HeapFile, TransactionTooLargeError, layout

WORD_COUNT = 64
OPS = st.sampled_from([layout.REDO_OP_SET, layout.REDO_OP_OR, layout.REDO_OP_ANDNOT])


class RedoModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "model.heap"
        self.hf = HeapFile.create(self.path, size=128 << 10, max_size=1 << 20, lane_count=2, backend="none")
        base = self.hf.header.data_off
        # words spread over two 64 KiB pages, so growth moves nothing
        self.words = [base + (i * 1032 // 8) * 8 for i in range(WORD_COUNT)]
        self.model = {w: 0 for w in self.words}

    @rule(picks=st.lists(st.tuples(OPS, st.integers(0, WORD_COUNT - 1), st.integers(0, 2**64 - 1)),
                         min_size=1, max_size=12))
    def commit(self, picks):
        entries = [(op, self.words[i], v) for op, i, v in picks]
        self.hf.commit(entries)
        for op, w, v in entries:
            old = self.model[w]
            self.model[w] = v if op == layout.REDO_OP_SET else old | v if op == layout.REDO_OP_OR else old & ~v

    @rule()
    def too_large_commit_changes_nothing(self):
        entries = [(layout.REDO_OP_SET, self.words[0], 1)] * (self.hf.redo_capacity + 1)
        try:
            self.hf.commit(entries)
        except TransactionTooLargeError:
            return
        raise AssertionError("a commit larger than a lane was accepted")

    @rule()
    def reopen_clean(self):
        self.hf.close()
        self.hf = HeapFile.open(self.path, backend="none")
        assert self.hf.report.was_clean

    @rule()
    def reopen_after_process_crash(self):
        self.hf.abandon()
        self.hf = HeapFile.open(self.path, backend="none")
        assert not self.hf.report.was_clean

    @precondition(lambda self: self.hf.mapping.size < (1 << 20))
    @rule()
    def grow(self):
        old = self.hf.mapping.size
        self.hf.mapping.grow(old + layout.PAGE_SIZE)
        self.hf.update_header(file_size=old + layout.PAGE_SIZE)
        assert self.hf.mapping.load8(old) == 0

    @invariant()
    def words_match_the_model(self):
        got = {w: self.hf.mapping.load8(w) for w in self.words}
        assert got == self.model

    def teardown(self):
        self.hf.abandon() if not self.hf.closed else None
        self.dir.cleanup()


RedoModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_redo_state_machine = RedoModel.TestCase
