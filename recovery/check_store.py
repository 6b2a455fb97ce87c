"""Independent store checker: the index and the objects, re-derived from raw bytes.

Runs after recovery/check.py has found the allocated blocks (P1-P5). Reads the
superblock, the head and every object record through recovery/format.py and checks
I1 (level 0 visits every object once in strictly increasing key order; level l > 0 is
an ordered sublist of level l - 1 holding exactly the records taller than l), I2 (record
fields, extents and crc32c), I3 (the allocated blocks are exactly the reachable ones: each
reachable once, none leaked), I4 (an external value's CRC32C; an inline value's is part
of the record's crc32c) and I5 (the superblock and the head). Never calls
store or allocator code.

`walk` returns what it found (records in key order, bad entries, leaked blocks) so
recovery/repair.py can act on the same facts the checker reports.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import NamedTuple

from recovery import format as fmt

try:   # the hot loops in C (recovery/csrc/walk.c), an independent implementation of the same rules
    from recovery._walk_c import ffi as _cffi
    from recovery._walk_c import lib as _clib
except ImportError:     # not built (a mutant's scratch tree): the pure-Python loops serve alone
    _cffi = _clib = None
FAST = _clib is not None    # tests switch it off to compare the two paths

_U64 = struct.Struct("<Q")
_LE32 = struct.Struct("<I")
# struct pmc_record (walk.h): off, value_off, value_size, value_block, key_off, key_size, height,
# then the RECORD_FIELDS in their order
_PMC_RECORD = struct.Struct("<QQQQQII QIIBB16s6x")

# Record.raw, in order: the decoded fields repair needs. value_crc32c is the stored one of an
# external value and the one computed from the bytes of an inline value.
RECORD_FIELDS = ("mtime_ns", "crc32c", "value_crc32c", "height_flags", "ctype_size", "etag")


class Record(NamedTuple):
    """A valid record: where it is, its key and tower, where its value is."""
    off: int
    key: bytes
    height: int
    value_off: int          # where the value bytes are (inside the record when inline)
    value_size: int
    value_block: int        # the value's own block, 0 when inline
    raw: tuple              # the record's decoded fields, in RECORD_FIELDS order

    @property
    def hdr(self) -> dict:
        return dict(zip(RECORD_FIELDS, self.raw, strict=True))


@dataclasses.dataclass
class BadEntry:
    """A next pointer that leads to something that is not a valid record."""
    invariant: str
    pred_off: int           # the record (or head) holding the pointer
    level: int
    target_off: int
    message: str
    record: Record | None = None  # the target, when it parsed as a record (e.g. a bad value CRC)


@dataclasses.dataclass
class StoreWalk:
    super_off: int
    head_off: int = 0
    records: list[Record] = dataclasses.field(default_factory=list)   # level 0, key order, valid only
    count: int = 0                                                     # valid records on level 0
    bad: list[BadEntry] = dataclasses.field(default_factory=list)
    level_errors: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)  # (level, off, message)
    reachable: dict[int, int] = dataclasses.field(default_factory=dict)  # block -> references
    leaked: list[int] = dataclasses.field(default_factory=list)
    value_bytes: int = 0
    version: int = fmt.STORE_VERSION    # the superblock's


def is_store(buf, root: int) -> bool:
    return bool(root) and bytes(buf[root:root + 8]) == fmt.STORE_MAGIC


def _record(buf, off: int, blocks: dict[int, int], *, head: bool = False,
            version: int = fmt.STORE_VERSION) -> tuple[Record | None, str, str]:
    """Parse and validate the record at off: (record, "", "") or (None, invariant, message).
    version: the superblock's (a version-2 store holds no MD5_DERIVED record)."""
    block_size = blocks.get(off)
    if block_size is None:
        return None, "P4", f"record {off} is not an allocated block (dangling pointer)"
    if block_size < fmt.OBJ_HDR_SIZE + 8:
        return None, "I2", f"record {off}: block of {block_size} bytes is smaller than a record header"
    crc, hf, cs, ks, mtime = _HDR.unpack_from(buf, off)
    h, inline, derived = hf & fmt.OBJ_HEIGHT_MASK, hf & fmt.OBJ_FLAG_INLINE, bool(hf & fmt.OBJ_FLAG_MD5_DERIVED)
    if hf & fmt.OBJ_FLAGS_RESERVED:
        return None, "I2", f"record {off}: height_flags {hf:#04x} sets reserved bit 6"
    if derived and version == fmt.STORE_VERSION_OLD:
        return None, "I5", f"record {off}: MD5_DERIVED (height_flags {hf:#04x}) in a version-{version} store"
    if derived and not inline:
        return None, "I2", f"record {off}: MD5_DERIVED (height_flags {hf:#04x}) without INLINE"
    if head and (h != fmt.OBJ_MAX_HEIGHT or not inline or ks or cs):
        return None, "I2", (f"head {off}: height {h}, inline {bool(inline)}, key_size {ks}, ctype_size {cs} "
                            f"(expected {fmt.OBJ_MAX_HEIGHT}, True, 0, 0)")
    if not head and not (1 <= h <= fmt.OBJ_MAX_HEIGHT and 1 <= ks <= fmt.OBJ_KEY_MAX):
        return None, "I2", f"record {off}: height {h}, key_size {ks} out of range (1..16, 1..1024)"
    t = fmt.OBJ_HDR_SIZE + 8 * h                        # the tail, from off
    if t + (fmt.OBJ_TAIL_EXT if not inline else fmt.OBJ_TAIL_DERIVED if derived else fmt.OBJ_TAIL_INLINE) > block_size:
        return None, "I2", f"record {off}: {t} bytes of header and pointers leave no room for its tail"
    size, etag = (_LE16.unpack_from(buf, off + t)[0], _NO_ETAG) if derived else \
        _TAIL_INLINE.unpack_from(buf, off + t) if inline else (None, None)
    if derived and size > fmt.OBJ_SMALL_MAX:
        return None, "I2", f"record {off}: MD5_DERIVED with value_size {size} (over {fmt.OBJ_SMALL_MAX})"
    tail = fmt.obj_tail_size(size, derived)
    end = t + tail + ks + cs                            # the end of the content type, from off
    if end > block_size:
        return None, "I2", (f"record {off}: {end} bytes of header, pointers, tail, key and content type overrun "
                            f"its {block_size}-byte block")
    if inline:
        vblock, voff = 0, off + end
        if head and size:
            return None, "I2", f"head {off}: value_size {size}, expected 0"
        if size > fmt.OBJ_INLINE_MAX:
            return None, "I2", f"record {off}: inline value_size {size} is over {fmt.OBJ_INLINE_MAX}"
        if end + size > block_size:
            return None, "I2", f"record {off}: inline value of {size} bytes overruns its {block_size}-byte block"
        small = size <= fmt.OBJ_SMALL_MAX
        vcrc = _crc(buf[voff:voff + size]) if small else _LE32.unpack_from(buf, off + t + fmt.OBJ_TAIL_INLINE)[0]
    else:
        size, voff, vcrc, etag = _TAIL_EXT.unpack_from(buf, off + t)
        vblock = voff
        if size <= fmt.OBJ_INLINE_MAX:
            return None, "I2", f"record {off}: external value_size {size} is not over {fmt.OBJ_INLINE_MAX}"
    got = _crc(buf[off + t:off + end], _crc(buf[off + fmt.OBJ_CRC_FROM:off + fmt.OBJ_HDR_SIZE], _crc(_LE32.pack(vcrc))))
    if got != crc:
        what = "record or its inline value" if inline and small else "record"
        return None, "I2", f"record {off}: crc32c {crc:#010x}, computed {got:#010x} (the {what} is damaged)"
    if not inline:
        vsize = blocks.get(voff)
        if vsize is None:
            return None, "P4", f"record {off}: value_off {voff} is not an allocated block (dangling pointer)"
        if size > vsize:
            return None, "I2", f"record {off}: value of {size} bytes overruns its {vsize}-byte block"
    key_at = off + t + tail
    return _new_record(Record, (off, bytes(buf[key_at:key_at + ks]), h, voff, size, vblock,
                                (mtime, crc, vcrc, hf, cs, etag))), "", ""


