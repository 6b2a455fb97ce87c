"""The one module that talks to C: loads the cffi extension, turns codes into exceptions.

Every other module calls the functions here with offsets and Python buffers; raw
pointers never leave this file (zero-copy views are memoryviews over the mapping).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from allocator import errors

try:
    from allocator import _fast
    from allocator._pmstore_c import ffi, lib
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "pmstore's C core is not built: run `make install` (or `pip install -e .`)"
    ) from exc


def address(cdata) -> int:
    """A pointer as an int, for allocator._fast's calls."""
    return int(ffi.cast("uintptr_t", cdata))


# _fast calls the cffi module's own functions (one allocator, one set of thread-locals).
_fast.bind({f: address(ffi.addressof(lib, f)) for f in _fast.FUNCTIONS})

BACKENDS = {"auto": lib.PM_BACKEND_AUTO, "msync": lib.PM_BACKEND_MSYNC,
            "flush": lib.PM_BACKEND_FLUSH, "none": lib.PM_BACKEND_NONE,
            "private": lib.PM_BACKEND_PRIVATE}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

TRACE_WRITE = lib.PM_TRACE_WRITE
TRACE_FLUSH = lib.PM_TRACE_FLUSH
TRACE_FENCE = lib.PM_TRACE_FENCE
TRACE_MARK = lib.PM_TRACE_MARK
TRACE_GROW = lib.PM_TRACE_GROW


class NeedGrow(Exception):
    """Internal: the C allocator found no free pages; the caller grows the heap and retries."""


def check(rc: int, what: str) -> None:
    """Raise the exception matching a negative PM_E* code."""
    if rc >= 0:
        return
    if rc == lib.PM_E_NEED_GROW:
        raise NeedGrow(what)
    if rc == lib.PM_E_NOT_ALLOCATED:
        raise errors.NotAllocatedError(f"{what}: not the start of an allocated block (never allocated, "
                                       "or already freed)")
    if rc == lib.PM_E_NOSPC:
        raise errors.HeapFullError(f"{what}: the file system is full (ENOSPC); nothing was changed")
    if rc in (lib.PM_E_IO, lib.PM_E_NOMEM):
        e = lib.pm_errno() or errno.ENOMEM
        raise errors.PmemError(e, f"{what}: {os.strerror(e)}")
    if rc == lib.PM_E_RANGE:
        raise ValueError(f"{what}: offset or size outside the heap, or misaligned")
    if rc == lib.PM_E_TOO_BIG:
        raise errors.TransactionTooLargeError(f"{what}: more entries than a redo lane holds")
    if rc == lib.PM_E_BAD_OP:
        raise ValueError(f"{what}: unknown redo op")
    if rc == lib.PM_E_ARG:
        raise ValueError(f"{what}: invalid argument")
    raise errors.PmstoreError(f"{what}: error code {rc}")


def _off(off: int, what: str) -> int:
    if off < 0:
        raise ValueError(f"{what}: negative offset {off}")
    return off


# The hot pair keeps the GIL where a barrier is a CPU instruction, and releases it where it
# is an msync (csrc/cpython/fastcall.c: a call is shorter than a GIL hand-over).
GIL_HOLDING_BACKENDS = frozenset({"flush", "none", "private"})


