"""A pure-data transcription of FORMAT.md, for the independent checker.

Nothing here imports the allocator: offsets, field tables, descriptor encoding and the
size-class rule are copied from FORMAT.md, so an allocator bug cannot hide itself
behind shared code. tests/unit/test_layout.py checks this against the C structs.
"""

from __future__ import annotations

import struct

import crc32c as _crc32c_lib

MAGIC = b"PMSTHEAP"
FORMAT_VERSION = 2
HEADER_SIZE = 256
HEADER_COPIES = {"A": 0, "B": 4096}
HEADER_CRC_COVERS = 252
ROOT_OFF = 8192
REDO_OFF = 12288
PAGE_SIZE = 65536
OS_PAGE_SIZE = 4096
LANE_HDR_SIZE = 16
REDO_ENTRY_SIZE = 16
REDO_OPS = {0: "SET", 1: "OR", 2: "ANDNOT", 3: "CHECK"}  # CHECK: value = delta<<61 | size<<32 | crc32c
DESC_SIZE = 8
DESC_FREE, DESC_RUN, DESC_SPAN = 0, 1, 2
RUN_BITMAP_SIZE = 512
CLASS_TABLE_ID = 2
JNL_HDR_SIZE = 4096         # FORMAT.md 4.8: the journal's first page holds its epoch word
JNL_REC_STRUCT = struct.Struct("<IIQII")   # crc32c, size, seq, range_count, reserved

# FORMAT.md 4.1, in order: (field, struct code)
HEADER_FIELDS = (
    ("magic", "8s"), ("format_version", "I"), ("header_size", "I"), ("uuid", "16s"),
    ("generation", "Q"), ("file_size", "Q"), ("max_size", "Q"), ("page_size", "I"),
    ("lane_count", "I"), ("lane_size", "I"), ("class_table_id", "I"), ("root_off", "Q"),
    ("redo_off", "Q"), ("meta_off", "Q"), ("data_off", "Q"), ("created_ns", "Q"),
    ("clean_shutdown", "I"), ("flags", "I"), ("journal_size", "Q"), ("reserved", "124s"), ("crc32c", "I"),
)
HEADER_STRUCT = struct.Struct("<" + "".join(c for _, c in HEADER_FIELDS))


