"""The independent checker on store heaps: I1-I5 findings from raw-byte damage."""

from __future__ import annotations

import hashlib
import struct

import pytest
from storeutil import checker_loops, head_off, key_off, make_store, peek, poke, records, set_next, tail_off  # noqa: F401 (an autouse fixture: C and Python checker loops)

from allocator import Heap
from recovery import check_store
from recovery import format as fmt
from recovery.check import check_heap, format_report


def _ids(path) -> set[str]:
    return {f.invariant for f in check_heap(path).findings}


def _found(path, **kw) -> list[tuple[str, int]]:
    return [(f.invariant, f.off) for f in check_heap(path, **kw).findings]


def _assert_one_i2(path, rec_off: int, words: str) -> None:
    """The checker finds exactly one thing, I2 at the record, and its message says words."""
    rep = check_heap(path)
    assert [(f.invariant, f.off) for f in rep.findings] == [("I2", rec_off)], format_report(rep)
    assert words in rep.findings[0].message, rep.findings[0].message


def _record_crc(path, rec, value_crc32c: int) -> int:
    """rec's crc32c from its bytes on disk, transcribed from FORMAT.md 4.7 here: of the value's
    CRC32C (4 bytes LE), header bytes [4, 16), the tail from t through the content type."""
    t, end = tail_off(rec), key_off(rec) + len(rec.key) + rec.hdr["ctype_size"]
    crc = fmt.crc32c(struct.pack("<I", value_crc32c))
    crc = fmt.crc32c(peek(path, rec.off + 4, 12), crc)
    return fmt.crc32c(peek(path, t, end - t), crc)


def _fix_crc(path, rec, value_crc32c: int) -> None:
    """Make rec's crc32c match its (edited) bytes again, as the store would have written it."""
    poke(path, rec.off, struct.pack("<I", _record_crc(path, rec, value_crc32c)))


def test_I1_I5_clean_store_has_no_findings_and_counts_objects(tmp_path):
    path = tmp_path / "s.heap"
    values = make_store(path)
    rep = check_heap(path, records=True)
    assert rep.ok, rep.findings
    assert rep.objects == len(values)
    assert rep.value_bytes == sum(map(len, values.values()))
    assert [r.key.decode() for r in rep.store.records] == sorted(values)


def test_I2_the_stored_crc32c_is_the_one_format_md_defines(tmp_path):
    """The checker's reading of every record (decoded fields, inline value CRC) against the
    store's own writes: the CRC recomputed from raw bytes by this test's transcription."""
    path = tmp_path / "s.heap"
    values = make_store(path)
    recs = records(path)
    for key, rec in recs.items():
        inline = len(values[key]) <= fmt.OBJ_INLINE_MAX
        assert (rec.value_block == 0) == inline and bool(rec.hdr["height_flags"] & fmt.OBJ_FLAG_INLINE) == inline
        assert peek(path, rec.value_off, rec.value_size) == values[key]
        assert rec.hdr["value_crc32c"] == fmt.crc32c(values[key])
        derived = bool(rec.hdr["height_flags"] & fmt.OBJ_FLAG_MD5_DERIVED)   # FORMAT.md 4.7: values <= 256 B
        assert derived == (len(values[key]) <= fmt.OBJ_SMALL_MAX)
        assert rec.hdr["etag"] == (bytes(16) if derived else hashlib.md5(values[key]).digest())
        assert rec.hdr["mtime_ns"] > 0 and rec.hdr["height_flags"] & fmt.OBJ_HEIGHT_MASK == rec.height
        assert _record_crc(path, rec, rec.hdr["value_crc32c"]) == rec.hdr["crc32c"], key


def test_pmc_record_reader_matches_walk_h():
    """check_store reads walk.c's struct pmc_record through a struct.Struct: same size, same tail."""
    if check_store._cffi is None:
        pytest.skip("recovery._walk_c is not built")
    ffi = check_store._cffi
    assert check_store._PMC_RECORD.size == ffi.sizeof("struct pmc_record")
    names = [n for n, _ in ffi.typeof("struct pmc_record").fields]
    assert tuple(names[7:7 + len(check_store.RECORD_FIELDS)]) == check_store.RECORD_FIELDS


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("key", ["obj/02", "obj/09"])      # inline over 256 B, external: a stored CRC
def test_I4_a_flipped_value_byte_is_reported_with_the_key(tmp_path, key):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)[key]
    assert (r.value_block == 0) == (key == "obj/02") and r.value_size > fmt.OBJ_SMALL_MAX
    poke(path, r.value_off + 17, bytes([peek(path, r.value_off + 17, 1)[0] ^ 1]))
    rep = check_heap(path)
    assert [f.invariant for f in rep.findings] == ["I4"]
    assert key in rep.findings[0].message and rep.findings[0].off == r.off
    assert check_heap(path, verify_values=False).ok, "--no-values skips I4 and nothing else is wrong"


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("key", ["k5", "k9"])     # an inline and an external record
def test_I2_a_damaged_key_fails_the_record_crc(tmp_path, key):
    path = tmp_path / "s.heap"
    make_store(path, {"k1": b"a" * 100, "k5": b"b" * 100, "k9": b"c" * 5000})
    r = records(path)[key]
    assert peek(path, key_off(r), len(r.key)) == r.key
    poke(path, key_off(r) + 1, b"7")        # k7: still in key order, so only the CRC can tell
    _assert_one_i2(path, r.off, "crc32c")


