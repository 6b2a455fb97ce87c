"""The heap file: create, lock, validate, map, recover and close (FORMAT.md H1-H6, L1-L5).

`HeapFile` owns the file descriptor, the flock, the two header copies and the redo
lanes. Layers above (the allocator, the store) build on its `commit` and byte access.

Crash safety: create writes a complete heap under a temporary name and renames it
into place, so `path` never names a half-made heap. A header update writes copy A,
persists, then copy B, persists; open takes the newest copy whose CRC holds (H4).
Invariants: H1-H6 are checked here at open; L1-L5 by redo.c's recovery.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import time
import uuid as uuidlib
from pathlib import Path
from typing import Self

from allocator import _native, layout
from allocator.errors import (
    CorruptHeapError,
    ForeignFileError,
    HeapFullError,
    HeapLockedError,
    TruncatedHeapError,
    UnsupportedVersionError,
)
from allocator.layout import Header

DEFAULT_MAX_SIZE = 16 << 30
MIN_FILE_SIZE = layout.HEADER_B_OFF + layout.HEADER_SIZE


@dataclasses.dataclass
class OpenReport:
    """What open did before handing out the heap."""

    was_clean: bool                 # the previous holder closed it cleanly
    header_copy_restored: str | None  # "A" or "B" when one copy was torn or stale and is rewritten
    journal_records_replayed: int   # barrier journal records re-applied (FORMAT.md 7.11)
    lanes_replayed: int
    lanes_discarded: int
    entries_applied: int
    recovery_ms: float


def lock_holder_pid(path: str | os.PathLike) -> int | None:
    """The pid holding a flock on path, read from /proc/locks (None if unknown)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    by_inode = None
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[1:2] == ["->"]:
            continue
        pid, ident = parts[4], parts[5]
        if ident == dev:
            return int(pid)
        if ident.rsplit(":", 1)[-1] == str(st.st_ino):
            by_inode = int(pid)
    return by_inode