def class_table() -> list[tuple[int, int, int]]:
    """FORMAT.md 5: (block size, pages per run, blocks per run) for each class index."""
    sizes = list(range(16, 257, 8))
    p = 256
    while p < 65536:
        sizes += [p + k * (p // 8) for k in range(1, 9)]
        p *= 2
    out = []
    for s in sizes:
        pages = 1 if s <= 8192 else 8
        out.append((s, pages, (pages * PAGE_SIZE - RUN_BITMAP_SIZE) // s))
    return out


def decode_desc(d: int) -> tuple[int, int, int, int]:
    """(kind, class, pages, reserved high bits) of a page descriptor (FORMAT.md 4.4)."""
    return d & 0xFF, (d >> 8) & 0xFF, (d >> 16) & 0xFFFF_FFFF, d >> 48


# crc32c(data, crc=0): CRC32C (Castagnoli) of data, continuing from crc. The PyPI `crc32c`
# package, a C implementation independent of pmstore's own core (bound directly: the
# checker calls it three times per object); tests/unit/test_layout.py checks it against
# crc32c_reference.
crc32c = _crc32c_lib.crc32c


def crc32c_reference(data: bytes, crc: int = 0) -> int:
    """Table-driven CRC32C, pure Python: the definition the fast one is tested against."""
    crc ^= 0xFFFF_FFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFF_FFFF


def _make_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


_TABLE = _make_table()


# FORMAT.md 4.6: the store superblock (the root word of a store heap points at it).
STORE_MAGIC = b"PMSTORE1"
STORE_VERSION = 3
STORE_VERSION_OLD = 2            # read too (records without OBJ_FLAG_MD5_DERIVED); raised to 3 at open
SUPER_STRUCT = struct.Struct("<8sII QQ 32s")          # magic, version, reserved0, head_off, created_ns, reserved
SUPER_HEAD_OFF = 16                                   # offset of head_off inside the superblock
# FORMAT.md 4.7: object record (store version 3; version 2 is the same without MD5_DERIVED). A 16-byte header (pmd_object), next[height]
# at 16, then the tail at t = 16 + 8 * height: a tail header, the key, the content type and,
# when INLINE, the value. No magic and no padding.
OBJ_HDR_FIELDS = ("crc32c", "height_flags", "ctype_size", "key_size", "mtime_ns")
OBJ_HDR_STRUCT = struct.Struct("<IBBHQ")
OBJ_HDR_SIZE = 16
OBJ_CRC_FROM = 4                 # the record CRC covers header bytes [4, 16) (then the tail through the ctype)
OBJ_TAIL_INLINE_FIELDS = ("value_size", "etag")                               # pmd_tail_inline
OBJ_TAIL_INLINE_STRUCT = struct.Struct("<H16s")
OBJ_TAIL_EXT_FIELDS = ("value_size", "value_off", "value_crc32c", "etag")     # pmd_tail_ext
OBJ_TAIL_EXT_STRUCT = struct.Struct("<QQI16s")
OBJ_TAIL_INLINE = 18             # tail header bytes before the key, INLINE (+ 4: value_crc32c if not small)
OBJ_SMALL_MAX = 256              # an INLINE value up to this size has no stored value_crc32c
OBJ_TAIL_EXT = 36                # tail header bytes before the key, value in its own block
OBJ_MAX_HEIGHT = 16
OBJ_KEY_MAX = 1024
OBJ_CTYPE_MAX = 255
OBJ_INLINE_MAX = 4096            # values up to this size are INLINE, larger ones never
OBJ_HEIGHT_MASK = 0x1F           # height_flags bits 0-4: height
OBJ_FLAG_INLINE = 0x80           # height_flags bit 7
OBJ_FLAG_MD5_DERIVED = 0x20      # height_flags bit 5: no stored ETag (INLINE, value_size <= 256 only)
OBJ_FLAGS_RESERVED = 0x40        # height_flags bit 6: zero
OBJ_TAIL_DERIVED = 2             # tail header bytes before the key, MD5_DERIVED: value_size alone


def obj_tail_size(inline_value_size: int | None, derived: bool = False) -> int:
    """Bytes from the tail to the key: external; INLINE and MD5_DERIVED; INLINE small
    (value_size <= 256); INLINE with its value_crc32c."""
    if inline_value_size is None:
        return OBJ_TAIL_EXT
    if derived:
        return OBJ_TAIL_DERIVED
    return OBJ_TAIL_INLINE + (4 if inline_value_size > OBJ_SMALL_MAX else 0)


def obj_record_size(height: int, key_size: int, ctype_size: int, inline_value_size: int | None,
                    derived: bool = False) -> int:
    """Bytes of a record: header, next pointers, tail header, key, content type and, when
    inline_value_size is not None (INLINE), the value."""
    return OBJ_HDR_SIZE + 8 * height + obj_tail_size(inline_value_size, derived) + key_size + ctype_size + \
        (inline_value_size or 0)


def obj_crc32c(value_crc32c: int, fields: bytes, tail: bytes) -> int:
    """A record's crc32c: of the value's CRC32C (4 bytes LE), header bytes [4, 16) (fields)
    and the tail from t through the end of the content type (FORMAT.md 4.7)."""
    return crc32c(tail, crc32c(fields, crc32c(value_crc32c.to_bytes(4, "little"))))


def journal_off(lane_count: int, lane_size: int) -> int:
    """The journal starts at the end of the redo lanes, rounded up to an OS page (FORMAT.md 3)."""
    return -(-(REDO_OFF + lane_count * lane_size) // OS_PAGE_SIZE) * OS_PAGE_SIZE


def jnl_record_crc32c(epoch: int, record: bytes) -> int:
    """A journal record's CRC32C: over the epoch (le64), then the record from byte 4 on (4.8)."""
    return crc32c(record[4:], crc32c(struct.pack("<Q", epoch)))