_HDR = fmt.OBJ_HDR_STRUCT
_LE16 = struct.Struct("<H")
_NO_ETAG = bytes(16)    # a derived ETag (MD5_DERIVED): the checker does not compute it
_TAIL_INLINE = fmt.OBJ_TAIL_INLINE_STRUCT
_TAIL_EXT = fmt.OBJ_TAIL_EXT_STRUCT
_crc = fmt.crc32c
_VALUE_CRC = RECORD_FIELDS.index("value_crc32c")


def _bad_flags(version: int) -> int:
    """height_flags bits no record of a store of this version has (I2; MD5_DERIVED, I5)."""
    return fmt.OBJ_FLAGS_RESERVED | (fmt.OBJ_FLAG_MD5_DERIVED if version == fmt.STORE_VERSION_OLD else 0)


def _next(buf, rec_off: int, level: int) -> int:
    return _U64.unpack_from(buf, rec_off + fmt.OBJ_HDR_SIZE + 8 * level)[0]


def walk(buf, root: int, blocks: dict[int, int], *, verify_values: bool = True, header: dict | None = None,
         keep_records: bool = True) -> StoreWalk:
    """Walk the index of the store whose superblock is at root; blocks: allocated block -> size.
    With the heap header (and the pages found consistent) the loops run in C, and
    keep_records=False leaves `records` empty unless something is wrong."""
    w = StoreWalk(root)
    w.reachable[root] = 1
    if blocks.get(root, 0) < fmt.SUPER_STRUCT.size:
        w.bad.append(BadEntry("I5", 0, 0, root, f"superblock {root} is not an allocated block of >= 64 bytes"))
        return w
    _, version, _, head, _, _ = fmt.SUPER_STRUCT.unpack_from(buf, root)
    if version not in (fmt.STORE_VERSION_OLD, fmt.STORE_VERSION):
        w.bad.append(BadEntry("I5", 0, 0, root, f"superblock version {version}, expected "
                                                f"{fmt.STORE_VERSION_OLD} or {fmt.STORE_VERSION}"))
        return w
    w.version = version
    hrec, _, msg = _record(buf, head, blocks, head=True, version=version)
    if hrec is None:
        w.bad.append(BadEntry("I5", root, 0, head, f"head: {msg}"))
        return w
    w.head_off = head
    w.reachable[head] = 1
    if FAST and header is not None:
        _walk_level0_c(buf, w, blocks, verify_values, header, keep_records)
    else:
        _walk_level0(buf, w, blocks, verify_values)
        w.count = len(w.records)
        _walk_upper(buf, w)
    return w


