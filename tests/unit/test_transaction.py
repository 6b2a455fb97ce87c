"""Heap transactions (allocator/transaction.py, pm_tx_* in csrc/alloc.c): allocations,
writes, word sets and frees in one redo commit (FORMAT.md 7.1).

A transaction is all or nothing: before its commit nothing it does is visible in the
allocator's persistent state, after it everything is, and an abort (exception, too
many entries, a bad word) gives every reserved block back and frees nothing.
"""

from __future__ import annotations

import pytest
from heaputil import create_heap as _create
from heaputil import open_heap as _open
from heaputil import stats_without_barriers as _stats

from allocator import Heap, TransactionTooLargeError, layout
from allocator.errors import NotAllocatedError

PAGE = layout.PAGE_SIZE




def _is_allocated(h: Heap, off: int) -> bool:
    try:
        h.block_size(off)
    except NotAllocatedError:
        return False
    return True


def _table(h: Heap, words: int) -> tuple[int, list[int]]:
    """A zeroed block of `words` 8-byte words to publish into."""
    t = h.alloc(8 * words)
    h.write(t, bytes(8 * words))
    return t, [t + 8 * i for i in range(words)]


# ---------------------------------------------------------------- commit


@pytest.mark.parametrize("reopen", ["close", "abandon"])
def test_commit_makes_allocs_writes_sets_and_frees_visible_together(tmp_path, reopen):
    path = tmp_path / "h.heap"
    heap = _create(path)
    table, w = _table(heap, 8)
    old_a = heap.alloc_into(w[0], 100)
    old_c = heap.alloc(3000)
    live0 = heap.stats()["live_blocks"]
    with heap.transaction() as tx:
        n1 = tx.alloc(108)
        tx.write(n1, b"n1" * 50)
        tx.set(w[2], n1)
        n2 = tx.alloc_into(w[3], 100_000)
        tx.write(n2, b"n2" * 50_000)
        tx.free_from(w[0])
        tx.free(old_c)
        tx.set(layout.ROOT_OFF, table)
        # nothing is visible before the commit
        assert [heap.load8(x) for x in w[:4]] == [old_a, 0, 0, 0]
        assert heap.root == 0
        assert not _is_allocated(heap, n1) and not _is_allocated(heap, n2)
        assert _is_allocated(heap, old_a) and _is_allocated(heap, old_c)
    assert [heap.load8(x) for x in w[:4]] == [0, 0, n1, n2]
    assert heap.root == table
    assert (heap.block_size(n1), heap.block_size(n2)) == (112, 2 * PAGE)
    assert not _is_allocated(heap, old_a) and not _is_allocated(heap, old_c)
    assert heap.stats()["live_blocks"] == live0
    getattr(heap, reopen)()
    with _open(path) as heap:
        assert heap.root == table
        assert [heap.load8(x) for x in w[:4]] == [0, 0, n1, n2]
        assert heap.read(n1, 100) == b"n1" * 50 and heap.read(n2, 100_000) == b"n2" * 50_000
        assert not _is_allocated(heap, old_a) and not _is_allocated(heap, old_c)
        assert heap.report.live_blocks == live0
        assert heap.report.spans == 1


def test_commit_costs_a_barrier_for_its_data_then_one_for_the_commit_point(heap):
    _, w = _table(heap, 4)
    heap.free(heap.alloc(100))          # the run exists; no formatting barrier below
    c = heap.persist_count
    with heap.transaction() as tx:
        for i in range(3):
            off = tx.alloc_into(w[i], 100)
            tx.write(off, bytes([i]) * 100)
    assert heap.persist_count - c == 2      # the data (7.6), then the commit point: log, the last commit's words
    c = heap.persist_count
    with heap.transaction() as tx:
        tx.alloc_into(w[3], 100)
        tx.set(w[0], 0)
    assert heap.persist_count - c == 1      # no data: the commit point alone


def test_explicit_commit_and_abort_without_with(heap):
    _, w = _table(heap, 2)
    tx = heap.transaction()
    a = tx.alloc_into(w[0], 64)
    tx.commit()
    assert heap.load8(w[0]) == a and _is_allocated(heap, a)
    before = _stats(heap)
    tx = heap.transaction()
    b = tx.alloc_into(w[1], 64)
    tx.abort()
    tx.abort()                           # idempotent
    assert heap.load8(w[1]) == 0 and not _is_allocated(heap, b)
    assert _stats(heap) == before


# ---------------------------------------------------------------- abort


