"""The persistent heap: size-classed allocation with crash-consistent publish.

`Heap` is what the store (and embedded users) build on: a heap file plus the C
allocator (csrc/alloc.c) -- mimalloc-style runs with sharded free lists per thread,
large objects in page spans, growth of the file up to its maximum size.

Crash safety: an allocation becomes durable only in the same redo commit as the word
that publishes it (`alloc_into`, `Transaction`); a free clears that word in the same
commit. Open replays the redo lanes, then rebuilds every free list from the page
descriptors and bitmaps (the recovery scan).
Invariants: H6 (class table), P1-P5 (FORMAT.md 6).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Self

from allocator import _native, layout
from allocator.errors import (
    CorruptHeapError,
    HeapFullError,
    HeapLockedError,
    PmemError,
    UnsupportedVersionError,
)
from allocator.heapfile import DEFAULT_MAX_SIZE, HeapFile, OpenReport
from allocator.transaction import Transaction

CLASS_TABLE_ID = _native.layout_constant("PMD_CLASS_TABLE_ID")
MAX_GROWTH_STEP = 1 << 30


def meta_size_for(max_size: int) -> int:
    """Bytes of the descriptor table: one 8-byte descriptor per page of max_size (P-section)."""
    return 8 * -(-max_size // layout.PAGE_SIZE)


@dataclasses.dataclass
class RecoveryReport:
    """What open did: redo replay, then the allocator's scan."""

    was_clean: bool
    header_copy_restored: str | None
    journal_records_replayed: int
    lanes_replayed: int
    lanes_discarded: int
    entries_applied: int
    pages_scanned: int
    runs: int
    spans: int
    live_blocks: int
    replay_ms: float
    scan_ms: float

    @property
    def total_ms(self) -> float:
        return self.replay_ms + self.scan_ms


