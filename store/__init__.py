"""pmstore's object store: keyed objects with metadata and checksums in a persistent heap."""

from store.errors import (
                          CorruptObjectError,
                          HeapFullError,
                          InvalidKeyError,
                          NoSuchKeyError,
                          ObjectTooLargeError,
                          PreconditionFailedError,
                          StoreError,
)
from store.store import ObjectInfo, Store

__all__ = ["CorruptObjectError", "HeapFullError", "InvalidKeyError", "NoSuchKeyError", "ObjectInfo",
           "ObjectTooLargeError", "PreconditionFailedError", "Store", "StoreError"]
