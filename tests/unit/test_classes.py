"""The size-class table (allocator/csrc/classes.c, FORMAT.md 5, H6).

The table is part of the file format: a heap records the ID of the table it was built
with, and a block's size is derived from its run's class. These tests pin the table's
shape, check that an allocation of every size lands in the smallest class that holds
it, and pin the table's bytes to PMD_CLASS_TABLE_ID with a checksum.
"""

from __future__ import annotations

import bisect
import itertools
import struct

import pytest

from allocator import Heap, _native, layout
from allocator.heap import CLASS_TABLE_ID

TABLE = _native.class_table()
SIZES = [s for s, _, _ in TABLE]
BITMAP_SIZE = _native.layout_constant("PMD_RUN_BITMAP_SIZE")
CLASS_MAX = _native.layout_constant("PMD_CLASS_MAX_SIZE")

# crc32c of the packed table: (block size, pages per run, blocks per run) as three
# little-endian u32 per class, in class order. Computed from table ID 2.
TABLE_CRC32C = 0x33176736
TABLE_CRC_FOR_ID = 2


def _smallest_class_at_least(size: int) -> int:
    return SIZES[bisect.bisect_left(SIZES, size)]


@pytest.fixture(scope="module")
def heap(tmp_path_factory):
    # classes above 8 KiB take 8-page runs: 24 of them need 12 MiB of runs
    h = Heap.create(tmp_path_factory.mktemp("classes") / "h.heap", size=1 << 20, max_size=32 << 20,
                    backend="none")
    yield h
    h.close()


def test_H6_table_shape():
    assert len(TABLE) == 95 == _native.layout_constant("PMD_CLASS_COUNT")
    assert SIZES[0] == 16
    assert SIZES[-1] == CLASS_MAX == 65536
    assert all(a < b for a, b in itertools.pairwise(SIZES)), f"sizes not strictly increasing: {SIZES}"
    assert all(s % 8 == 0 for s in SIZES), [s for s in SIZES if s % 8]     # blocks stay 8-byte aligned
    assert SIZES[:31] == list(range(16, 257, 8))


def test_H6_pages_per_run():
    for size, pages, _ in TABLE:
        assert pages == (1 if size <= 8192 else 8), f"class {size}: {pages} pages per run"


def test_H6_blocks_and_bitmap_fit_in_a_run():
    for size, pages, cap in TABLE:
        run = pages * layout.PAGE_SIZE
        assert cap >= 1, f"class {size}: empty run"
        assert cap * size + BITMAP_SIZE <= run, f"class {size}: {cap} blocks + bitmap overflow {run} B"
        assert (cap + 1) * size + BITMAP_SIZE > run, f"class {size}: room for another block is wasted"
        assert cap <= BITMAP_SIZE * 8, f"class {size}: {cap} blocks but only {BITMAP_SIZE * 8} bitmap bits"


def test_waste_below_one_eighth_above_256_bytes_and_under_8_bytes_below():
    # the worst case of each class is one byte more than the class below it
    for below, size in itertools.pairwise(SIZES):
        s = below + 1
        if s <= 256:
            assert size - s < 8, f"a {s}-byte request takes a {size}-byte block"
            continue
        waste = (size - s) / size
        assert waste < 0.125, f"a {s}-byte request takes a {size}-byte block: {waste:.1%} wasted"


def _sample_sizes() -> list[int]:
    sizes = set(range(1, 1025))
    sizes.update(range(1025, CLASS_MAX + 1, 61))
    for s in SIZES:
        sizes.update((s - 1, s, s + 1))
    return sorted(x for x in sizes if 1 <= x <= CLASS_MAX)


def test_block_size_is_the_smallest_class_that_holds_the_request(heap):
    wrong = []
    for s in _sample_sizes():
        off = heap.alloc(s)
        got = heap.block_size(off)
        if got != _smallest_class_at_least(s):
            wrong.append((s, got, _smallest_class_at_least(s)))
        heap.free(off)
    assert not wrong, f"(request, block size, expected class) mismatches: {wrong[:20]}"
    assert heap.stats()["live_blocks"] == 0


def test_H6_class_table_checksum():
    packed = b"".join(struct.pack("<III", *row) for row in TABLE)
    got = _native.crc32c(packed)
    assert (got, CLASS_TABLE_ID) == (TABLE_CRC32C, TABLE_CRC_FOR_ID), (
        f"size-class table checksum is {got:#010x} with table ID {CLASS_TABLE_ID}, pinned "
        f"{TABLE_CRC32C:#010x} for ID {TABLE_CRC_FOR_ID}: changing the size-class table requires "
        "bumping PMD_CLASS_TABLE_ID (FORMAT.md 5, H6) and then updating this constant")
