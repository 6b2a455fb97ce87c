"""A heap transaction: several allocations, frees and word sets in one redo commit.

    with heap.transaction() as tx:
        node = tx.alloc(64)               # reserved now, durable only at commit
        tx.write(node, payload)           # persisted by the commit's first barrier
        tx.set(parent_word_off, node)     # publish it
        tx.free_from(old_word_off)        # and drop what it replaces

Crash safety: every allocation, free and word set reaches the heap in one commit
(FORMAT.md 7.1, 7.6): after a crash either all of it happened or none. On an exception
the reserved blocks go back to the free lists and no allocation, free or set happens.
`tx.write` copies bytes at once (made durable by the commit's first barrier), so it
writes only into blocks the transaction allocated (ValueError otherwise): bytes written
into a live block would stay after an abort or a crash before the commit point. Change a
live block with `tx.set` (atomic with the rest), or with `heap.write` (durable alone).
A transaction belongs to one thread.
"""

from __future__ import annotations

from typing import Self

from allocator import _native, layout
from allocator.errors import TransactionTooLargeError


class Transaction:
    def __init__(self, heap):
        self._heap = heap
        self._mapping = heap.mapping
        self._entries = bytearray()
        self._data = bytearray()            # (offset, size) pairs, le64, of tx.write's bytes
        self._reserved = bytearray()        # slots of the blocks alloc reserved (Mapping.tx_reserve)
        self._freed = bytearray()           # slots of the blocks free gives back (Mapping.tx_locate)
        self._freed_offs: set[int] = set()
        self._sets: dict[int, int] = {}
        self._blocks: list[tuple[int, int]] = []    # (offset, size) of each block alloc reserved
        self._done = False

    def _check_open(self):
        if self._done:
            raise RuntimeError("transaction already committed or aborted")

    def alloc(self, size: int) -> int:
        """Reserve a block of `size` bytes; it is allocated durably at commit."""
        self._check_open()
        try:
            off, slot, packed = self._mapping.tx_reserve(size)
        except _native.NeedGrow:
            off, slot, packed = self._heap._grow_and_retry(lambda: self._mapping.tx_reserve(size), size)
        self._reserved += slot
        self._blocks.append((off, size))
        self._entries += packed
        return off

    def write(self, off: int, data) -> None:
        """Copy data into a block this transaction allocated; durable with the commit's first barrier."""
        self._check_open()
        size = memoryview(data).nbytes
        if not any(b <= off and off + size <= b + n for b, n in self._blocks):
            raise ValueError(f"tx.write of {size} bytes at {off}: not inside a block this transaction "
                             "allocated (change a live block with tx.set, or heap.write)")
        self._heap.write(off, data, persist=False)
        self._data += off.to_bytes(8, "little") + size.to_bytes(8, "little")

    def set(self, dest_off: int, value: int) -> None:
        """Set the 8-byte word at dest_off (the root or a word in the data area) at commit."""
        self._check_open()
        if dest_off != layout.ROOT_OFF and dest_off < self._heap._data_off:
            raise ValueError(f"tx.set at {dest_off}: only the root word or the data area may be set")
        self._entries += layout.pack_redo_entry(layout.REDO_OP_SET, dest_off, value)
        self._sets[dest_off] = value

    def free(self, off: int) -> None:
        """Free the block at off at commit (reusable only after it)."""
        self._check_open()
        if off in self._freed_offs:
            raise ValueError(f"block {off} freed twice in one transaction")
        slot, packed = self._mapping.tx_locate(off)
        self._freed += slot
        self._freed_offs.add(off)
        self._entries += packed

    def alloc_into(self, dest_off: int, size: int) -> int:
        off = self.alloc(size)
        self.set(dest_off, off)
        return off

    def free_from(self, dest_off: int) -> None:
        """Free the block the word at dest_off points to (as this transaction left it) and clear it."""
        off = self._sets.get(dest_off)
        if off is None:
            off = self._mapping.load8(dest_off)
        self.free(off)
        self.set(dest_off, 0)

    def commit(self) -> None:
        self._check_open()
        self._done = True
        if len(self._entries) // layout.REDO_ENTRY_SIZE > self._mapping.redo_capacity:
            self._mapping.tx_abort(bytes(self._reserved))
            raise TransactionTooLargeError(
                f"transaction of {len(self._entries) // layout.REDO_ENTRY_SIZE} entries exceeds a redo "
                f"lane ({self._mapping.redo_capacity}); nothing was changed")
        self._mapping.tx_commit(bytes(self._entries), bytes(self._data), bytes(self._reserved), bytes(self._freed))

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._mapping.tx_abort(bytes(self._reserved))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
