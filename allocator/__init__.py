"""pmstore's allocator layer: pmem layer, heap file, redo log (and, with the allocator
issue, the size-class allocator). Imports go one way: service -> store -> allocator."""

from allocator.errors import (
                              CorruptHeapError,
                              ForeignFileError,
                              HeapClosedError,
                              HeapFormatError,
                              HeapFullError,
                              HeapLockedError,
                              PmemError,
                              PmstoreError,
                              TransactionTooLargeError,
                              TruncatedHeapError,
                              UnsupportedVersionError,
)
from allocator.heapfile import HeapFile, OpenReport

__all__ = [
    "CorruptHeapError", "ForeignFileError", "HeapClosedError", "HeapFile", "HeapFormatError",
    "HeapFullError", "HeapLockedError", "OpenReport", "PmemError", "PmstoreError",
    "TransactionTooLargeError", "TruncatedHeapError", "UnsupportedVersionError",
]