class Mapping:
    """A mapped heap file: the pm_heap handle and the calls on it, by offset."""

    def __init__(self, fd: int, map_size: int, reserve_size: int, backend: str):
        out = ffi.new("pm_heap **")
        check(lib.pm_heap_map(fd, map_size, reserve_size, BACKENDS[backend], out), "map heap")
        self._h = out[0]
        self._base = None
        self._redo_capacity = 0
        # The hot pair, bound C methods: alloc_into(dest_off, size) -> block offset and
        # free_from(dest_off). A failed call lands in _hot_failed, which raises.
        self._hot = _fast.Hot(address(self._h), self.backend not in GIL_HOLDING_BACKENDS,
                              self._hot_failed)
        self.alloc_into, self.free_from = self._hot.alloc_into, self._hot.free_from
        # and alloc(size) (published nowhere) and free(off), the same way
        self.alloc, self.free = self._hot.alloc, self._hot.free
        # Set by the Heap: grow_and_retry(retry, size) grows the file and calls retry, on PM_E_NEED_GROW.
        self.grow_and_retry = None

    def close(self) -> None:
        if self._h is not None:
            self._hot.close()
            lib.pm_heap_unmap(self._h)
            self._h = None
            self._base = None

    @property
    def closed(self) -> bool:
        return self._h is None

    @property
    def handle(self):
        """The pm_heap * cdata, for callers that drive the C functions bare (bench/alloc.py)."""
        return self._handle()

    def _handle(self):
        if self._h is None:
            raise errors.HeapClosedError("heap is closed")
        return self._h

    # -- geometry and counters
    @property
    def size(self) -> int:
        return lib.pm_heap_size(self._handle())

    @property
    def backend(self) -> str:
        return BACKEND_NAMES[lib.pm_heap_backend(self._handle())]

    @property
    def is_dax(self) -> bool:
        return bool(lib.pm_heap_is_dax(self._handle()))

    @property
    def persist_count(self) -> int:
        return lib.pm_persist_count(self._handle())

    def grow(self, new_size: int) -> None:
        check(lib.pm_heap_grow(self._handle(), new_size), f"grow heap to {new_size} bytes")

    # -- bytes
    def write(self, off: int, data) -> None:
        """Copy data into the mapping; nothing made durable (write_persist does)."""
        rc = self._hot.write(_off(off, "offset"), data)
        if rc:
            self._handle()
            check(rc, f"write {memoryview(data).nbytes} bytes at {off}")

    def write_persist(self, off: int, data) -> None:
        buf = ffi.from_buffer(data)
        check(lib.pm_write_persist(self._handle(), _off(off, "offset"), buf, len(buf)), f"write {len(buf)} bytes at {off}")

    def persist(self, off: int, size: int) -> None:
        check(lib.pm_persist(self._handle(), _off(off, "offset"), size), f"persist {size} bytes at {off}")

    def store8(self, off: int, value: int) -> None:
        check(lib.pm_store8(self._handle(), _off(off, "offset"), value), f"store8 at {off}")

    def load8(self, off: int) -> int:
        v = self._hot.load8(off)
        if v is None:
            self._handle()
            raise ValueError(f"load8 at {off}: offset outside the heap or misaligned")
        return v

    def read(self, off: int, size: int) -> bytes:
        r = self._hot.read(_off(off, "offset"), size)
        if r.__class__ is bytes:
            return r
        self._handle()
        raise ValueError(f"read of {size} bytes at {off}: outside the heap")

    def view(self, off: int, size: int) -> memoryview:
        """A read-only zero-copy view of [off, off+size); valid until close."""
        r = self._hot.view(_off(off, "offset"), size)
        if r.__class__ is memoryview:
            return r
        self._handle()
        raise ValueError(f"view of {size} bytes at {off}: outside the heap")

    # -- redo
    def journal_init(self, journal_off: int, journal_size: int) -> None:
        check(lib.pm_journal_init(self._handle(), journal_off, journal_size), "init the journal")

    def journal_recover(self) -> int:
        """Replay the journal's records of the current epoch (FORMAT.md 7.11); returns how many."""
        rep = ffi.new("struct pm_journal_report *")
        rc = lib.pm_journal_recover(self._handle(), rep)
        if rc == lib.PM_E_CORRUPT:
            raise errors.CorruptHeapError(None, "journal", f"journal record at offset {rep.bad_off} passes its CRC "
                                   "but names impossible ranges (J2); nothing was applied")
        check(rc, "replay the journal")
        return rep.records

    def journal_checkpoint(self) -> None:
        check(lib.pm_journal_checkpoint(self._handle()), "checkpoint the journal")

    def journal_stats(self) -> dict:
        st = ffi.new("struct pm_journal_stats *")
        lib.pm_journal_stats(self._handle(), st)
        return {"in_use": bool(st.in_use), "records": st.records, "bytes": st.bytes,
                "checkpoints": st.checkpoints, "epoch": st.epoch, "dirty_pages": st.dirty_pages}

    def redo_init(self, redo_off: int, lane_count: int, lane_size: int) -> None:
        check(lib.pm_redo_init(self._handle(), redo_off, lane_count, lane_size), "init redo lanes")

    @property
    def redo_capacity(self) -> int:
        """Entries one commit may hold; fixed by redo_init (kept: every transaction asks, and a
        cffi call would hand the GIL over)."""
        if not self._redo_capacity:
            self._redo_capacity = lib.pm_redo_capacity(self._handle())
        return self._redo_capacity

    def alloc_retire(self) -> None:
        """Close's first step: no thread heap is used again, so no thread's exit writes to
        the heap after close's last checkpoint (alloc.c, pm_alloc_retire)."""
        lib.pm_alloc_retire(self._handle())

    def redo_quiesce(self) -> None:
        """Make every commit's applied words durable and every lane empty (before close)."""
        check(lib.pm_redo_quiesce(self._handle()), "quiesce redo lanes")

    def redo_commit(self, packed: bytes | bytearray, count: int) -> None:
        """Commit `count` packed pmd_redo_entry records (16 bytes each), one C call."""
        rc = lib.pm_redo_commit(self._handle(), ffi.from_buffer("struct pmd_redo_entry[]", packed), count)
        if rc:
            check(rc, f"redo commit of {count} entries")

    # -- allocator (one C call per operation; the message is built only on failure)
    def alloc_init(self, meta_off: int, data_off: int, page_max: int) -> dict:
        rep = ffi.new("struct pm_scan_report *")
        rc = lib.pm_alloc_init(self._handle(), meta_off, data_off, page_max, rep)
        if rc == lib.PM_E_CORRUPT:
            inv = {1: "P1", 2: "P2"}.get(rep.bad_invariant, "P?")
            raise errors.CorruptHeapError(
                "", f"descriptor[{rep.bad_page}]",
                f"page {rep.bad_page} breaks {inv} (" + ("impossible descriptor" if inv == "P1" else
                                                         "bitmap bit set beyond the run's capacity") + ")")
        check(rc, "allocator scan")
        return {"pages_scanned": rep.pages_scanned, "runs": rep.runs, "spans": rep.spans,
                "live_blocks": rep.live_blocks}

    def alloc_add_pages(self, new_size: int) -> None:
        check(lib.pm_alloc_add_pages(self._handle(), new_size), "add grown pages")

    def _hot_failed(self, op: int, dest_off, size, rc: int):
        """The hot pair's slow path: raise the error, or grow the heap and retry."""
        self._handle()
        if op == _fast.OP_ALLOC:    # alloc(size): alloc_into with no word
            op, dest_off = _fast.OP_ALLOC_INTO, 0
        if op == _fast.OP_ALLOC_INTO:
            if rc == lib.PM_E_NEED_GROW and self.grow_and_retry is not None:
                return self.grow_and_retry(lambda: self._alloc_into_slow(dest_off, size), size)
            self._alloc_into_failed(dest_off, size, rc)
        if op == _fast.OP_FREE:     # free(off): dest_off is the block's offset
            if not isinstance(dest_off, int):
                raise TypeError(f"free block {dest_off!r}: the offset must be an int")
            if dest_off < 0:
                raise errors.NotAllocatedError(f"free block {dest_off}: negative offset")
            check(rc, f"free block {dest_off}")
        if not isinstance(dest_off, int):
            raise TypeError(f"free_from word {dest_off!r}: the offset must be an int")
        if dest_off < 0:
            raise ValueError(f"free_from word {dest_off}: negative offset")
        check(rc, f"free the block published at word {dest_off}")

    def _alloc_into_slow(self, dest_off: int, size: int) -> int:
        """alloc_into raising NeedGrow: the retry after growth."""
        off = lib.pm_alloc_into(self._handle(), dest_off, size)
        if off < 0:
            self._alloc_into_failed(dest_off, size, off)
        return off

    def _alloc_into_failed(self, dest_off, size, rc: int) -> None:
        if not isinstance(dest_off, int) or not isinstance(size, int):
            raise TypeError(f"allocate {size!r} bytes into word {dest_off!r}: both must be ints")
        if size <= 0 or dest_off < 0:
            raise ValueError(f"allocate {size} bytes into word {dest_off}: size must be positive, "
                             "the word offset non-negative")
        check(rc, f"allocate {size} bytes" + (f" into word {dest_off}" if dest_off else ""))

    def block_size(self, off: int) -> int:
        if off < 0:
            raise errors.NotAllocatedError(f"size of block {off}: negative offset")
        n = lib.pm_block_size(self._handle(), off)
        check(n, f"size of block {off}")
        return n

    # A transaction's calls go through allocator._fast (the hot pair's GIL policy). Slots
    # (struct pm_tx_slot, 24 bytes, its block's offset first) and entries travel as bytes.
    def tx_reserve(self, size: int) -> tuple[int, bytes, bytes]:
        """Reserve a block for a transaction: (offset, slot, packed entries)."""
        if size <= 0:
            raise ValueError(f"allocate {size} bytes: size must be positive")
        r = self._hot.tx_reserve(size)
        if type(r) is int:
            self._handle()
            check(r, f"allocate {size} bytes")
        return int.from_bytes(r[0][:8], "little"), r[0], r[1]

    def tx_locate(self, off: int) -> tuple[bytes, bytes]:
        """The slot and packed entries that free the block at off in a transaction."""
        if off < 0:
            raise errors.NotAllocatedError(f"free block {off}: negative offset")
        r = self._hot.tx_locate(off)
        if type(r) is int:
            self._handle()
            check(r, f"free block {off}")
        return r

    def tx_commit(self, packed: bytes, data: bytes, reserved: bytes, freed: bytes) -> None:
        """Commit: packed entries, data as (off, size) pairs of le64, slots as tx_reserve and
        tx_locate gave them, concatenated."""
        rc = self._hot.tx_commit(packed, data, reserved, freed)
        if rc:
            self._handle()
            check(rc, f"commit a transaction of {len(packed) // 16} entries")

    def tx_abort(self, reserved: bytes) -> None:
        if reserved:
            self._hot.tx_abort(reserved)

    def alloc_stats(self) -> tuple[dict, list[dict]]:
        st = ffi.new("struct pm_alloc_stats *")
        cls = ffi.new("struct pm_class_stats[]", lib.PMD_CLASS_COUNT)
        check(lib.pm_alloc_stats(self._handle(), st, cls), "allocator stats")
        fields = [f for f, _ in ffi.typeof("struct pm_alloc_stats").fields]
        cfields = [f for f, _ in ffi.typeof("struct pm_class_stats").fields]
        return ({f: getattr(st, f) for f in fields},
                [{f: getattr(cls[i], f) for f in cfields} for i in range(lib.PMD_CLASS_COUNT)])

    def redo_recover(self) -> dict:
        rep = ffi.new("struct pm_recover_report *")
        rc = lib.pm_redo_recover(self._handle(), rep)
        if rc == lib.PM_E_CORRUPT:
            raise errors.CorruptHeapError(
                "", f"lane[{rep.lanes_replayed}]",
                "a sealed redo lane holds an entry outside the heap or with an unknown op (L2); "
                "nothing was applied")
        check(rc, "redo recovery")
        return {"lanes_replayed": rep.lanes_replayed, "lanes_discarded": rep.lanes_discarded,
                "entries_applied": rep.entries_applied}

    # -- crash simulator trace
    def trace_start(self) -> None:
        check(lib.pm_trace_start(self._handle()), "start trace")

    def trace_mark(self, mark_id: int) -> None:
        check(lib.pm_trace_mark(self._handle(), mark_id), "trace mark")

    def set_fence_hook(self, fn: Callable[[], None] | None) -> None:
        """fn() runs after each traced fence, on the thread that issued it, once the
        journal's lock (if any) is released; it may block that thread: crash workloads
        stage interleavings with it. None removes it."""
        if fn is None:
            lib.pm_trace_set_fence_hook(self._handle(), ffi.NULL, ffi.NULL)
            self._fence_hook = None
            return
        cb = ffi.callback("void(void *)", lambda _arg: fn())
        lib.pm_trace_set_fence_hook(self._handle(), cb, ffi.NULL)
        self._fence_hook = cb     # alive while C may call it

    def trace_take(self) -> bytes:
        h = self._handle()
        n = lib.pm_trace_len(h)
        buf = bytearray(n)
        got = lib.pm_trace_take(h, ffi.from_buffer(buf), n)
        return bytes(buf[:got])