_HDR_NEXT0 = struct.Struct(fmt.OBJ_HDR_STRUCT.format + "Q")   # a record header and its next[0]
_new_record = tuple.__new__


def _walk_level0(buf, w: StoreWalk, blocks: dict[int, int], verify_values: bool) -> None:
    """Level 0 from the head: every record validated (I2, P4), in strictly increasing key
    order (I1), its value checked (I4: a small inline value always, through the record CRC;
    a larger one against its stored value_crc32c when verify_values).
    The loop is the checker's hot path: the common case is inlined, and anything unusual
    goes through _record for the precise finding."""
    records, seen, vblocks = w.records, set(), []
    get, unpack, crc, le32 = blocks.get, _HDR_NEXT0.unpack_from, _crc, _LE32.pack
    unpack_inline, unpack_ext, unpack_le32 = _TAIL_INLINE.unpack_from, _TAIL_EXT.unpack_from, _LE32.unpack_from
    unpack_le16 = _LE16.unpack_from
    min_block = fmt.OBJ_HDR_SIZE + 8
    pred, prev_key, limit, value_bytes = w.head_off, b"", len(blocks) + 1, 0
    bad_flags = _bad_flags(w.version)
    r = _next(buf, pred, 0)
    while r:
        bsize = get(r)
        if bsize is None or bsize < min_block or r in seen or len(records) >= limit:
            _stop_level0(buf, w, blocks, pred, r, prev_key, seen)
            break
        hcrc, hf, cs, ks, mtime, nxt = unpack(buf, r)
        h = hf & 0x1F
        t = r + 16 + 8 * h                          # FORMAT.md 4.7, inlined: hot
        if hf & 0x80:
            derived = hf & 0x20                     # MD5_DERIVED: the tail is value_size alone
            ok = not hf & bad_flags and 1 <= h <= 16 and 1 <= ks <= 1024 and t + (2 if derived else 22) - r <= bsize
            if ok and derived:
                size, etag, key_at = unpack_le16(buf, t)[0], _NO_ETAG, t + 2
                ok = size <= 256
            elif ok:
                size, etag = unpack_inline(buf, t)
                key_at = t + 18 if size <= 256 else t + 22      # a stored value_crc32c above 256 B
            if ok:
                end = voff = key_at + ks + cs
                vblock = 0
                ok = size <= 4096 and end + size - r <= bsize
                if ok and size <= 256:
                    vcrc = crc(buf[voff:voff + size])
                elif ok:
                    vcrc = unpack_le32(buf, t + 18)[0]
                    ok = not verify_values or crc(buf[voff:voff + size]) == vcrc
        else:
            key_at = t + 36
            end = key_at + ks + cs
            ok = not hf & (bad_flags | 0x20) and 1 <= h <= 16 and 1 <= ks <= 1024 and end - r <= bsize
            if ok:
                size, voff, vcrc, etag = unpack_ext(buf, t)
                vblock = voff
                vsize = get(voff)
                ok = size > 4096 and vsize is not None and size <= vsize
        if ok:
            key = bytes(buf[key_at:key_at + ks])
            ok = crc(buf[t:end], crc(buf[r + 4:r + 16], crc(le32(vcrc)))) == hcrc and key > prev_key \
                and not (vblock and verify_values and crc(buf[voff:voff + size]) != vcrc)
        if not ok:
            _stop_level0(buf, w, blocks, pred, r, prev_key, seen)
            break
        seen.add(r)
        if vblock:
            vblocks.append(vblock)
        records.append(_new_record(Record, (r, key, h, voff, size, vblock, (mtime, hcrc, vcrc, hf, cs, etag))))
        value_bytes += size
        pred, prev_key, r = r, key, nxt
    reach = w.reachable
    for rec_off in seen:
        reach[rec_off] = reach.get(rec_off, 0) + 1
    for vb in vblocks:
        reach[vb] = reach.get(vb, 0) + 1
    w.value_bytes = value_bytes


