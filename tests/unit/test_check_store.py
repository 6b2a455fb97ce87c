"""The independent checker on store heaps: I1-I5 findings from raw-byte damage."""

from __future__ import annotations

import struct

import pytest
from storeutil import checker_loops, head_off, make_store, peek, poke, records, set_next  # noqa: F401 (an autouse fixture: C and Python checker loops)

from allocator import Heap
from recovery import format as fmt
from recovery.check import check_heap


def _ids(path) -> set[str]:
    return {f.invariant for f in check_heap(path).findings}



def test_I1_I5_clean_store_has_no_findings_and_counts_objects(tmp_path):
    path = tmp_path / "s.heap"
    values = make_store(path)
    rep = check_heap(path, records=True)
    assert rep.ok, rep.findings
    assert rep.objects == len(values)
    assert rep.value_bytes == sum(map(len, values.values()))
    assert [r.key.decode() for r in rep.store.records] == sorted(values)


@pytest.mark.corrupts_heap
def test_I4_a_flipped_value_byte_is_reported_with_the_key(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/09"]
    poke(path, r.value_off + 17, bytes([peek(path, r.value_off + 17, 1)[0] ^ 1]))
    rep = check_heap(path)
    assert [f.invariant for f in rep.findings] == ["I4"]
    assert "obj/09" in rep.findings[0].message and rep.findings[0].off == r.off
    assert check_heap(path, verify_values=False).ok, "--no-values skips I4 and nothing else is wrong"


@pytest.mark.corrupts_heap
def test_I2_a_damaged_key_fails_the_header_crc(tmp_path):
    path = tmp_path / "s.heap"
    make_store(path)
    r = records(path)["obj/03"]
    poke(path, r.off + fmt.OBJ_HDR_SIZE + 8 * r.height, b"X")
    assert "I2" in _ids(path)


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
    poke(path, head_off(path), b"XXXX")
    assert "I2" in _ids(path) or "I5" in _ids(path)


@pytest.mark.corrupts_heap
def test_I3_two_records_sharing_a_value_block_is_reported(tmp_path):
    """Reachable twice: a value block named by two records (a crafted, CRC-consistent case)."""
    path = tmp_path / "s.heap"
    make_store(path)
    recs = records(path)
    a, b = recs["obj/08"], recs["obj/09"]
    assert a.value_block and b.value_block
    # point b at a's value block and fix b's header CRC as the C core would compute it
    hdr = bytearray(peek(path, b.off, fmt.OBJ_HDR_SIZE))
    struct.pack_into("<QQ", hdr, 8, a.value_size, a.value_block)
    struct.pack_into("<I", hdr, 32, a.hdr["value_crc32c"])
    key_ct = peek(path, b.off + fmt.OBJ_HDR_SIZE + 8 * b.height, len(b.key) + b.hdr["ctype_size"])
    struct.pack_into("<I", hdr, 56, fmt.crc32c(key_ct, fmt.crc32c(bytes(hdr[:56]))))
    poke(path, b.off, bytes(hdr))
    rep = check_heap(path)
    assert ("I3", a.value_block) in [(f.invariant, f.off) for f in rep.findings]
    assert ("I3", b.value_block) in [(f.invariant, f.off) for f in rep.findings], "b's old value block leaks"
