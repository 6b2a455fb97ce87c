"""Exceptions raised by the allocator layer; every message names what is wrong."""


class PmstoreError(Exception):
    """Base of every pmstore error."""


class HeapFormatError(PmstoreError):
    """The file is not a heap this build can open; `field` names the offending field."""

    def __init__(self, path, field: str, message: str):
        self.path = str(path)
        self.field = field
        super().__init__(f"{self.path}: {field}: {message}")


class ForeignFileError(HeapFormatError):
    """The file is not a pmstore heap at all (bad magic)."""


class TruncatedHeapError(HeapFormatError):
    """The file is shorter than its header says."""


class CorruptHeapError(HeapFormatError):
    """A pmstore heap whose metadata fails a checksum or an invariant."""


class UnsupportedVersionError(HeapFormatError):
    """A pmstore heap written by another format version or size-class table."""


class HeapLockedError(PmstoreError):
    """Another process (or another handle in this one) has the heap open."""

    def __init__(self, path, pid: int | None):
        self.path = str(path)
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{self.path}: heap is locked by {holder}; close it there first")


class HeapFullError(PmstoreError):
    """The heap reached its maximum size (or the disk is full); nothing was changed."""


class TransactionTooLargeError(PmstoreError):
    """A redo commit holds more entries than one lane can."""


class PmemError(PmstoreError, OSError):
    """A system call of the pmem layer failed."""


class HeapClosedError(PmstoreError):
    """The heap handle was closed."""


class NotAllocatedError(PmstoreError, ValueError):
    """An offset that is not the start of an allocated block (never allocated, or freed)."""
