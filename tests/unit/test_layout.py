"""FORMAT.md, the C structs (csrc/pmd.h) and the Python transcription agree, byte for byte."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from allocator import _native, layout
from recovery import crashsim
from recovery import format as rformat

FORMAT = (Path(__file__).resolve().parents[2] / "FORMAT.md").read_text()


def format_table(struct: str) -> list[tuple[int, int, str]]:
    """(offset, size, field) rows of the table under the heading naming `struct`."""
    m = re.search(rf"^#+ [\d.]*\s*{struct}\s*$(.*?)(?=^#)", FORMAT, re.MULTILINE | re.DOTALL)
    assert m, f"FORMAT.md has no table for {struct}"
    rows = []
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows.append((int(cells[0]), int(cells[1]), cells[2]))
    assert rows, f"FORMAT.md's {struct} table is empty"
    return rows


def c_table(struct: str) -> list[tuple[int, int, str]]:
    t = _native.ffi.typeof(f"struct {struct}")
    return [(f.offset, _native.ffi.sizeof(f.type), name) for name, f in t.fields]


@pytest.mark.parametrize("struct", ["pmd_header", "pmd_lane_hdr", "pmd_redo_entry", "pmd_jnl_rec"])
def test_format_md_tables_match_the_c_structs(struct):
    assert format_table(struct) == c_table(struct)


def test_H2_python_header_codec_matches_c_and_format_md():
    sizes = {name: _native.ffi.sizeof(f.type) for name, f in _native.ffi.typeof("struct pmd_header").fields}
    py = [(off, sizes[name], name) for name, off in layout.header_field_offsets().items()]
    assert py == c_table("pmd_header") == format_table("pmd_header")
    assert _native.ffi.sizeof("struct pmd_header") == layout.HEADER_SIZE


@pytest.mark.parametrize("name", ["FORMAT_VERSION", "HEADER_SIZE", "HEADER_A_OFF", "HEADER_B_OFF", "ROOT_OFF",
                                  "REDO_OFF", "OS_PAGE_SIZE", "PAGE_SIZE", "LANE_HDR_SIZE",
                                  "REDO_ENTRY_SIZE", "REDO_OP_SET", "REDO_OP_OR", "REDO_OP_ANDNOT",
                                  "REDO_OP_CHECK", "JNL_HDR_SIZE", "JNL_REC_HDR_SIZE"])
def test_constants_have_the_same_value_in_c_and_python(name):
    assert getattr(layout, name) == _native.layout_constant(f"PMD_{name}")


def test_magic_matches():
    assert _native.layout_constant("PMD_MAGIC") == int.from_bytes(layout.MAGIC, "little")


def test_root_word_row_matches_the_constant():
    assert format_table("4.2 Root word")[0][:2] == (layout.ROOT_OFF, 8)


def test_crash_simulator_reads_the_trace_kinds_c_writes():
    for kind in ("WRITE", "FLUSH", "FENCE", "MARK", "GROW"):
        assert getattr(crashsim, f"TRACE_{kind}") == getattr(_native, f"TRACE_{kind}")


def test_file_map_defaults_match_the_code():
    meta = layout.meta_off_for(layout.DEFAULT_LANE_COUNT, layout.DEFAULT_LANE_SIZE)
    assert f"`meta_off` = {meta} = {hex(meta)}" in FORMAT
    assert f"`data_off` = {layout.data_off_for(meta, 0)}" in FORMAT


def test_H6_size_class_table_agrees_in_c_checker_and_format_md():
    rows = []
    m = re.search(r"^## 5\. Size classes$(.*?)(?=^## )", FORMAT, re.MULTILINE | re.DOTALL)
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append(tuple(int(c) for c in cells[1:]))
    assert rows == _native.class_table() == rformat.class_table()
    assert len(rows) == _native.layout_constant("PMD_CLASS_COUNT")
    assert rformat.CLASS_TABLE_ID == _native.layout_constant("PMD_CLASS_TABLE_ID")


@pytest.mark.parametrize("name", ["FORMAT_VERSION", "HEADER_SIZE", "ROOT_OFF", "REDO_OFF", "PAGE_SIZE",
                                  "LANE_HDR_SIZE", "REDO_ENTRY_SIZE", "DESC_SIZE", "RUN_BITMAP_SIZE"])
def test_checker_transcription_matches_c(name):
    assert getattr(rformat, name) == _native.layout_constant(f"PMD_{name}")


def test_checker_header_table_matches_c():
    assert [n for n, _ in rformat.HEADER_FIELDS] == [n for _, _, n in c_table("pmd_header")]
    assert rformat.HEADER_STRUCT.size == layout.HEADER_SIZE
    assert rformat.FORMAT_VERSION == layout.FORMAT_VERSION
    assert rformat.JNL_HDR_SIZE == layout.JNL_HDR_SIZE
    assert rformat.JNL_REC_STRUCT.size == _native.ffi.sizeof("struct pmd_jnl_rec") == layout.JNL_REC_HDR_SIZE
    kinds = {"DESC_FREE": "PMD_DESC_FREE", "DESC_RUN": "PMD_DESC_RUN", "DESC_SPAN": "PMD_DESC_SPAN"}
    for py, c in kinds.items():
        assert getattr(rformat, py) == _native.layout_constant(c)


def test_format_md_store_super_table_matches_the_c_struct():
    assert format_table("4.6 Store superblock") == c_table("pmd_store_super")


def format_record_tables() -> list[list[tuple[str, str, str]]]:
    """FORMAT.md 4.7's tables in order (header, MD5_DERIVED tail, INLINE tail, external tail):
    (offset, size, field) cells."""
    m = re.search(r"^#+ 4\.7 Object record \(pmd_object\)\s*$(.*?)(?=^#)", FORMAT, re.MULTILINE | re.DOTALL)
    assert m, "FORMAT.md has no section 4.7"
    tables, rows = [], None
    for line in m.group(1).splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        if rows is None:
            rows = []
            tables.append(rows)
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].isdigit():
            rows.append(tuple(cells[:3]))
    return tables


def _c_cells(struct: str) -> list[tuple[str, str, str]]:
    return [(str(off), str(size), name) for off, size, name in c_table(struct)]


def test_format_md_record_tables_match_the_c_structs():
    hdr, tail_derived, tail_inline, tail_ext = format_record_tables()
    assert hdr == [*_c_cells("pmd_object"), ("16", "8 x height", "next")]
    assert tail_derived == [_c_cells("pmd_tail_inline")[0], ("2", "key_size", "key")]      # value_size, no etag
    assert tail_inline == [*_c_cells("pmd_tail_inline"), ("18", "0 or 4", "value_crc32c")]   # then key at 18 or 22
    assert _native.layout_constant("PMD_OBJ_SMALL_MAX") == rformat.OBJ_SMALL_MAX == 256
    assert tail_ext == [*_c_cells("pmd_tail_ext"), ("36", "key_size", "key")]


def test_store_magic_spells_its_name():
    assert _native.layout_constant("PMD_STORE_MAGIC").to_bytes(8, "little") == b"PMSTORE1"


def test_store_info_unpack_matches_the_c_struct():
    from store._index import INFO_HEAD as _INFO_HEAD  # the unpack scratch_info_fields uses
    t = _native.ffi.typeof("struct pm_obj_info")
    names = [n for n, _ in t.fields][:7]
    assert names == ["rec_off", "value_off", "value_size", "mtime_ns", "value_crc32c", "ctype_size", "etag"]
    assert _INFO_HEAD.size == _native.ffi.offsetof(t, "ctype")


def _py_offsets(st) -> list[int]:
    """The offset of each field of a little-endian struct.Struct, in order."""
    codes = re.findall(r"\d*[a-zA-Z]", st.format.lstrip("<"))
    return [struct.calcsize("<" + "".join(codes[:i])) for i in range(len(codes))]


@pytest.mark.parametrize(("c_struct", "fields", "st", "size"), [
    ("pmd_object", "OBJ_HDR_FIELDS", "OBJ_HDR_STRUCT", "OBJ_HDR_SIZE"),
    ("pmd_tail_inline", "OBJ_TAIL_INLINE_FIELDS", "OBJ_TAIL_INLINE_STRUCT", "OBJ_TAIL_INLINE"),
    ("pmd_tail_ext", "OBJ_TAIL_EXT_FIELDS", "OBJ_TAIL_EXT_STRUCT", "OBJ_TAIL_EXT"),
])
def test_checker_record_structs_match_c(c_struct, fields, st, size):
    """The checker's header and tail codecs: field names, offsets and unpadded sizes as in C."""
    rows = c_table(c_struct)
    assert getattr(rformat, fields) == tuple(n for _, _, n in rows)
    assert _py_offsets(getattr(rformat, st)) == [off for off, _, _ in rows]
    last_off, last_size, _ = rows[-1]
    assert getattr(rformat, st).size == getattr(rformat, size) == last_off + last_size == \
        _native.layout_constant(f"PMD_{size}")


