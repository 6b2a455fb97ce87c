"""Independent store checker: the index and the objects, re-derived from raw bytes.

Runs after recovery/check.py has found the allocated blocks (P1-P5). Reads the
superblock, the head and every object record through recovery/format.py and checks
I1 (level 0 visits every object once in strictly increasing key order; level l > 0 is
an ordered sublist of level l - 1 holding exactly the records taller than l), I2 (record
fields and header CRC), I3 (the allocated blocks are exactly the reachable ones: each
reachable once, none leaked), I4 (value CRC32C) and I5 (the superblock). Never calls
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
_PMC_RECORD = struct.Struct("<QQQQQII" + fmt.OBJ_HDR_STRUCT.format.lstrip("<"))   # struct pmc_record (walk.h)


class Record(NamedTuple):
    """A valid record: where it is, its key and tower, where its value is."""
    off: int
    key: bytes
    height: int
    value_off: int          # where the value bytes are (inside the record when inline)
    value_size: int
    value_block: int        # the value's own block, 0 when inline
    raw: tuple              # the unpacked header, in OBJ_HDR_FIELDS order (then next[0] on the fast path)

    @property
    def hdr(self) -> dict:
        return dict(zip(fmt.OBJ_HDR_FIELDS, self.raw))


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


def is_store(buf, root: int) -> bool:
    return bool(root) and bytes(buf[root:root + 8]) == fmt.STORE_MAGIC


def _record(buf, off: int, blocks: dict[int, int], *, head: bool = False) -> tuple[Record | None, str, str]:
    """Parse and validate the record at off: (record, "", "") or (None, invariant, message)."""
    block_size = blocks.get(off)
    if block_size is None:
        return None, "P4", f"record {off} is not an allocated block (dangling pointer)"
    if block_size < fmt.OBJ_HDR_SIZE:
        return None, "I2", f"record {off}: block of {block_size} bytes is smaller than a record header"
    raw = _HDR.unpack_from(buf, off)
    magic, h, flags, ks, size, value_off, _, _, cs, _, _, hdr_crc, _ = raw
    want = fmt.HEAD_MAGIC if head else fmt.OBJ_MAGIC
    if magic != want:
        return None, "I2", f"record {off}: magic {magic!r}, expected {want!r}"
    if head and (h != fmt.OBJ_MAX_HEIGHT or ks):
        return None, "I2", f"head {off}: height {h}, key_size {ks} (expected {fmt.OBJ_MAX_HEIGHT}, 0)"
    if not head and not (1 <= h <= fmt.OBJ_MAX_HEIGHT and 1 <= ks <= fmt.OBJ_KEY_MAX and cs <= fmt.OBJ_CTYPE_MAX):
        return None, "I2", f"record {off}: height {h}, key_size {ks}, ctype_size {cs} out of range"
    meta = (fmt.OBJ_HDR_SIZE + 8 * h + ks + cs + 7) & ~7       # fmt.obj_meta_size, inlined: hot
    if meta > block_size:
        return None, "I2", f"record {off}: {meta} bytes of header, pointers and key overrun its {block_size}-byte block"
    key_at = off + fmt.OBJ_HDR_SIZE + 8 * h
    crc = _crc(buf[key_at:key_at + ks + cs], _crc(buf[off:off + fmt.OBJ_HDR_CRC_COVERS]))
    if crc != hdr_crc:
        return None, "I2", f"record {off}: header CRC32C {hdr_crc:#010x}, computed {crc:#010x}"
    if head:
        vblock = voff = size = 0
    elif flags & fmt.OBJ_FLAG_INLINE:
        vblock, voff = 0, off + meta
        if meta + size > block_size:
            return None, "I2", f"record {off}: inline value of {size} bytes overruns its block"
    else:
        vblock = voff = value_off
        vsize = blocks.get(voff)
        if vsize is None:
            return None, "P4", f"record {off}: value_off {voff} is not an allocated block (dangling pointer)"
        if size > vsize:
            return None, "I2", f"record {off}: value of {size} bytes overruns its {vsize}-byte block"
    return _new_record(Record, (off, bytes(buf[key_at:key_at + ks]), h, voff, size, vblock, raw)), "", ""


_HDR = fmt.OBJ_HDR_STRUCT
_crc = fmt.crc32c
_VALUE_CRC = fmt.OBJ_HDR_FIELDS.index("value_crc32c")


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
    if version != fmt.STORE_VERSION:
        w.bad.append(BadEntry("I5", 0, 0, root, f"superblock version {version}, expected {fmt.STORE_VERSION}"))
        return w
    hrec, inv, msg = _record(buf, head, blocks, head=True)
    if hrec is None:
        w.bad.append(BadEntry("I5" if inv == "P4" else inv, root, 0, head, f"head: {msg}"))
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
    order (I1), its value checked (I4). The loop is the checker's hot path: the common
    case is inlined, and anything unusual goes through _record for the precise finding."""
    records, seen, vblocks = w.records, set(), []
    get, unpack, crc = blocks.get, _HDR_NEXT0.unpack_from, _crc
    obj_magic, inline_flag, min_block = fmt.OBJ_MAGIC, fmt.OBJ_FLAG_INLINE, fmt.OBJ_HDR_SIZE + 8
    pred, prev_key, limit, value_bytes = w.head_off, b"", len(blocks) + 1, 0
    r = _next(buf, pred, 0)
    while r:
        bsize = get(r)
        if bsize is None or bsize < min_block or r in seen or len(records) >= limit:
            _stop_level0(buf, w, blocks, pred, r, prev_key, seen)
            break
        raw = unpack(buf, r)
        magic, h, flags, ks, size, value_off, _, vcrc, cs, _, _, hcrc, _, nxt = raw
        meta = (64 + 8 * h + ks + cs + 7) & ~7
        key_at = r + 64 + 8 * h
        if magic != obj_magic or not 1 <= h <= 16 or not 1 <= ks <= 1024 or cs > 255 or meta > bsize \
                or crc(buf[key_at:key_at + ks + cs], crc(buf[r:r + 56])) != hcrc:
            _stop_level0(buf, w, blocks, pred, r, prev_key, seen)
            break
        if flags & inline_flag:
            vblock, voff = 0, r + meta
            ok = meta + size <= bsize
        else:
            vblock = voff = value_off
            vsize = get(voff)
            ok = vsize is not None and size <= vsize
        key = bytes(buf[key_at:key_at + ks])
        if not ok or key <= prev_key or (verify_values and crc(buf[voff:voff + size]) != vcrc):
            _stop_level0(buf, w, blocks, pred, r, prev_key, seen)
            break
        seen.add(r)
        if vblock:
            vblocks.append(vblock)
        records.append(_new_record(Record, (r, key, h, voff, size, vblock, raw)))
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
    n = _clib.pmc_walk0(layout(header), base, w.head_off, verify_values, out, cap, stop, offs, vblocks, vbytes)
    w.count, w.value_bytes = n, vbytes[0]
    reach = w.reachable
    reach.update(dict.fromkeys(_cffi.unpack(offs, n), 1))    # strictly increasing keys: each record once
    for vb in _cffi.unpack(vblocks, n):
        if vb:
            reach[vb] = reach.get(vb, 0) + 1
    upper_ok = not stop[0] and _clib.pmc_walk_upper(base, w.head_off, out, n) == 0
    del base
    if keep_records or not upper_ok:
        # row: off, value_off, value_size, value_block, key_off, key_size, height, then the header's fields
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
    rec, inv, msg = _record(buf, r, blocks)
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
