"""The one module through which the store talks to C (store/csrc/index.c).

Offsets and buffers only; C return codes become the store's exceptions here.
"""

from __future__ import annotations

import struct
import threading

from allocator import _native
from allocator._native import _fast, address, ffi, lib
from store.errors import CorruptObjectError, NoSuchKeyError, PreconditionFailedError

COND_NONE, COND_ABSENT, COND_ETAG = lib.PM_COND_NONE, lib.PM_COND_ABSENT, lib.PM_COND_ETAG
SCRATCH_SIZE = 64 * 1024
NO_LIMIT = (1 << 64) - 1     # pm_index_get: copy to the end of the value


class _Scratch(threading.local):
    """Per-thread C buffers (and Python buffer views of them), so the hot paths allocate
    nothing per call."""

    def __init__(self):
        self.info = ffi.new("struct pm_obj_info *")
        self.info_view = ffi.buffer(self.info)
        self.created = ffi.new("int *")
        self.buf = ffi.new("uint8_t[]", SCRATCH_SIZE)
        self.buf_view = ffi.buffer(self.buf)
        # _fast.index_read's standing request: the whole value into buf, at most GIL_COPY_MAX
        # bytes with the GIL held (larger values go straight into their bytes object, the
        # GIL released: allocator/csrc/cpython/fastcall.c); with the info view in one
        # attribute, as a thread-local lookup costs ~40 ns
        self.req = ffi.new("struct pm_read_req *")
        self.req.dst, self.req.cap, self.req.start, self.req.limit, self.req.info = (
            self.buf, _fast.GIL_COPY_MAX, 0, NO_LIMIT, self.info)
        self.read = (address(self.req), self.info_view)
        # the same for the value alone: a small value's ETag is not computed (FORMAT.md 4.7)
        self.req_value = ffi.new("struct pm_read_req *", self.req[0])
        self.req_value.value_only = 1
        self.read_value = (address(self.req_value), self.info_view)


_scratch = _Scratch()
_fast_read = _fast.index_read
_fast_put_plain = _fast.index_put_plain


def check(rc: int, what: str, key: bytes = b"") -> None:
    if rc >= 0:
        return
    k = key.decode("utf-8", "replace")
    if rc == lib.PM_E_NOT_FOUND:
        raise NoSuchKeyError(f"no such key: {k!r}")
    if rc == lib.PM_E_PRECONDITION:
        raise PreconditionFailedError(f"{what} {k!r}: precondition failed; nothing was changed")
    if rc == lib.PM_E_CORRUPT_OBJECT:
        raise CorruptObjectError(f"{what} {k!r}: the stored value fails its CRC32C (I4); not returned")
    _native.check(rc, f"{what} {k!r}" if key else what)


INFO_HEAD = struct.Struct("<QQQQII16s")   # struct pm_obj_info up to its etag (tests/unit/test_layout.py)
_INFO_CTYPE_OFF = INFO_HEAD.size


def scratch_info_fields() -> tuple[int, int, int, bytes, str | None]:
    """(size, mtime_ns, crc32c, etag, content_type) of this thread's scratch info struct (which
    every Index call fills):
    one unpack of a standing buffer instead of several cffi field reads."""
    view = _scratch.info_view
    _, _, size, mtime, crc, n, etag = INFO_HEAD.unpack_from(view)
    return size, mtime, crc, etag, view[_INFO_CTYPE_OFF:_INFO_CTYPE_OFF + n].decode("utf-8", "replace") if n else None


def info_dict(info) -> dict:
    return {"rec_off": info.rec_off, "value_off": info.value_off, "size": info.value_size,
            "mtime_ns": info.mtime_ns, "crc32c": info.value_crc32c, "etag": bytes(info.etag).hex(),
            "content_type": bytes(info.ctype[0:info.ctype_size]).decode("utf-8", "replace") or None}


_STORE_MAGIC = lib.PMD_STORE_MAGIC.to_bytes(8, "little")