class Heap:
    """A persistent heap. Thread-safe; the C calls release the GIL, except alloc_into,
    free_from, alloc and free off the msync backend, reads of up to 1 KiB and views
    (csrc/cpython/fastcall.c says why)."""

    def __init__(self, hf: HeapFile, report: RecoveryReport):
        self.file = hf
        self.mapping = hf.mapping
        self.report = report
        self._grow_lock = threading.Lock()
        h = hf.header
        self._data_off = h.data_off
        # alloc_into, free_from, alloc and free are the mapping's C methods themselves, bound here so a
        # call runs no Python frame (the methods below say what they do); a heap short of
        # pages comes back through grow_and_retry.
        self.mapping.grow_and_retry = self._grow_and_retry
        self.alloc_into, self.free_from = self.mapping.alloc_into, self.mapping.free_from
        self.alloc, self.free = self.mapping.alloc, self.mapping.free

    # ------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path, *, size: int = 64 << 20, max_size: int | None = None,
               lane_count: int = layout.DEFAULT_LANE_COUNT, lane_size: int = layout.DEFAULT_LANE_SIZE,
               journal_size: int = 0, backend: str = "auto", trace: bool = False) -> Heap:
        """Create a heap of `size` bytes that grows on demand up to max_size (default 16 GiB).
        `journal_size` > 0 gives it a barrier journal: on the msync backend a barrier then
        writes one sequential record instead of every page it covers (FORMAT.md 7.11)."""
        max_size = DEFAULT_MAX_SIZE if max_size is None else max_size
        max_size = max(max_size, size)
        max_size = -(-max_size // layout.PAGE_SIZE) * layout.PAGE_SIZE
        HeapFile.create(path, size=size, max_size=max_size, lane_count=lane_count, lane_size=lane_size,
                        meta_size=meta_size_for(max_size), class_table_id=CLASS_TABLE_ID,
                        journal_size=journal_size, backend=backend).close()
        return cls.open(path, backend=backend, trace=trace)

    @classmethod
    def open(cls, path, *, backend: str = "auto", trace: bool = False) -> Heap:
        """Open an existing heap: lock, validate, replay the redo log, scan the pages.
        A refused file is left byte-for-byte as it was."""
        scan: dict = {}

        def validate(h):
            if h.class_table_id != CLASS_TABLE_ID:
                raise UnsupportedVersionError(path, "class_table_id",
                                              f"file uses size-class table {h.class_table_id}, this build "
                                              f"uses table {CLASS_TABLE_ID} (H6)")
            if h.meta_off + meta_size_for(h.max_size) > h.data_off:
                raise CorruptHeapError(path, "data_off", "the descriptor table does not cover max_size "
                                       "below data_off (P5)")

        def before_ready(hf):
            h = hf.header
            t0 = time.perf_counter()
            try:
                scan.update(hf.mapping.alloc_init(h.meta_off, h.data_off,
                                                  (h.max_size - h.data_off) // layout.PAGE_SIZE))
            except CorruptHeapError as e:
                raise CorruptHeapError(path, e.field, str(e).split(": ", 2)[-1]) from None
            scan["scan_ms"] = (time.perf_counter() - t0) * 1e3

        hf = HeapFile.open(path, backend=backend, trace=trace, validate=validate, before_ready=before_ready)
        rep: OpenReport = hf.report
        report = RecoveryReport(was_clean=rep.was_clean, header_copy_restored=rep.header_copy_restored,
                                journal_records_replayed=rep.journal_records_replayed,
                                lanes_replayed=rep.lanes_replayed, lanes_discarded=rep.lanes_discarded,
                                entries_applied=rep.entries_applied, replay_ms=rep.recovery_ms, **scan)
        return cls(hf, report)

    # ------------------------------------------------------------ allocation
    def alloc(self, size: int) -> int:
        """Allocate an unpublished block. Durable at once, but leaked by a crash unless the
        caller publishes it; prefer `alloc_into` or a transaction."""
        return self.alloc_into(0, size)

    def alloc_into(self, dest_off: int, size: int) -> int:
        """Allocate `size` bytes and store the block's offset in the word at dest_off (the
        root, or a word inside the data area), atomically and durably. Grows the heap when
        it is full (HeapFullError at max_size)."""
        return self.mapping.alloc_into(dest_off, size)

    def free(self, off: int) -> None:
        """Free the block at off (durable on return; reusable only after this commit)."""
        self.mapping.free(off)

    def free_from(self, dest_off: int) -> None:
        """Free the block the word at dest_off points to and clear the word, atomically."""
        self.mapping.free_from(dest_off)

    def block_size(self, off: int) -> int:
        """Usable bytes of the allocated block at off."""
        return self.mapping.block_size(off)

    def transaction(self) -> Transaction:
        """`with heap.transaction() as tx:` -- allocs, frees and word sets committed at once."""
        return Transaction(self)

    # ------------------------------------------------------------ bytes
    def read(self, off: int, size: int) -> bytes:
        return self.mapping.read(off, size)

    def view(self, off: int, size: int) -> memoryview:
        """Zero-copy read-only view; valid while the heap is open."""
        return self.mapping.view(off, size)

    def write(self, off: int, data, *, persist: bool = True) -> None:
        """Copy data into the heap at off (inside a block you own) and, by default, persist it."""
        if off < self._data_off:
            raise ValueError(f"write at {off}: below the data area ({self._data_off}); metadata is "
                             "changed only through commits")
        (self.mapping.write_persist if persist else self.mapping.write)(off, data)

    def load8(self, off: int) -> int:
        return self.mapping.load8(off)

    @property
    def root(self) -> int:
        """The root word: the offset of the top structure of the layer above (0 = none)."""
        return self.mapping.load8(layout.ROOT_OFF)

    def set_root(self, value: int) -> None:
        """Set the root word durably (one redo commit)."""
        with self.transaction() as tx:
            tx.set(layout.ROOT_OFF, value)

    # ------------------------------------------------------------ growth
    def _grow_and_retry(self, op, size: int):
        while True:
            seen = self.mapping.size
            self._grow(seen, size)
            try:
                return op()
            except _native.NeedGrow:
                continue

    def _grow(self, seen_size: int, need_bytes: int) -> None:
        """Extend the file (its header first says so) unless another thread already did."""
        with self._grow_lock:
            cur = self.mapping.size
            if cur != seen_size:
                return
            max_size = self.file.header.max_size
            if need_bytes > max_size - self._data_off:
                raise HeapFullError(f"{self.file.path}: {need_bytes} bytes can never fit in a heap of at most "
                                    f"{max_size} bytes; nothing was changed")
            if cur >= max_size:
                raise HeapFullError(f"{self.file.path}: heap is full at its maximum size {max_size} bytes; "
                                    "nothing was changed (free objects or create a larger heap)")
            need = -(-(need_bytes + 8 * layout.PAGE_SIZE) // layout.PAGE_SIZE) * layout.PAGE_SIZE
            step = min(max_size - cur, max(need, min(cur, MAX_GROWTH_STEP)))
            while True:
                new = cur + step
                try:
                    self.mapping.grow(new)
                    break
                except HeapFullError as e:     # the file system is full: a smaller step may still fit
                    if step <= need:
                        raise HeapFullError(f"{self.file.path}: cannot grow to {new} bytes: the file system is "
                                            "full (ENOSPC); nothing was changed (free objects or make room "
                                            "on the disk)") from e
                    step = max(need, step // 2 // layout.PAGE_SIZE * layout.PAGE_SIZE)
                except PmemError as e:
                    raise HeapFullError(f"{self.file.path}: cannot grow to {new} bytes: {e}; "
                                        "nothing was changed") from e
            self.file.update_header(file_size=new)  # durable before any page past the old end is used
            self.mapping.alloc_add_pages(new)

    # ------------------------------------------------------------ stats
    def stats(self) -> dict:
        """Bytes used and free, per-class pages and occupancy, largest free span, fragmentation."""
        st, classes = self.mapping.alloc_stats()
        page = layout.PAGE_SIZE
        used = (st["run_pages"] + st["span_pages"]) * page
        table = _native.class_table()
        per_class = [
            {"class": i, "block_size": table[i][0], "runs": c["runs"], "pages": c["pages"],
             "blocks": c["blocks"], "live_blocks": c["live_blocks"],
             "occupancy": c["live_blocks"] / c["blocks"] if c["blocks"] else 0.0}
            for i, c in enumerate(classes) if c["runs"]]
        return {
            "file_size": self.mapping.size, "max_size": self.file.header.max_size,
            "page_size": page, "pages": st["page_count"],
            "bytes_used": used, "bytes_free": st["free_pages"] * page,
            "live_blocks": st["live_blocks"], "live_block_bytes": st["live_block_bytes"],
            "large_objects": st["spans"], "largest_free_span_bytes": st["largest_free_span_pages"] * page,
            "fragmentation": used / st["live_block_bytes"] if st["live_block_bytes"] else 0.0,
            "persist_count": self.mapping.persist_count, "classes": per_class,
        }

    # ------------------------------------------------------------ lifecycle
    @property
    def persist_count(self) -> int:
        return self.mapping.persist_count

    @property
    def closed(self) -> bool:
        return self.file.closed

    def close(self) -> None:
        self.file.close()

    def abandon(self) -> None:
        """Drop the heap without a clean close (tests: a simulated process crash)."""
        self.file.abandon()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return Path(self.file.path)


__all__ = ["Heap", "HeapLockedError", "RecoveryReport", "Transaction"]
