"""The heap file's fixed layout and header codec (FORMAT.md sections 3-4).

The allocator's Python view of the bytes: constants mirror csrc/pmd.h (same names),
`Header` packs and unpacks one header copy. tests/unit/test_layout.py keeps this,
the C structs and FORMAT.md's tables in agreement.
"""

from __future__ import annotations

import dataclasses
import struct

from allocator import _native

FORMAT_VERSION = 2
MAGIC = b"PMSTHEAP"
HEADER_SIZE = 256
HEADER_A_OFF = 0
HEADER_B_OFF = 4096
ROOT_OFF = 8192
REDO_OFF = 12288
OS_PAGE_SIZE = 4096
PAGE_SIZE = 65536
LANE_HDR_SIZE = 16
REDO_ENTRY_SIZE = 16
REDO_OP_SET = 0
REDO_OP_OR = 1
REDO_OP_ANDNOT = 2
REDO_OP_CHECK = 3  # internal: written by commits that carry data (L5), never by callers
CRC_COVERED_SIZE = 252  # H3: the CRC covers bytes [0, 252)
JNL_HDR_SIZE = 4096     # the journal's header page (its epoch word); records follow (4.8)
JNL_REC_HDR_SIZE = 24

DEFAULT_LANE_COUNT = 16
DEFAULT_LANE_SIZE = 4096
MAX_LANE_COUNT = 4096

# (name, struct code) in file order; must match `struct pmd_header` in csrc/pmd.h.
HEADER_FIELDS = (
    ("magic", "8s"), ("format_version", "I"), ("header_size", "I"), ("uuid", "16s"),
    ("generation", "Q"), ("file_size", "Q"), ("max_size", "Q"), ("page_size", "I"),
    ("lane_count", "I"), ("lane_size", "I"), ("class_table_id", "I"), ("root_off", "Q"),
    ("redo_off", "Q"), ("meta_off", "Q"), ("data_off", "Q"), ("created_ns", "Q"),
    ("clean_shutdown", "I"), ("flags", "I"), ("journal_size", "Q"), ("reserved", "124s"), ("crc32c", "I"),
)
_HEADER = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS))
assert _HEADER.size == HEADER_SIZE


def header_field_offsets() -> dict[str, int]:
    out, off = {}, 0
    for name, code in HEADER_FIELDS:
        out[name] = off
        off += struct.calcsize("<" + code)
    return out


@dataclasses.dataclass(frozen=True)
class Header:
    """One header copy, decoded. Sizes in bytes."""

    uuid: bytes
    generation: int
    file_size: int
    max_size: int
    lane_count: int
    lane_size: int
    meta_off: int
    data_off: int
    created_ns: int
    clean_shutdown: int
    class_table_id: int = 0
    journal_size: int = 0
    page_size: int = PAGE_SIZE
    root_off: int = ROOT_OFF
    redo_off: int = REDO_OFF
    format_version: int = FORMAT_VERSION
    header_size: int = HEADER_SIZE
    magic: bytes = MAGIC
    flags: int = 0

    def pack(self) -> bytes:
        """Bytes of one copy with its CRC32C (H3)."""
        values = [getattr(self, n) if n not in ("reserved", "crc32c") else (b"" if n == "reserved" else 0)
                  for n, _ in HEADER_FIELDS]
        raw = bytearray(_HEADER.pack(*values))
        struct.pack_into("<I", raw, CRC_COVERED_SIZE, _native.crc32c(raw[:CRC_COVERED_SIZE]))
        return bytes(raw)

    @staticmethod
    def unpack_raw(raw: bytes) -> dict:
        """All fields of a copy, unchecked, plus `crc_ok`."""
        fields = dict(zip((n for n, _ in HEADER_FIELDS), _HEADER.unpack(raw[:HEADER_SIZE])))
        fields["crc_ok"] = fields["crc32c"] == _native.crc32c(raw[:CRC_COVERED_SIZE])
        return fields

    @classmethod
    def from_fields(cls, f: dict) -> Header:
        names = {x.name for x in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in f.items() if k in names})

    def replace(self, **changes) -> Header:
        return dataclasses.replace(self, **changes)


def redo_region_size(lane_count: int, lane_size: int) -> int:
    return lane_count * lane_size


def journal_off_for(lane_count: int, lane_size: int) -> int:
    """First byte after the redo lanes, OS-page aligned: where the journal starts."""
    end = REDO_OFF + redo_region_size(lane_count, lane_size)
    return -(-end // OS_PAGE_SIZE) * OS_PAGE_SIZE


def meta_off_for(lane_count: int, lane_size: int, journal_size: int = 0) -> int:
    """First byte after the redo lanes and the journal."""
    return journal_off_for(lane_count, lane_size) + journal_size


def journal_size_ok(journal_size: int) -> bool:
    """0 (no journal) or whole OS pages, at least the header page and one page of records (H2)."""
    return not journal_size or (journal_size >= 2 * JNL_HDR_SIZE and journal_size % OS_PAGE_SIZE == 0)


def check_journal_size(journal_size: int) -> None:
    if not journal_size_ok(journal_size):
        raise ValueError(f"journal_size must be 0 or a multiple of {OS_PAGE_SIZE} of at least "
                         f"{2 * JNL_HDR_SIZE}, not {journal_size}")


def data_off_for(meta_off: int, meta_size: int) -> int:
    """First allocator page: after the metadata region, PAGE_SIZE aligned (P-section)."""
    return -(-(meta_off + meta_size) // PAGE_SIZE) * PAGE_SIZE


def pack_redo_entry(op: int, off: int, value: int) -> bytes:
    """One pmd_redo_entry; refuses what the C side could misread (L2)."""
    if op not in (REDO_OP_SET, REDO_OP_OR, REDO_OP_ANDNOT):
        raise ValueError(f"unknown redo op {op!r}")
    if off < 0 or off % 8:
        raise ValueError(f"redo target {off} is not an 8-aligned offset")
    return struct.pack("<QQ", off | op, value & 0xFFFF_FFFF_FFFF_FFFF)