class Index:
    """A handle on the store's index inside an open heap."""

    def __init__(self, mapping: _native.Mapping, super_off: int, verify_reads: bool = True, path=""):
        self._mapping = mapping
        self.verify_reads = verify_reads
        out = ffi.new("pm_index **")
        rep = ffi.new("struct pm_index_report *")
        magic, version = mapping.read(super_off, 8), int.from_bytes(mapping.read(super_off + 8, 4), "little")
        if magic == _STORE_MAGIC and version not in (lib.PMD_STORE_VERSION_OLD, lib.PMD_STORE_VERSION):
            from allocator.errors import UnsupportedVersionError
            raise UnsupportedVersionError(path, "store version", f"the store was written with record layout "
                                          f"{version}, this build reads {lib.PMD_STORE_VERSION_OLD} and "
                                          f"{lib.PMD_STORE_VERSION} (I5, FORMAT.md 9)")
        rc = lib.pm_index_open(mapping._handle(), super_off, out, rep)
        if rc == lib.PM_E_CORRUPT:
            from allocator.errors import CorruptHeapError
            raise CorruptHeapError(path, "index", f"the object index is damaged near offset {rep.objects} "
                                   "(I1/I2); run `pmstore check`")
        _native.check(rc, "open the object index")
        self._x = out[0]
        self._xp = address(self._x)     # for allocator._fast's calls; None once closed
        # put_plain releases the GIL where barriers are system calls (msync), as the heap's hot pair
        self._release_gil = mapping.backend not in _native.GIL_HOLDING_BACKENDS
        lib.pm_index_set_verify(self._x, int(verify_reads))
        self.report = {"objects": rep.objects, "value_bytes": rep.value_bytes, "key_bytes": rep.key_bytes,
                       "upgraded_from": rep.upgraded_from or None}
        self._info = None

    @staticmethod
    def create(mapping: _native.Mapping) -> int:
        out = ffi.new("uint64_t *")
        _native.check(lib.pm_index_create(mapping._handle(), out), "create the object index")
        return out[0]

    def close(self) -> None:
        if self._x is not None:
            self._xp = None
            lib.pm_index_close(self._x)
            self._x = None
            for name in _CALLS:    # every later call names the cause instead of a cffi TypeError
                setattr(self, name, _closed)

    def count(self) -> int:
        return lib.pm_index_count(self._x)

    def get(self, key: bytes, start: int = 0, verify: bool | None = None, limit: int = NO_LIMIT):
        """(value bytes [start, start+limit), info). The whole value: one allocator._fast
        call (two over 1 KiB, the second without the GIL); a range: one C call up to 64 KiB.
        The info struct is this thread's scratch: read it before the next call. verify: None =
        the index's verify_reads. key: a valid key (encode_key): it holds no NUL."""
        if verify is None:
            verify = self.verify_reads
        sc = _scratch
        info = sc.info
        if start == 0 and limit == NO_LIMIT and verify == self.verify_reads:
            rc = _fast_read(self._xp, key, sc.read[0])
            if type(rc) is bytes:
                return rc, info
        else:
            rc = lib.pm_index_get(self._x, key, len(key), start, limit, sc.buf, SCRATCH_SIZE, verify, info)
            if rc >= 0:
                return sc.buf_view[:rc], info
        while rc == lib.PM_E_BUFFER:    # large value: a buffer of its size, then one copy into it
            buf = bytearray(min(info.value_size - min(start, info.value_size), limit))
            rc = lib.pm_index_get(self._x, key, len(key), start, limit, ffi.from_buffer(buf), len(buf), verify, info)
            if rc >= 0:
                want = min(info.value_size - min(start, info.value_size), limit)
                if want == len(buf):
                    return buf, info
                if want < len(buf):     # replaced meanwhile by a smaller value: it fits
                    del buf[want:]
                    return buf, info
                rc = lib.PM_E_BUFFER    # replaced by a larger one: again
        check(rc, "get", key)
        raise AssertionError(f"pm_index_get returned {rc}")

    def read_value(self, key: bytes):
        """The whole value as bytes, verified if verify_reads, one C call. key: a valid key
        (encode_key), so it holds no NUL -- pm_index_read takes it NUL-terminated."""
        r = _fast_read(self._xp, key, _scratch.read_value[0])
        if type(r) is bytes:
            return r
        buf = self.get(key)[0]      # over 2 GiB, or an error to raise
        return buf if type(buf) is bytes else bytes(buf)

    def value_reader(self, encode_key):
        """Store.get_value as one closure (one Python frame, one C call): key -> the whole
        value as bytes. Printable str keys of up to 256 characters (at most 1,024 bytes)
        skip encode_key, whose checks they pass by construction."""
        local, read, index = _scratch, _fast_read, self

        def get_value(key) -> bytes:
            if type(key) is str and 0 < len(key) <= 256 and key.isprintable():
                k = key.encode()    # printable excludes C0, DEL and lone surrogates
            else:
                k = encode_key(key)
            try:
                r = read(index._xp, k, local.read_value[0])
            except TypeError:       # closed: _xp is None
                _closed()
            return r if type(r) is bytes else index.read_value(k)    # over 2 GiB, or the error
        return get_value

    def info_reader(self, encode_key, make_info, slow_get):
        """Store.get as one closure, like value_reader: key -> (value, make_info((key, size,
        etag hex, content type, mtime, crc))), both built in C; zero_copy: (a view of the value,
        the same info), from view_info. Values past the scratch buffer and errors go to
        slow_get (Store's general get). The key fast path is
        written out again here on purpose: a shared helper would cost the Python frame these
        closures exist to save."""
        local, read, index = _scratch, _fast.index_read_info, self

        def get(key, *, zero_copy: bool = False):
            if type(key) is str and 0 < len(key) <= 256 and key.isprintable():
                k, ks = key.encode(), key
            else:
                k = encode_key(key)
                ks = key if type(key) is str else k.decode()
            if zero_copy:
                return index.view_info(k, ks, make_info)
            try:
                r = read(index._xp, k, local.read[0], ks, make_info)
            except TypeError:       # closed: _xp is None
                _closed()
            return r if type(r) is tuple else slow_get(key)
        return get

    def head_info(self, key: bytes, key_str: str, make_info):
        """make_info((key_str, size, etag hex, content type, mtime, crc)) of key, built in C
        (one call, the GIL held: it reads the record only); a damaged value's metadata too."""
        try:
            r = _fast.index_head(self._xp, key, lib.PM_VERIFY_NONE, key_str, make_info)
        except TypeError:       # closed: _xp is None
            _closed()
        if type(r) is int:
            check(r, "head", key)
        return r

    def view_info(self, key: bytes, key_str: str, make_info):
        """(a read-only view of key's value in the heap, make_info(...) as head_info): one
        allocator._fast call, checked as a copying get is (I4)."""
        try:
            r = _fast.index_where(self._xp, key, self.verify_reads, key_str, make_info)
        except TypeError:       # closed: _xp is None
            _closed()
        if type(r) is int:
            check(r, "get", key)
        return self._mapping.view(r[0], r[1]), r[2]

    def head(self, key: bytes, verify: int = lib.PM_VERIFY_NONE):
        """The object's info (this thread's scratch struct). verify: PM_VERIFY_NONE (the
        metadata of a damaged value is still returned) or as get's."""
        info = _scratch.info
        rc = lib.pm_index_get(self._x, key, len(key), 1 << 62, 0, ffi.NULL, 0, verify, info)
        if rc < 0:
            check(rc, "head", key)
        return info

    def put(self, key: bytes, value, ctype: bytes, etag: bytes, mtime_ns: int, cond: int, match: bytes | None):
        """Insert or replace; returns (the value's CRC32C, whether the key was created)."""
        sc = _scratch
        # bytes go to C as they are (cffi passes their buffer); anything else through from_buffer
        v = value if type(value) is bytes else ffi.from_buffer(value)
        rc = lib.pm_index_put(self._x, key, len(key), ctype, len(ctype), v, len(value),
                              etag or ffi.NULL, mtime_ns, cond, match or ffi.NULL, sc.info, sc.created)
        if rc < 0:
            check(rc, "put", key)
        return sc.info.value_crc32c, sc.created[0] != 0

    def put_plain(self, key: bytes, value: bytes) -> tuple[int, int, str, bool]:
        """put with no content type and no condition, ETag and mtime computed in C (the
        common put: one allocator._fast call, the GIL held for small values, the result
        built in C). key: a valid key (no NUL); value: bytes. Returns (mtime_ns, crc32c,
        etag hex, created)."""
        r = _fast_put_plain(self._xp, key, value, self._release_gil)
        if type(r) is int:
            check(r, "put", key)
        return r

    def seed_heights(self, seed: int) -> None:
        """Draw tower heights from `seed` from now on (the crash tools: a workload replays
        from its seed alone). Heights are otherwise seeded from the clock at open."""
        lib.pm_index_seed_heights(self._x, seed & ((1 << 64) - 1))

    def set_group(self, limit: int) -> None:
        """Group commit on (the most ops one commit takes) or off (0). put_plain then shares
        commits in C, and waits for them with the GIL released."""
        lib.pm_index_set_group(self._x, limit)
        if limit:
            self._release_gil = True

    def writer_enter(self) -> bool:
        """Count a writer in; True if another was already in (then share its commit)."""
        return lib.pm_index_writer_enter(self._x) > 0

    def writer_leave(self) -> None:
        lib.pm_index_writer_leave(self._x)

    def group_queued(self) -> int:
        """Ops waiting in the group-commit queue, not yet taken into a group."""
        return lib.pm_index_group_queued(self._x)

    def delete(self, key: bytes, cond: int, match: bytes | None) -> None:
        check(lib.pm_index_delete(self._x, key, len(key), cond, match or ffi.NULL), "delete", key)

    def submit(self, op: tuple, limit: int) -> int:
        """Group commit: one op (as apply takes them) joins the C queue; some waiting writer
        commits it with up to `limit` others in one commit. Returns its result code."""
        o = ffi.new("struct pm_index_op *")
        kind, key, value, ctype, etag, cond, match, mtime = op
        keep = [ffi.from_buffer(key)]
        o.kind, o.cond, o.mtime_ns, o.key, o.klen = kind, cond, mtime, keep[0], len(key)
        if kind == 0:
            keep += [ffi.from_buffer(value), ffi.from_buffer(ctype), ffi.from_buffer(etag)]
            o.value, o.vlen, o.ctype, o.ctlen, o.etag = keep[1], len(value), keep[2], len(ctype), keep[3]
        if match is not None:
            keep.append(ffi.from_buffer(match))
            o.match_etag = keep[-1]
        return lib.pm_index_submit(self._x, o, limit)

    def apply(self, ops: list[tuple], atomic: bool) -> tuple[int, list[int]]:
        """ops: (kind 0 put / 1 delete, key, value, ctype, etag, cond, match, mtime_ns).
        One redo commit for all; returns (rc, per-op results) without raising."""
        arr = ffi.new("struct pm_index_op[]", len(ops))
        keep = []
        for i, (kind, key, value, ctype, etag, cond, match, mtime) in enumerate(ops):
            o = arr[i]
            o.kind, o.cond, o.mtime_ns = kind, cond, mtime
            buf = ffi.from_buffer(key)
            keep.append(buf)
            o.key, o.klen = buf, len(key)
            if kind == 0:
                v, c, e = ffi.from_buffer(value), ffi.from_buffer(ctype), ffi.from_buffer(etag)
                keep += [v, c, e]
                o.value, o.vlen, o.ctype, o.ctlen, o.etag = v, len(value), c, len(ctype), e
            if match is not None:
                m = ffi.from_buffer(match)
                keep.append(m)
                o.match_etag = m
        rc = lib.pm_index_apply(self._x, arr, len(ops), int(atomic))
        return rc, [arr[i].result for i in range(len(ops))]

    def list(self, after: bytes, prefix: bytes, limit: int, make_info):
        """([make_info((key, size, etag hex, content type or None, mtime_ns, crc32c))] in key
        order, whether more follow): one allocator._fast call, the walk without the GIL."""
        try:
            r = _fast.index_list(self._xp, after, prefix, limit, make_info)
        except TypeError:       # closed: _xp is None
            _closed()
        if type(r) is int:
            check(r, "list")
        return r


_CALLS = ("count", "get", "read_value", "head", "put", "put_plain", "delete", "submit", "apply", "list")


def _closed(*_args, **_kw):
    from allocator.errors import HeapClosedError
    raise HeapClosedError("the store is closed")