@pytest.mark.corrupts_heap
def test_I2_a_flipped_small_value_byte_fails_the_record_crc(tmp_path):
    """A small value (up to 256 B) has no stored CRC: the record's covers it, with or without --no-values."""
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/00"]
    assert r.value_block == 0 and r.value_size <= fmt.OBJ_SMALL_MAX
    assert r.value_off == key_off(r) + len(r.key) + r.hdr["ctype_size"]
    poke(path, r.value_off + 17, bytes([peek(path, r.value_off + 17, 1)[0] ^ 1]))
    _assert_one_i2(path, r.off, "inline value")
    assert _found(path, verify_values=False) == [("I2", r.off)]


@pytest.mark.corrupts_heap
def test_I2_reserved_height_flags_bits_are_reported(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/04"]
    poke(path, r.off + 4, bytes([r.hdr["height_flags"] | fmt.OBJ_FLAGS_RESERVED]))   # the height is unchanged
    _fix_crc(path, r, r.hdr["value_crc32c"])                                         # and the CRC holds
    _assert_one_i2(path, r.off, "reserved")


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("key, words", [("obj/01", "over 256"), ("obj/07", "without INLINE")])
def test_I2_md5_derived_on_a_value_that_stores_its_etag_is_reported(tmp_path, key, words):
    """MD5_DERIVED only with INLINE and a value of at most 256 bytes (FORMAT.md 4.7): set on an
    inline 800-byte value or an external one, with the CRC made to hold, it is I2."""
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)[key]
    assert not r.hdr["height_flags"] & fmt.OBJ_FLAG_MD5_DERIVED and r.value_size > fmt.OBJ_SMALL_MAX
    poke(path, r.off + 4, bytes([r.hdr["height_flags"] | fmt.OBJ_FLAG_MD5_DERIVED]))
    _fix_crc(path, r, r.hdr["value_crc32c"])
    _assert_one_i2(path, r.off, words)


@pytest.mark.corrupts_heap
def test_I2_an_external_value_of_at_most_4096_bytes_is_reported(tmp_path):
    """A value that fits inline must be inline: a CRC-consistent external record of 4096 bytes is I2."""
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/07"]
    assert r.value_block and r.value_size > fmt.OBJ_INLINE_MAX
    vcrc = fmt.crc32c(peek(path, r.value_off, fmt.OBJ_INLINE_MAX))
    poke(path, tail_off(r), struct.pack("<Q", fmt.OBJ_INLINE_MAX))
    poke(path, tail_off(r) + 16, struct.pack("<I", vcrc))
    _fix_crc(path, r, vcrc)
    _assert_one_i2(path, r.off, "4096")


@pytest.mark.corrupts_heap
def test_P4_a_dangling_next_pointer_is_reported(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/04"]
    set_next(path, r.off, 0, r.off + 8)     # inside a block: not a block start
    assert "P4" in _ids(path)


@pytest.mark.corrupts_heap
def test_I1_an_upper_level_that_skips_a_tall_record_is_reported(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path, {f"k{i:03d}": b"v" for i in range(200)})   # 200 keys: some towers of height >= 2
    recs = list(records(path).values())
    tall = [r for r in recs if r.height >= 2]
    assert tall
    set_next(path, head_off(path), 1, 0)    # level 1 now empty while tall records exist
    rep = check_heap(path)
    assert any(f.invariant == "I1" and "level 1" in f.message for f in rep.findings)


@pytest.mark.corrupts_heap
def test_I1_level_0_out_of_order_is_reported(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    recs = records(path)
    a, c = recs["obj/01"], recs["obj/03"]
    set_next(path, c.off, 0, a.off)         # ... obj/03 -> obj/01: a cycle back in key order
    assert "I1" in _ids(path)


@pytest.mark.corrupts_heap
def test_I3_a_leaked_block_is_reported(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    with Heap.open(path, backend="none") as h:
        leaked = h.alloc(200)               # durable, never published
    rep = check_heap(path)
    assert [(f.invariant, f.off) for f in rep.findings] == [("I3", leaked)]


@pytest.mark.corrupts_heap
def test_I5_a_bad_head_is_reported(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    poke(path, head_off(path), b"XXXX")     # the head's crc32c
    assert [f.invariant for f in check_heap(path).findings] == ["I5"]


@pytest.mark.corrupts_heap
def test_I3_two_records_sharing_a_value_block_is_reported(tmp_path):
    """Reachable twice: a value block named by two records (a crafted, CRC-consistent case)."""
    path = tmp_path / "s.heap"
    make_store(path)
    recs = records(path)
    a, b = recs["obj/08"], recs["obj/09"]
    assert a.value_block and b.value_block
    # point b's tail at a's value block and fix b's crc32c as the C core would compute it
    tail = bytearray(peek(path, tail_off(b), fmt.OBJ_TAIL_EXT))
    struct.pack_into("<QQI", tail, 0, a.value_size, a.value_block, a.hdr["value_crc32c"])
    poke(path, tail_off(b), bytes(tail))
    _fix_crc(path, b, a.hdr["value_crc32c"])
    rep = check_heap(path)
    assert ("I3", a.value_block) in [(f.invariant, f.off) for f in rep.findings]
    assert ("I3", b.value_block) in [(f.invariant, f.off) for f in rep.findings], "b's old value block leaks"