def set_thread_index(idx: int) -> None:
    """Give the calling thread the number that picks its home lanes, before its first
    commit (the crash tools: a workload takes the same lanes in any process)."""
    lib.pm_thread_set_idx(idx)


def class_table() -> list[tuple[int, int, int]]:
    """(block size, pages per run, blocks per run) of every size class."""
    return [(lib.pm_class_size(i), lib.pm_class_pages(i), lib.pm_class_capacity(i))
            for i in range(lib.PMD_CLASS_COUNT)]


def crc32c(data, crc: int = 0) -> int:
    buf = ffi.from_buffer(data)
    return lib.pm_crc32c(crc, buf, len(buf))


def crc32c_sw(data, crc: int = 0) -> int:
    buf = ffi.from_buffer(data)
    return lib.pm_crc32c_sw(crc, buf, len(buf))


def crc32c_is_hw() -> bool:
    return bool(lib.pm_crc32c_is_hw())


def flush_kind() -> str:
    return ffi.string(lib.pm_flush_kind()).decode()


def layout_offsets(struct: str) -> dict[str, int]:
    """Field offsets of a C on-disk struct, for the FORMAT.md agreement test."""
    t = ffi.typeof(f"struct {struct}")
    return {name: ffi.offsetof(t, name) for name, _ in t.fields}


def layout_constant(name: str) -> int:
    return getattr(lib, name)
