"""Exceptions of the object store; every message names the key or limit involved."""

from allocator.errors import HeapFullError, PmstoreError

__all__ = ["CorruptObjectError", "HeapFullError", "InvalidKeyError", "NoSuchKeyError", "ObjectTooLargeError",
           "PreconditionFailedError", "StoreError"]


class StoreError(PmstoreError):
    """Base of the store's own errors."""


class InvalidKeyError(StoreError, ValueError):
    """A key that is not 1..1024 bytes of UTF-8 without control characters."""


class ObjectTooLargeError(StoreError, ValueError):
    """A value larger than the store's max_object_size."""


class PreconditionFailedError(StoreError):
    """if_match / if_none_match did not hold; nothing was changed."""


class NoSuchKeyError(StoreError, KeyError):
    """No object has this key."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "no such key"


class CorruptObjectError(StoreError):
    """A stored value fails its CRC32C: the bytes are not returned."""
