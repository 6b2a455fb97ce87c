"""The object store: keyed objects with metadata and checksums in a persistent heap.

    with Store.open("data/pmstore.heap") as s:
        s.put("photos/cat.jpg", data, content_type="image/jpeg")
        value, info = s.get("photos/cat.jpg")

The index (a skip list of object records, FORMAT.md 4.6-4.7) lives in the heap; a DRAM
hash rebuilt at open serves point lookups. Crash safety: every put and delete is one
redo commit (FORMAT.md 7.9) -- after a crash a key holds its old object or its new one.
Durability "sync" (default): put and delete return once durable; "os": the page cache
only (survives a process crash, not a power loss).
Thread-safe: readers take no lock and copy values with the GIL released; writers are
serialised inside the index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from pathlib import Path
from typing import NamedTuple, Self

from allocator import Heap
from allocator._native import NeedGrow, crc32c
from store import _index
from store.batch import Batch, GroupCommitter
from store.errors import InvalidKeyError, NoSuchKeyError, ObjectTooLargeError

KEY_MAX_SIZE = 1024
DEFAULT_MAX_OBJECT_SIZE = 64 << 20
DURABILITY_BACKENDS = {"sync": "auto", "os": "none"}
# Writers are serialised in the index, so few lanes suffice; large lanes let one commit
# carry a whole batch (about 8 entries per operation: 1000 operations fit).
STORE_LANE_COUNT = 4
STORE_LANE_SIZE = 256 << 10
# The barrier journal (FORMAT.md 7.11): on a file, a commit appends to it instead of
# writing back every page it touched. A quarter of the initial size, 64 KiB to 16 MiB.
STORE_JOURNAL_MIN_SIZE = 64 << 10
STORE_JOURNAL_MAX_SIZE = 16 << 20
_new_info = tuple.__new__     # ObjectInfo without NamedTuple's Python-level __new__ (hot path)
_md5 = hashlib.md5
_NO_COND = (_index.COND_NONE, None)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class ObjectInfo(NamedTuple):
    key: str
    size: int               # bytes
    etag: str               # hex MD5 of the value
    content_type: str | None
    last_modified: int      # ns since the Unix epoch
    checksum: int           # CRC32C of the value


# allocator._fast builds ObjectInfo from its fields in place, untracked by the GC, which
# needs instances without a __dict__ (fastcall.c, make_info_of)
assert ObjectInfo.__dictoffset__ == 0
_make_info = ObjectInfo


def encode_key(key: str | bytes) -> bytes:
    """The key's bytes, or InvalidKeyError: 1..1024 bytes of UTF-8, no C0 control or DEL."""
    if type(key) is str and key.isprintable():      # fast path: printable excludes C0 and DEL
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raw = b""
        if 0 < len(raw) <= KEY_MAX_SIZE:
            return raw
    return _encode_key_generic(key)


def _encode_key_generic(key: str | bytes) -> bytes:
    """encode_key's slow path: every rule, with the message naming the broken one."""
    try:
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    except UnicodeEncodeError:
        raise InvalidKeyError(f"key {key[:64]!r} cannot be encoded as UTF-8") from None
    if not 1 <= len(raw) <= KEY_MAX_SIZE:
        raise InvalidKeyError(f"key must be 1..{KEY_MAX_SIZE} bytes of UTF-8, not {len(raw)} bytes")
    if _CONTROL.search(raw):
        raise InvalidKeyError(f"key {raw[:64]!r} contains a control character (0x00-0x1F or 0x7F)")
    if not isinstance(key, str):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKeyError(f"key {raw[:64]!r} is not valid UTF-8") from None
    return raw


def _etag_bytes(etag: str) -> bytes:
    e = etag.strip().strip('"')
    try:
        raw = bytes.fromhex(e)
    except ValueError:
        raw = b""
    return raw if len(raw) == 16 else b"\xff" * 16   # never matches a stored MD5... almost surely