def test_exception_inside_with_aborts_everything(heap):
    table, w = _table(heap, 4)
    a = heap.alloc_into(w[0], 5000)
    heap.write(a, b"A" * 5000)
    b = heap.alloc(5000)
    heap.write(b, b"B" * 5000)
    before, persist = _stats(heap), heap.persist_count
    reserved = []
    with pytest.raises(KeyError), heap.transaction() as tx:
        reserved += [tx.alloc_into(w[1], 8192), tx.alloc(8192), tx.alloc(8192)]
        reserved.append(tx.alloc_into(w[2], 200_000))
        tx.write(reserved[0], b"x" * 8192)
        tx.free_from(w[0])
        tx.free(b)
        tx.set(layout.ROOT_OFF, table)
        raise KeyError("boom")
    # nothing was published and nothing was freed
    assert [heap.load8(x) for x in w] == [a, 0, 0, 0]
    assert heap.root == 0
    assert heap.read(a, 5000) == b"A" * 5000 and heap.read(b, 5000) == b"B" * 5000
    assert heap.block_size(a) == heap.block_size(b) == 5120
    assert not any(_is_allocated(heap, off) for off in reserved)
    # the class-8192 run was formatted by the reservation (one page left the free spans):
    # its blocks now count as free, everything else is as before
    after = _stats(heap)
    for k in ("live_blocks", "live_block_bytes", "large_objects", "file_size"):
        assert after[k] == before[k], f"stats[{k!r}] {before[k]} -> {after[k]} after an aborted transaction"
    assert heap.persist_count - persist <= 1, "an aborted transaction issued a commit"
    # the reserved blocks are reusable: the span comes back, and filling the 7-block run
    # of class 8192 hands out the three aborted blocks without a second run
    assert heap.alloc(200_000) == reserved[3]
    again = {heap.alloc(8192) for _ in range(7)}
    assert set(reserved[:3]) <= again, f"aborted blocks {reserved[:3]} not reused; got {sorted(again)}"
    assert next(c for c in heap.stats()["classes"] if c["block_size"] == 8192)["runs"] == 1


