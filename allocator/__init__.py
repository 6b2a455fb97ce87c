"""pmstore's allocator layer: pmem layer, heap file, redo log and the size-class
allocator. Imports go one way: service -> store -> allocator."""

from allocator.errors import (
                              CorruptHeapError,
                              ForeignFileError,
                              HeapClosedError,
                              HeapFormatError,
                              HeapFullError,
                              HeapLockedError,
                              NotAllocatedError,
                              PmemError,
                              PmstoreError,
                              TransactionTooLargeError,
                              TruncatedHeapError,
                              UnsupportedVersionError,
)
from allocator.heap import Heap, RecoveryReport
from allocator.heapfile import HeapFile, OpenReport
from allocator.transaction import Transaction

__all__ = [
                              "CorruptHeapError",
                              "ForeignFileError",
                              "Heap",
                              "HeapClosedError",
                              "HeapFile",
                              "HeapFormatError",
                              "HeapFullError",
                              "HeapLockedError",
                              "NotAllocatedError",
                              "OpenReport",
                              "PmemError",
                              "PmstoreError",
                              "RecoveryReport",
                              "Transaction",
                              "TransactionTooLargeError",
                              "TruncatedHeapError",
                              "UnsupportedVersionError",
]