def layout(header: dict):
    """struct pmc_layout for the C walker: the geometry and the class table (recovery/format.py)."""
    lay = _cffi.new("struct pmc_layout *")
    lay.file_size, lay.meta_off, lay.data_off = header["file_size"], header["meta_off"], header["data_off"]
    for i, (size, pages, capacity) in enumerate(fmt.class_table()):
        lay.class_size[i], lay.class_pages[i], lay.class_cap[i] = size, pages, capacity
    return lay


def _walk_level0_c(buf, w: StoreWalk, blocks: dict[int, int], verify_values: bool, header: dict,
                   keep_records: bool) -> None:
    """_walk_level0 and _walk_upper with their loops in C (pmc_walk0, pmc_walk_upper). The
    records become Python objects only if asked for, or where C stops early and the Python
    slow path has to say why."""
    cap = len(blocks) + 1
    out = _cffi.new("struct pmc_record[]", cap)
    offs, vblocks = _cffi.new("uint64_t[]", cap), _cffi.new("uint64_t[]", cap)
    stop, vbytes = _cffi.new("uint64_t *"), _cffi.new("uint64_t *")
    base = _cffi.from_buffer(buf)
    bad_flags = _bad_flags(w.version)
    n = _clib.pmc_walk0(layout(header), base, w.head_off, verify_values, bad_flags, out, cap, stop, offs, vblocks,
                        vbytes)
    w.count, w.value_bytes = n, vbytes[0]
    reach = w.reachable
    reach.update(dict.fromkeys(_cffi.unpack(offs, n), 1))    # strictly increasing keys: each record once
    for vb in _cffi.unpack(vblocks, n):
        if vb:
            reach[vb] = reach.get(vb, 0) + 1
    upper_ok = not stop[0] and _clib.pmc_walk_upper(base, w.head_off, out, n) == 0
    del base
    if keep_records or not upper_ok:
        # row: off, value_off, value_size, value_block, key_off, key_size, height, then RECORD_FIELDS
        w.records = [_new_record(Record, (r[0], bytes(buf[r[4]:r[4] + r[5]]), r[6], r[1], r[2], r[3], r[7:]))
                     for r in _PMC_RECORD.iter_unpack(_cffi.buffer(out, n * _PMC_RECORD.size))]
    if stop[0]:
        pred = w.records[-1].off if w.records else w.head_off
        _stop_level0(buf, w, blocks, pred, stop[0], w.records[-1].key if w.records else b"", set(offs[0:n]))
    if not upper_ok:
        _walk_upper(buf, w)