def test_too_large_transaction_raises_and_changes_nothing(heap):
    cap = heap.mapping.redo_capacity
    table, w = _table(heap, cap)
    victim = heap.alloc_into(w[0], 16)
    heap.free(heap.alloc(16))
    before, words = _stats(heap), [heap.load8(x) for x in w]
    reserved = []
    with pytest.raises(TransactionTooLargeError), heap.transaction() as tx:
        tx.free_from(w[0])
        for x in w[1:cap // 2 + 1]:       # 2 entries each: more than a lane holds
            reserved.append(tx.alloc_into(x, 16))
        tx.set(layout.ROOT_OFF, table)
    assert len(reserved) * 2 + 2 > cap
    assert [heap.load8(x) for x in w] == words
    assert heap.root == 0
    assert _is_allocated(heap, victim)
    assert not any(_is_allocated(heap, off) for off in reserved)
    assert _stats(heap) == before
    # the reservations went back to the free lists: the same number fit without a new run
    [heap.alloc(16) for _ in reserved]
    assert heap.stats()["classes"][0]["runs"] == 1


def test_transaction_of_exactly_a_lane_commits(heap):
    cap = heap.mapping.redo_capacity
    _, w = _table(heap, cap)
    heap.free(heap.alloc(16))
    with heap.transaction() as tx:
        offs = [tx.alloc_into(x, 16) for x in w[:cap // 2]]
    assert [heap.load8(x) for x in w[:cap // 2]] == offs


def test_a_set_past_the_heap_aborts_at_commit_and_changes_nothing(heap):
    _, w = _table(heap, 2)
    heap.free(heap.alloc(16))
    before = _stats(heap)
    with pytest.raises(ValueError), heap.transaction() as tx:
        off = tx.alloc_into(w[0], 16)
        tx.set(heap.mapping.size + PAGE, 1)
    assert heap.load8(w[0]) == 0 and not _is_allocated(heap, off)
    assert _stats(heap) == before


# ---------------------------------------------------------------- misuse


def test_freeing_the_same_block_twice_in_one_transaction_raises(heap):
    _, w = _table(heap, 1)
    a = heap.alloc_into(w[0], 300)
    before = _stats(heap)
    with pytest.raises(ValueError, match="twice"), heap.transaction() as tx:
        tx.free(a)
        tx.free(a)
    with pytest.raises(ValueError, match="twice"), heap.transaction() as tx:
        tx.free(a)
        tx.free_from(w[0])              # the word names the same block
    assert _is_allocated(heap, a) and heap.load8(w[0]) == a
    assert _stats(heap) == before


def test_free_in_a_transaction_of_a_block_it_reserved_raises(heap):
    with pytest.raises(NotAllocatedError), heap.transaction() as tx:
        tx.free(tx.alloc(64))
    assert heap.stats()["live_blocks"] == 0


@pytest.mark.parametrize("where", ["live", "straddles", "past-the-end", "before"])
def test_write_outside_the_transactions_own_blocks_raises_and_changes_nothing(heap, where):
    """tx.write copies at once and is made durable before the commit point, so it may only
    fill blocks the transaction allocated: a live block's bytes would stay after an abort
    or a crash before the commit point."""
    live = heap.alloc(64)
    heap.write(live, b"L" * 64)
    with heap.transaction() as tx:
        new = tx.alloc(64)
        off, size = {"live": (live, 8), "straddles": (new + 32, 64), "past-the-end": (new + 64, 8),
                     "before": (new - 8, 8)}[where]
        with pytest.raises(ValueError, match="not inside a block this transaction allocated"):
            tx.write(off, b"x" * size)
        tx.write(new, b"n" * 64)        # its own block, whole: allowed
        tx.set(layout.ROOT_OFF, new)
    assert heap.read(live, 64) == b"L" * 64
    assert heap.read(heap.root, 64) == b"n" * 64


@pytest.mark.parametrize("where", ["zero", "header", "root+8", "lanes", "meta", "data-8"])
def test_set_below_the_data_area_raises(heap, where):
    h = heap.file.header
    lanes_end = layout.REDO_OFF + h.lane_count * h.lane_size      # its last word: no commit here reaches it
    off = {"zero": 0, "header": 4096, "root+8": layout.ROOT_OFF + 8, "lanes": lanes_end - 8,
           "meta": h.meta_off, "data-8": h.data_off - 8}[where]
    block = heap.alloc(16)
    word = heap.load8(off)
    with heap.transaction() as tx:
        with pytest.raises(ValueError):
            tx.set(off, block)
        tx.set(layout.ROOT_OFF, block)  # the root word is allowed
    assert heap.root == block
    assert heap.load8(off) == word, f"the refused word at {off} was written"


def test_set_of_a_misaligned_word_raises(heap):
    t = heap.alloc(32)
    with heap.transaction() as tx, pytest.raises(ValueError):
        tx.set(t + 4, 1)


def test_free_from_after_a_set_frees_the_new_value(heap):
    _, w = _table(heap, 1)
    old = heap.alloc_into(w[0], 100)
    new = heap.alloc(100)
    with heap.transaction() as tx:
        tx.set(w[0], new)
        tx.free_from(w[0])
    assert heap.load8(w[0]) == 0
    assert not _is_allocated(heap, new), "free_from freed the word's old value, not the one the tx set"
    assert _is_allocated(heap, old)


def test_free_from_after_alloc_into_in_the_same_transaction_is_refused(heap):
    _, w = _table(heap, 1)
    before = _stats(heap)
    with pytest.raises(NotAllocatedError), heap.transaction() as tx:
        tx.alloc_into(w[0], 100)
        tx.free_from(w[0])              # the block is only reserved: it cannot be freed yet
    assert heap.load8(w[0]) == 0
    assert _stats(heap)["live_blocks"] == before["live_blocks"]


@pytest.mark.parametrize("how", ["commit", "abort"])
def test_a_finished_transaction_refuses_further_use(heap, how):
    _, w = _table(heap, 2)
    a = heap.alloc_into(w[1], 64)
    tx = heap.transaction()
    tx.alloc(64)
    getattr(tx, how)()
    before = _stats(heap)
    calls = {
        "alloc": lambda: tx.alloc(64), "alloc_into": lambda: tx.alloc_into(w[0], 64),
        "write": lambda: tx.write(a, b"x"), "set": lambda: tx.set(w[0], 1),
        "free": lambda: tx.free(a), "free_from": lambda: tx.free_from(w[1]), "commit": tx.commit,
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError):
            call()
            pytest.fail(f"tx.{name} worked after {how}")
    assert _stats(heap) == before
    assert heap.load8(w[0]) == 0 and heap.load8(w[1]) == a and heap.read(a, 1) != b"x"


# ---------------------------------------------------------------- reuse


def test_a_block_freed_in_a_transaction_is_not_reused_before_commit(heap):
    full = [heap.alloc(8192) for _ in range(7)]     # class 8192: exactly one full 1-page run
    span = heap.alloc(3 * PAGE)
    with heap.transaction() as tx:
        tx.free(full[3])
        tx.free(span)
        got = tx.alloc(8192)
        got_span = tx.alloc(3 * PAGE)
        assert got not in full, f"tx reused block {got}, which it frees only at commit"
        assert got_span != span, f"tx reused span {span}, which it frees only at commit"
    assert not _is_allocated(heap, full[3]) and not _is_allocated(heap, span)
    # after the commit the freed blocks are reusable, once the commits before the free are
    # gone (L7); stats() releases this thread's held-back frees at once
    heap.stats()
    assert heap.alloc(3 * PAGE) == span
    again = {heap.alloc(8192) for _ in range(6)}    # fills the second run, then the hole in the first
    again.add(heap.alloc(8192))
    assert full[3] in again, "a block freed by a committed transaction was never reused"