def _lock(fd: int, path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise HeapLockedError(path, lock_holder_pid(path)) from None
        raise


def validate_headers(path, raw_a: bytes, raw_b: bytes, actual_size: int) -> tuple[Header, str | None]:
    """Pick the header copy to trust; raise an error naming the bad field otherwise.

    Returns (header, restored) where restored names the copy ("A"/"B") that is torn,
    corrupt or stale and will be rewritten by the next header update.
    """
    if actual_size < MIN_FILE_SIZE:
        if raw_a[:8] != layout.MAGIC:
            raise ForeignFileError(path, "magic", f"not a pmstore heap (file is only {actual_size} bytes)")
        raise TruncatedHeapError(path, "file_size", f"file is {actual_size} bytes, smaller than any heap "
                                 f"({MIN_FILE_SIZE} bytes)")
    copies = {"A": Header.unpack_raw(raw_a), "B": Header.unpack_raw(raw_b)}
    if all(c["magic"] != layout.MAGIC for c in copies.values()):
        raise ForeignFileError(path, "magic", f"expected {layout.MAGIC!r}, found {copies['A']['magic']!r}: "
                               "not a pmstore heap")
    for c in copies.values():  # a whole-file version mismatch is reported before any checksum
        if c["magic"] == layout.MAGIC and c["crc_ok"] and c["format_version"] != layout.FORMAT_VERSION:
            older = c["format_version"] < layout.FORMAT_VERSION
            raise UnsupportedVersionError(path, "format_version", f"file has format {c['format_version']}, "
                                          f"this build reads format {layout.FORMAT_VERSION}: it was written by "
                                          f"{'an older' if older else 'a newer'} pmstore (FORMAT.md 9); open it "
                                          "with that build, or move it aside to start a new heap; nothing was "
                                          "changed")
    good = {k: c for k, c in copies.items() if c["magic"] == layout.MAGIC and c["crc_ok"]}
    if not good:
        raise CorruptHeapError(path, "crc32c", "both header copies fail their checksum (H3)")
    name = max(good, key=lambda k: good[k]["generation"])
    f = good[name]
    other = "B" if name == "A" else "A"
    restored = None if other in good and good[other]["generation"] == f["generation"] else other

    def bad(field, msg):
        raise CorruptHeapError(path, field, f"{msg} (H2)")

    if f["header_size"] != layout.HEADER_SIZE:
        bad("header_size", f"is {f['header_size']}, expected {layout.HEADER_SIZE}")
    if f["page_size"] != layout.PAGE_SIZE:
        bad("page_size", f"is {f['page_size']}, expected {layout.PAGE_SIZE}")
    if not 1 <= f["lane_count"] <= layout.MAX_LANE_COUNT:
        bad("lane_count", f"is {f['lane_count']}, expected 1..{layout.MAX_LANE_COUNT}")
    if f["lane_size"] < 4096 or f["lane_size"] % 4096:
        bad("lane_size", f"is {f['lane_size']}, expected a positive multiple of 4096")
    if f["root_off"] != layout.ROOT_OFF:
        bad("root_off", f"is {f['root_off']}, expected {layout.ROOT_OFF}")
    if f["redo_off"] != layout.REDO_OFF:
        bad("redo_off", f"is {f['redo_off']}, expected {layout.REDO_OFF}")
    if not layout.journal_size_ok(f["journal_size"]):
        bad("journal_size", f"is {f['journal_size']}, expected 0 or a multiple of 4096 of at least 8192")
    if f["meta_off"] != layout.meta_off_for(f["lane_count"], f["lane_size"], f["journal_size"]):
        bad("meta_off", f"is {f['meta_off']}, expected the end of the redo lanes and the journal")
    if f["data_off"] < f["meta_off"] or f["data_off"] % layout.PAGE_SIZE:
        bad("data_off", f"is {f['data_off']}, expected a page-aligned offset past meta_off")
    if f["file_size"] < f["data_off"] or f["file_size"] % layout.OS_PAGE_SIZE:
        bad("file_size", f"is {f['file_size']}, expected an OS-page multiple of at least data_off")
    if f["max_size"] < f["file_size"]:
        bad("max_size", f"is {f['max_size']}, smaller than file_size {f['file_size']}")
    if f["clean_shutdown"] not in (0, 1):
        bad("clean_shutdown", f"is {f['clean_shutdown']}, expected 0 or 1")
    if actual_size < f["file_size"]:
        raise TruncatedHeapError(path, "file_size", f"header says {f['file_size']} bytes, "
                                 f"the file has {actual_size} (H5)")
    return Header.from_fields(f), restored


class HeapFile:
    """An open heap file: mapping, header, redo lanes. Use `create` or `open`."""

    def __init__(self, path, fd: int, mapping: _native.Mapping, header: Header, report: OpenReport):
        self.path = str(path)
        self._fd = fd
        self.mapping = mapping
        self.header = header
        self.report = report
        self._stale_copy = report.header_copy_restored  # H4: written first by the next update

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path, *, size: int, max_size: int | None = None,
               lane_count: int = layout.DEFAULT_LANE_COUNT, lane_size: int = layout.DEFAULT_LANE_SIZE,
               meta_size: int = 0, class_table_id: int = 0, journal_size: int = 0, backend: str = "auto",
               trace: bool = False) -> HeapFile:
        """Create a new heap of `size` bytes (rounded up to whole pages) that may grow to max_size.
        `journal_size` bytes after the lanes hold the barrier journal (0: none; FORMAT.md 4.8)."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(errno.EEXIST, f"{path}: already exists; open it or remove it first")
        if not 1 <= lane_count <= layout.MAX_LANE_COUNT:
            raise ValueError(f"lane_count must be 1..{layout.MAX_LANE_COUNT}, not {lane_count}")
        if lane_size < 4096 or lane_size % 4096:
            raise ValueError(f"lane_size must be a positive multiple of 4096, not {lane_size}")
        layout.check_journal_size(journal_size)
        meta_off = layout.meta_off_for(lane_count, lane_size, journal_size)
        data_off = layout.data_off_for(meta_off, meta_size)
        file_size = max(-(-size // layout.PAGE_SIZE) * layout.PAGE_SIZE, data_off + layout.PAGE_SIZE)
        max_size = max(file_size, DEFAULT_MAX_SIZE if max_size is None else max_size)
        if max_size % layout.PAGE_SIZE:
            raise ValueError(f"max_size must be a multiple of {layout.PAGE_SIZE}, not {max_size}")
        if file_size > max_size:
            raise ValueError(f"size {file_size} exceeds max_size {max_size}")
        header = Header(uuid=uuidlib.uuid4().bytes, generation=1, file_size=file_size, max_size=max_size,
                        lane_count=lane_count, lane_size=lane_size, meta_off=meta_off, data_off=data_off,
                        created_ns=time.time_ns(), clean_shutdown=1, class_table_id=class_table_id,
                        journal_size=journal_size)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, file_size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise HeapFullError(f"{path}: no space for a {file_size}-byte heap on this file system") from e
                raise
            m = _native.Mapping(fd, file_size, file_size, "none" if backend == "none" else "msync")
            try:
                raw = header.pack()
                m.write(layout.HEADER_A_OFF, raw)
                m.write(layout.HEADER_B_OFF, raw)
            finally:
                m.close()
            if backend != "none":
                os.fsync(fd)            # durable: the complete new heap, before its name appears
            os.rename(tmp, path)
            if backend != "none":
                dfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)       # durable: the name
                finally:
                    os.close(dfd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return cls.open(path, backend=backend, trace=trace)

    @classmethod
    def open(cls, path, *, backend: str = "auto", trace: bool = False, validate=None,
             before_ready=None) -> HeapFile:
        """Open, lock, validate, map and recover an existing heap.

        Layers above pass `validate(header)` (checks of their own header fields, before
        anything is mapped) and `before_ready(heapfile)` (their recovery scan, after the
        redo replay). Either may raise to refuse the file; the header is rewritten (clean
        flag cleared) only once both accepted it, so a refused file keeps its bytes.
        """
        if backend not in _native.BACKENDS:
            raise ValueError(f"backend must be one of {sorted(_native.BACKENDS)}, not {backend!r}")
        path = Path(path)
        fd = os.open(path, os.O_RDWR)
        try:
            _lock(fd, path)
            actual = os.fstat(fd).st_size
            header, restored = validate_headers(path, os.pread(fd, layout.HEADER_SIZE, layout.HEADER_A_OFF),
                                                os.pread(fd, layout.HEADER_SIZE, layout.HEADER_B_OFF), actual)
            if validate is not None:
                validate(header)
            mapping = _native.Mapping(fd, header.file_size, header.max_size, backend)
        except BaseException:
            os.close(fd)
            raise
        try:
            if trace:
                mapping.trace_start()
            t0 = time.perf_counter()
            mapping.journal_init(layout.journal_off_for(header.lane_count, header.lane_size), header.journal_size)
            mapping.redo_init(header.redo_off, header.lane_count, header.lane_size)
            try:
                journaled = mapping.journal_recover()   # first: it gives the lanes their barriers' bytes
                rec = mapping.redo_recover()
            except CorruptHeapError as e:
                raise CorruptHeapError(path, e.field, str(e).split(": ", 2)[-1]) from None
            report = OpenReport(was_clean=bool(header.clean_shutdown), header_copy_restored=restored,
                                recovery_ms=(time.perf_counter() - t0) * 1e3,
                                journal_records_replayed=journaled, **rec)
            hf = cls(path, fd, mapping, header, report)
            if before_ready is not None:
                before_ready(hf)
            hf.update_header(clean_shutdown=0)
        except BaseException:
            mapping.close()
            os.close(fd)
            raise
        return hf

    # ---------------------------------------------------------------- header
    def update_header(self, **changes) -> None:
        """Rewrite both header copies with `changes` (H4).

        Crash safety: one copy, then a barrier, then the other, then a barrier, so a valid
        copy exists at every instant. The copy open found torn or stale is written first:
        overwriting the only good copy first would leave none if that write tore.
        """
        new = self.header.replace(generation=self.header.generation + 1, **changes)
        raw = new.pack()
        first, second = ((layout.HEADER_B_OFF, layout.HEADER_A_OFF) if self._stale_copy == "B"
                         else (layout.HEADER_A_OFF, layout.HEADER_B_OFF))
        self.mapping.write_persist(first, raw)   # durable: the first copy; the second still holds a valid header
        self.mapping.write_persist(second, raw)  # durable: the second copy; the update is complete
        self._stale_copy = None
        self.header = new

    # ---------------------------------------------------------------- redo
    @property
    def redo_capacity(self) -> int:
        return self.mapping.redo_capacity

    def commit(self, entries) -> None:
        """Apply [(op, off, value), ...] atomically and durably (one redo commit, one C call)."""
        packed = b"".join(layout.pack_redo_entry(op, off, value) for op, off, value in entries)
        self.mapping.redo_commit(packed, len(packed) // layout.REDO_ENTRY_SIZE)

    @property
    def root(self) -> int:
        """The root word: an offset the layers above publish their top structure in."""
        return self.mapping.load8(layout.ROOT_OFF)

    # ---------------------------------------------------------------- lifecycle
    @property
    def closed(self) -> bool:
        return self.mapping.closed

    def close(self) -> None:
        """Mark the heap clean, unmap and unlock. Idempotent."""
        if self.mapping.closed:
            return
        try:
            self.mark_clean()
        finally:
            self.mapping.close()
            os.close(self._fd)  # releases the flock

    def mark_clean(self) -> None:
        """The close path's writes: retire the thread heaps (no thread's exit writes after
        this), settle the last commits' words and empty the lanes (FORMAT.md 7.1), write the
        whole heap back and retire the journal (7.11), then mark the header clean."""
        self.mapping.alloc_retire()
        self.mapping.redo_quiesce()
        self.mapping.journal_checkpoint()
        self.update_header(clean_shutdown=1)

    def abandon(self) -> None:
        """Drop the mapping and the lock without marking the heap clean (tests: a simulated crash)."""
        if not self.mapping.closed:
            self.mapping.close()
            os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.header.file_size} bytes, backend {self.mapping.backend}"
        return f"<HeapFile {self.path} {state}>"