def _stop_level0(buf, w: StoreWalk, blocks, pred: int, r: int, prev_key: bytes, seen: set) -> None:
    """The slow path: say precisely why the record at r ends level 0."""
    if r in seen or len(w.records) >= len(blocks) + 1:
        w.bad.append(BadEntry("I1", pred, 0, r, f"level 0 revisits block {r} (a cycle)"))
        return
    rec, inv, msg = _record(buf, r, blocks, version=w.version)
    if rec is None:
        w.bad.append(BadEntry(inv, pred, 0, r, msg))
    elif rec.key <= prev_key:
        w.bad.append(BadEntry("I1", pred, 0, r, f"record {r}: key {rec.key[:40]!r} does not follow "
                                               f"{prev_key[:40]!r} in bytewise order", rec))
    else:
        crc = _crc(buf[rec.value_off:rec.value_off + rec.value_size])
        w.bad.append(BadEntry("I4", pred, 0, r, f"record {r} (key {rec.key[:40]!r}): value CRC32C "
                                               f"{rec.raw[_VALUE_CRC]:#010x}, computed {crc:#010x}", rec))


def _walk_upper(buf, w: StoreWalk) -> None:
    """I1 for levels 1..15: each is the ordered list of exactly the records taller than it."""
    order = {rec.off: i for i, rec in enumerate(w.records)}
    truncated = bool(w.bad)   # level 0 stopped early: records past the break are unknown
    taller = w.records
    for level in range(1, fmt.OBJ_MAX_HEIGHT):
        taller = [rec for rec in taller if rec.height > level]
        want = [rec.off for rec in taller]
        got, last, r = [], -1, _next(buf, w.head_off, level)
        while r:
            i = order.get(r)
            if i is None:
                if not truncated:
                    w.level_errors.append((level, r, f"level {level} reaches {r}, which is not on level 0"))
                break
            if i <= last or len(got) > len(w.records):
                w.level_errors.append((level, r, f"level {level} is out of key order at record {r}"))
                break
            got.append(r)
            last, r = i, _next(buf, r, level)
        else:
            if got != want:
                missing = sorted(set(want) - set(got))[:3]
                w.level_errors.append((level, w.head_off, (f"level {level} links {len(got)} records, expected the "
                                                          f"{len(want)} taller than {level} (missing {missing})")))
            continue
        if got != want[:len(got)]:
            w.level_errors.append((level, w.head_off, f"level {level} skips records taller than {level}"))


def check_store(buf, root: int, blocks: dict[int, int], rep, *, verify_values: bool = True,
                header: dict | None = None, keep_records: bool = True) -> StoreWalk:
    """Add every store finding to rep (recovery/check.py Report) and return the walk."""
    w = walk(buf, root, blocks, verify_values=verify_values, header=header, keep_records=keep_records)
    for b in w.bad:
        rep.add(b.invariant, b.target_off, b.message)
    for level, off, msg in w.level_errors:
        rep.add("I1", off, msg)
    for blk, refs in w.reachable.items():
        if refs > 1:
            rep.add("I3", blk, f"block {blk} is referenced {refs} times")
    if not w.bad:   # with a broken chain, unreached records are not known to be leaks
        w.leaked = sorted(set(blocks) - set(w.reachable))
        for blk in w.leaked:
            rep.add("I3", blk, f"block {blk} ({blocks[blk]} bytes) is allocated but unreachable from the index (leak)")
    rep.objects = w.count
    rep.value_bytes = w.value_bytes
    return w