def test_checker_store_transcription_matches_c():
    assert rformat.OBJ_HDR_SIZE == _native.ffi.sizeof("struct pmd_object")
    assert rformat.OBJ_CRC_FROM == _native.ffi.offsetof("struct pmd_object", "height_flags")
    assert rformat.OBJ_TAIL_EXT == _native.ffi.offsetof("struct pmd_tail_ext", "etag") + 16
    assert rformat.SUPER_STRUCT.size == _native.ffi.sizeof("struct pmd_store_super")
    assert rformat.SUPER_HEAD_OFF == _native.ffi.offsetof("struct pmd_store_super", "head_off")
    for name in ("OBJ_MAX_HEIGHT", "OBJ_KEY_MAX", "OBJ_CTYPE_MAX", "OBJ_INLINE_MAX", "OBJ_FLAG_INLINE",
                 "OBJ_HEIGHT_MASK", "OBJ_TAIL_INLINE", "OBJ_TAIL_EXT", "OBJ_HDR_SIZE", "STORE_VERSION"):
        assert getattr(rformat, name) == _native.layout_constant(f"PMD_{name}"), name
    for name in ("OBJ_FLAG_MD5_DERIVED", "OBJ_FLAGS_RESERVED", "STORE_VERSION_OLD"):
        assert getattr(rformat, name) == _native.layout_constant(f"PMD_{name}"), name
    assert rformat.OBJ_FLAGS_RESERVED == 0xFF & ~(rformat.OBJ_HEIGHT_MASK | rformat.OBJ_FLAG_INLINE |
                                                  rformat.OBJ_FLAG_MD5_DERIVED)
    assert rformat.OBJ_TAIL_DERIVED == _native.ffi.offsetof("struct pmd_tail_inline", "etag")
    assert rformat.OBJ_MAX_HEIGHT <= rformat.OBJ_HEIGHT_MASK
    assert rformat.STORE_MAGIC == _native.layout_constant("PMD_STORE_MAGIC").to_bytes(8, "little")


@pytest.mark.parametrize("size", [0, 1, 7, 8, 63, 64, 1000, 5000])
def test_checker_crc32c_matches_the_reference_and_c(size):
    data = bytes(range(256)) * 20
    data = data[:size]
    assert rformat.crc32c(data) == rformat.crc32c_reference(data) == _native.crc32c(data)
    assert rformat.crc32c(data[size // 2:], rformat.crc32c(data[:size // 2])) == rformat.crc32c(data)