class Store:
    """A keyed object store in one heap file. Use `Store.open`."""

    def __init__(self, heap: Heap, index: _index.Index, *, durability: str,
                 max_object_size: int, group_commit: bool | None = None):
        self.heap = heap
        self._index = index
        self.durability = durability
        self.get_value = index.value_reader(encode_key)     # the hot reads, one frame each
        self.get = index.info_reader(encode_key, _make_info, Store.get.__get__(self))
        self.max_object_size = max_object_size
        self.report = {**dataclasses.asdict(heap.report), **{f"index_{k}": v for k, v in index.report.items()}}
        # Group commit pays off where a barrier is slow (msync: a device wait); with CPU-cache
        # flushes or none, handing ops to a leader costs more than the barriers it saves.
        if group_commit is None:
            group_commit = heap.mapping.backend == "msync"
        self._group = GroupCommitter(self) if group_commit else None

    @classmethod
    def open(cls, path, *, create: bool = True, initial_size: int = 64 << 20, max_size: int = 16 << 30,
             durability: str = "sync", verify_reads: bool = True, max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
             backend: str | None = None, group_commit: bool | None = None,
             journal_size: int | None = None) -> Store:
        """Open (or create) the store at path. `backend` overrides the durability's default;
        `group_commit` (default: on where barriers are msyncs) lets concurrent writers share commits;
        `journal_size` (at create; default a quarter of initial_size, 64 KiB..16 MiB; 0 for none)
        sizes the barrier journal."""
        if durability not in DURABILITY_BACKENDS:
            raise ValueError(f"durability must be 'sync' or 'os', not {durability!r}")
        if max_object_size < 1:
            raise ValueError("max_object_size must be positive")
        backend = backend or DURABILITY_BACKENDS[durability]
        path = Path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"{path}: no such store (pass create=True to make one)")
            path.parent.mkdir(parents=True, exist_ok=True)
            if journal_size is None:
                journal_size = min(STORE_JOURNAL_MAX_SIZE, max(STORE_JOURNAL_MIN_SIZE, initial_size // 4 >> 12 << 12))
            heap = Heap.create(path, size=initial_size, max_size=max_size, backend=backend,
                               lane_count=STORE_LANE_COUNT, lane_size=STORE_LANE_SIZE, journal_size=journal_size)
        else:
            heap = Heap.open(path, backend=backend)
        try:
            t0 = time.perf_counter()
            if heap.root == 0:          # new, or a crash between heap and index creation
                try:
                    _index.Index.create(heap.mapping)
                except NeedGrow:
                    heap._grow_and_retry(lambda: _index.Index.create(heap.mapping), 4096)
            index = _index.Index(heap.mapping, heap.root, verify_reads, heap.file.path)
            store = cls(heap, index, durability=durability,
                        max_object_size=max_object_size, group_commit=group_commit)
            store.report["index_ms"] = (time.perf_counter() - t0) * 1e3
            return store
        except BaseException:
            heap.abandon() if not heap.closed else None
            raise

    # ------------------------------------------------------------ objects
    @staticmethod
    def _key(key) -> bytes:
        return encode_key(key)

    @staticmethod
    def _cond(if_match: str | None, if_none_match: bool):
        if if_none_match:
            return _index.COND_ABSENT, None
        if if_match is not None:
            return _index.COND_ETAG, _etag_bytes(if_match)
        return _index.COND_NONE, None

    def put(self, key, value, *, content_type: str | None = None, if_match: str | None = None,
            if_none_match: bool = False) -> ObjectInfo:
        """Store value under key (atomically replacing any old object); durable on return in sync mode."""
        if (type(value) is bytes and type(key) is str and content_type is None and if_match is None
                and not if_none_match and 0 < len(key) <= 256 and key.isprintable()
                and len(value) <= self.max_object_size):
            # the common put: a printable key (encode_key's checks hold by construction), one C call
            # (with group commit on, that call shares a commit with concurrent writers itself)
            k = key.encode()
            try:
                mtime, crc, etag, _ = self._index.put_plain(k, value)
            except NeedGrow:
                mtime, crc, etag, _ = self._grow_and_put_plain(k, value)
            return _new_info(ObjectInfo, (key, len(value), etag, None, mtime, crc))
        return self._put(key, value, content_type, if_match, if_none_match)[0]

    def _grow_and_put_plain(self, k: bytes, value: bytes):
        # apart from put, like _grow_and_put
        return self.heap._grow_and_retry(lambda: self._index.put_plain(k, value), len(value) + len(k) + 512)

    def put_created(self, key, value, *, content_type: str | None = None, if_match: str | None = None,
                    if_none_match: bool = False) -> tuple[ObjectInfo, bool]:
        """As put, and whether the key was created (False: an object was replaced), decided
        inside the same commit."""
        return self._put(key, value, content_type, if_match, if_none_match)

    def _put(self, key, value, content_type, if_match, if_none_match) -> tuple[ObjectInfo, bool]:
        k = encode_key(key)
        mv = value if type(value) is bytes else memoryview(value).cast("B")
        size = len(mv)
        if size > self.max_object_size:
            raise ObjectTooLargeError(f"value of {size} bytes exceeds max_object_size "
                                      f"({self.max_object_size} bytes) for key {k[:64]!r}")
        ctype = content_type.encode("utf-8") if content_type else b""
        if len(ctype) > 255:
            raise ValueError("content_type must be at most 255 bytes of UTF-8")
        cond, match = self._cond(if_match, if_none_match) if if_match is not None or if_none_match \
            else _NO_COND
        gc = self._group
        if gc is None:          # one C call computes the CRC and the ETag, stamps mtime and commits
            _, created = self._put_one(k, mv, ctype, None, 0, cond, match)
            size, mtime, crc, etag, _ = _index.scratch_info_fields()
            return _new_info(ObjectInfo, (key if type(key) is str else k.decode(), size, etag.hex(),
                                          content_type or None, mtime, crc)), created
        etag, mtime = _md5(mv).digest(), time.time_ns()   # a group's leader commits for us: it needs them
        try:
            if gc.enter():              # another writer is in flight: share its commit
                r = gc.submit((0, k, mv, ctype, etag, cond, match, mtime))
                if isinstance(r, BaseException):
                    raise r
                _index.check(r, "put", k)
                crc, created = crc32c(mv), r == 1     # pm_index_op.result: 1 created, 0 replaced
            else:
                crc, created = self._put_one(k, mv, ctype, etag, mtime, cond, match)
        finally:
            gc.leave()
        return _new_info(ObjectInfo, (key if type(key) is str else k.decode(), size, etag.hex(),
                                      content_type or None, mtime, crc)), created

    def _put_one(self, k, mv, ctype, etag, mtime, cond, match) -> tuple[int, bool]:
        """One put in its own commit (etag None / mtime 0: computed in C); returns (the
        value's CRC32C, whether the key was created)."""
        try:
            return self._index.put(k, mv, ctype, etag, mtime, cond, match)
        except NeedGrow:    # slow path: grow the file (HeapFullError at max_size) and retry
            return self._grow_and_put(k, mv, ctype, etag, mtime, cond, match)

    def _grow_and_put(self, k, mv, ctype, etag, mtime, cond, match) -> tuple[int, bool]:
        # apart from _put_one: a lambda there would make its arguments cells on every call
        return self.heap._grow_and_retry(lambda: self._index.put(k, mv, ctype, etag, mtime, cond, match),
                                         len(mv) + len(k) + 512)

    def get(self, key, *, zero_copy: bool = False):
        """(value, ObjectInfo). zero_copy: a read-only memoryview into the heap, valid until
        the object is replaced or deleted (the checksum is verified when verify_reads is on).
        (Store.__init__ puts the index's one-frame closure in front of this: same behaviour;
        this is its general path.)"""
        k = encode_key(key)
        if zero_copy:
            return self._index.view_info(k, key if type(key) is str else k.decode(), _make_info)
        buf, _ = self._index.get(k)
        size, mtime, crc, etag, ct = _index.scratch_info_fields()
        return ((buf if type(buf) is bytes else bytes(buf)),
                _new_info(ObjectInfo, (key if type(key) is str else k.decode(), size, etag.hex(), ct, mtime, crc)))

    @property
    def verify_reads(self) -> bool:
        """Reads check the value's CRC32C (I4); fixed at open."""
        return self._index.verify_reads

    def get_value(self, key) -> bytes:
        """The value alone, without its ObjectInfo: the cheapest read (also `store[key]`).
        Same checks as get: NoSuchKeyError (a KeyError), CorruptObjectError, InvalidKeyError.
        (Store.__init__ replaces this with the index's one-frame closure; same behaviour.)"""
        return self._index.value_reader(encode_key)(key)

    def __getitem__(self, key) -> bytes:
        return self.get_value(key)

    def get_range(self, key, start: int, end: int | None = None):
        """(value[start:end], ObjectInfo); end is exclusive and clamped to the size."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid range [{start}, {end})")
        k = encode_key(key)
        limit = _index.NO_LIMIT if end is None else end - start   # copies only the range
        buf, info = self._index.get(k, start=start, limit=limit)
        return bytes(buf), self._info(k, info)

    def head(self, key) -> ObjectInfo:
        k = encode_key(key)
        return self._index.head_info(k, key if type(key) is str else k.decode(), _make_info)

    def delete(self, key, *, if_match: str | None = None) -> None:
        """Remove key (NoSuchKeyError if absent; PreconditionFailedError if if_match fails)."""
        k = encode_key(key)
        cond, match = self._cond(if_match, False)
        gc = self._group
        if gc is None:
            self._index.delete(k, cond, match)
            return
        try:
            if gc.enter():
                r = gc.submit((1, k, b"", b"", b"", cond, match, 0))
                if isinstance(r, BaseException):
                    raise r
                _index.check(r, "delete", k)
            else:
                self._index.delete(k, cond, match)
        finally:
            gc.leave()

    def batch(self) -> Batch:
        """`with store.batch() as b:` -- puts and deletes applied atomically, all or nothing."""
        return Batch(self)

    def list(self, prefix: str = "", after: str | None = None, limit: int = 1000):
        """(infos, next_after): up to limit objects whose keys start with prefix and sort
        after `after`, in bytewise key order; next_after is None on the last page."""
        if not 1 <= limit <= 100_000:
            raise ValueError(f"limit must be 1..100000, not {limit}")
        p = prefix.encode("utf-8") if prefix else b""
        a = encode_key(after) if after else b""
        infos, more = self._index.list(a, p, limit, _make_info)
        return infos, (infos[-1].key if more else None)

    def __len__(self) -> int:
        return self._index.count()

    def __contains__(self, key) -> bool:
        try:
            self.head(key)
            return True
        except (NoSuchKeyError, InvalidKeyError):
            return False

    def __iter__(self):
        after = None
        while True:
            infos, after = self.list(after=after, limit=1000)
            yield from (i.key for i in infos)
            if after is None:
                return

    # ------------------------------------------------------------ lifecycle
    @staticmethod
    def _info(k: bytes, info) -> ObjectInfo:
        size, mtime, crc, etag, ct = _index.scratch_info_fields()
        return _new_info(ObjectInfo, (k.decode("utf-8"), size, etag.hex(), ct, mtime, crc))

    def stats(self) -> dict:
        return {"objects": len(self), "heap": self.heap.stats(), "recovery": self.report}

    @property
    def closed(self) -> bool:
        return self.heap.closed

    def close(self) -> None:
        if not self.heap.closed:
            self._index.close()
            self.heap.close()

    def abandon(self) -> None:
        """Drop without a clean close (tests: a simulated process crash)."""
        if not self.heap.closed:
            self._index.close()
            self.heap.abandon()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ObjectInfo", "Store", "encode_key"]
