"""The heap (allocator/heap.py over csrc/alloc.c, span.c): allocation, publish and free,
large spans and coalescing, growth up to max_size, HeapFullError, reopen and the
recovery scan (P1, P2), statistics and the persist-barrier budget (FORMAT.md 7.1).

Every refusal checks that nothing changed: the stats, the blocks' bytes and, for a
refused open, the file's bytes.
"""

from __future__ import annotations

import itertools
import os
import random
import struct

import pytest
from heaputil import create_heap as _create
from heaputil import open_heap as _open
from heaputil import poke
from heaputil import stats_without_barriers as _stats

from allocator import CorruptHeapError, HeapFile, HeapFullError, UnsupportedVersionError, layout
from allocator.errors import NotAllocatedError
from allocator.heap import CLASS_TABLE_ID

PAGE = layout.PAGE_SIZE
BITMAP = 512
DESC_RUN, DESC_SPAN = 1, 2




def _pattern(tag: int, n: int) -> bytes:
    return (tag.to_bytes(8, "little") * (n // 8 + 1))[:n]


def _message(e) -> str:
    """An error's message without its path and field (test names, hence paths, hold IDs too)."""
    prefix = f"{e.path}: {e.field}: "
    assert str(e).startswith(prefix), str(e)
    return str(e)[len(prefix):]


def _assert_disjoint(blocks: dict[int, int]) -> None:
    """blocks: offset -> size; the [off, off + size) ranges must not overlap."""
    prev_end, prev = 0, None
    for off in sorted(blocks):
        assert off >= prev_end, f"block {off} overlaps block {prev} (which ends at {prev_end})"
        prev_end, prev = off + blocks[off], off


# ---------------------------------------------------------------- allocation


def test_alloc_returns_distinct_aligned_non_overlapping_blocks(tmp_path):
    heap = _create(tmp_path / "h.heap", max_size=64 << 20)  # 8-page runs of 24 classes take 12 MiB
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    data_off = heap.file.header.data_off
    blocks = {}
    for _ in range(500):
        size = rng.choice([rng.randint(1, 256)] * 3 + [rng.randint(257, 8192)] * 3 +
                          [rng.randint(8193, 65536), rng.randint(65537, 200_000)])
        off = heap.alloc(size)
        bs = heap.block_size(off)
        assert off not in blocks, f"offset {off} handed out twice"
        # malloc's rule: 16-aligned when the size could hold a 16-aligned type (FORMAT.md 5)
        assert off % (8 if size % 16 else 16) == 0, f"block {off} for {size} B is misaligned"
        assert bs >= size, f"block {off}: {bs} usable bytes for a {size}-byte request"
        assert data_off <= off and off + bs <= heap.mapping.size, \
            f"block [{off}, {off + bs}) outside the data area [{data_off}, {heap.mapping.size})"
        blocks[off] = bs
    _assert_disjoint(blocks)
    assert heap.stats()["live_blocks"] == len(blocks)
    heap.close()


def test_alloc_into_root_publishes_and_free_from_clears(heap):
    off = heap.alloc_into(layout.ROOT_OFF, 41)
    assert heap.root == off == heap.load8(layout.ROOT_OFF)
    assert heap.block_size(off) == 48
    heap.free_from(layout.ROOT_OFF)
    assert heap.root == 0
    with pytest.raises(NotAllocatedError):
        heap.block_size(off)
    assert heap.stats()["live_blocks"] == 0


def test_alloc_into_a_data_word_publishes_and_free_from_clears(heap):
    table = heap.alloc(64)
    words = [table + 8 * i for i in range(8)]
    heap.write(table, bytes(64))
    offs = [heap.alloc_into(w, 100 * (i + 1)) for i, w in enumerate(words)]
    assert [heap.load8(w) for w in words] == offs
    assert heap.stats()["live_blocks"] == 9
    heap.free_from(words[3])
    assert heap.load8(words[3]) == 0
    assert [heap.load8(w) for i, w in enumerate(words) if i != 3] == offs[:3] + offs[4:]
    with pytest.raises(NotAllocatedError):
        heap.free(offs[3])
    assert heap.stats()["live_blocks"] == 8


def test_free_from_an_empty_word_raises_and_changes_nothing(heap):
    table = heap.alloc(16)
    heap.write(table, bytes(16))
    before = _stats(heap)
    with pytest.raises(NotAllocatedError):
        heap.free_from(table)
    assert _stats(heap) == before
    assert heap.block_size(table) == 16


@pytest.mark.parametrize("dest", [layout.ROOT_OFF + 8, layout.REDO_OFF, 4096, "meta", "data+4", "end"])
def test_alloc_into_an_invalid_word_raises_and_allocates_nothing(heap, dest):
    dest = {"meta": heap.file.header.meta_off, "data+4": heap.file.header.data_off + 4,
            "end": heap.mapping.size}.get(dest, dest)
    heap.alloc(16)  # the class run exists, so a refusal cannot hide behind formatting
    before = _stats(heap)
    with pytest.raises(ValueError):
        heap.alloc_into(dest, 16)
    assert _stats(heap) == before, f"alloc_into({dest}) failed but the allocator changed"


@pytest.mark.parametrize("size", [0])
def test_size_zero_raises_value_error_and_changes_nothing(heap, size):
    heap.alloc(16)
    before, root = _stats(heap), heap.root
    with pytest.raises(ValueError):
        heap.alloc(size)
    with pytest.raises(ValueError):
        heap.alloc_into(layout.ROOT_OFF, size)
    with pytest.raises(ValueError), heap.transaction() as tx:
        tx.alloc(size)
    assert _stats(heap) == before
    assert heap.root == root


def test_negative_size_raises_value_error(heap):
    try:
        heap.alloc(-1)
    except ValueError:
        pass
    except Exception as e:  # noqa: BLE001 - the type is what is checked
        pytest.fail(f"alloc(-1) raised {type(e).__name__}({e}); expected a ValueError naming the size")
    else:
        pytest.fail("alloc(-1) succeeded")
    assert heap.stats()["live_blocks"] == 0


# The hot pair is a C method (allocator/csrc/cpython/fastcall.c) on every backend: the GIL
# held where a barrier is an instruction, released around an msync. Its slow path words
# the errors the same way on both.
@pytest.mark.parametrize("backend", ["none", "flush", "msync"])
def test_hot_pair_errors_on_every_backend(tmp_path, backend):
    from allocator import Heap
    from allocator.errors import HeapClosedError

    heap = Heap.create(tmp_path / "h.heap", size=1 << 20, max_size=4 << 20, backend=backend)
    off = heap.alloc_into(layout.ROOT_OFF, 100)
    assert heap.root == off and heap.block_size(off) >= 100
    with pytest.raises(TypeError, match="must be ints"):
        heap.alloc_into(layout.ROOT_OFF, "100")
    with pytest.raises(TypeError, match="must be ints"):
        heap.alloc_into(None, 100)
    with pytest.raises(TypeError, match="must be an int"):
        heap.free_from(1.5)
    with pytest.raises(ValueError, match="negative offset"):
        heap.free_from(-8)
    with pytest.raises(ValueError, match="non-negative"):
        heap.alloc_into(-8, 100)
    assert heap.root == off, "a refused call changed the root"
    heap.free_from(layout.ROOT_OFF)
    assert heap.root == 0
    # alloc and free (no word) are C methods too, with the same errors as before
    blk = heap.alloc(100)
    with pytest.raises(TypeError, match="must be ints"):
        heap.alloc("100")
    with pytest.raises(ValueError, match="size must be positive"):
        heap.alloc(0)
    with pytest.raises(TypeError, match="must be an int"):
        heap.free("x")
    with pytest.raises(NotAllocatedError, match="negative offset"):
        heap.free(-8)
    with pytest.raises(NotAllocatedError, match="not the start of an allocated block"):
        heap.free(blk + 8)
    heap.free(blk)
    with pytest.raises(NotAllocatedError, match="already freed"):
        heap.free(blk)
    # growth through the hot path: allocate past the initial size into one word at a time
    word = heap.alloc(8 * 64)
    for i in range(64):
        heap.alloc_into(word + 8 * i, 32 << 10)
    assert heap.mapping.size > 1 << 20, "the heap did not grow"
    heap.close()
    with pytest.raises(HeapClosedError):
        heap.alloc_into(layout.ROOT_OFF, 16)
    with pytest.raises(HeapClosedError):
        heap.free_from(layout.ROOT_OFF)
    with pytest.raises(HeapClosedError):
        heap.alloc(16)
    with pytest.raises(HeapClosedError):
        heap.free(blk)


def test_not_allocated_error_is_exported_from_the_package():
    import allocator

    assert "NotAllocatedError" in allocator.__all__
    assert getattr(allocator, "NotAllocatedError", None) is NotAllocatedError, (
        "allocator.__all__ lists NotAllocatedError but allocator/__init__.py does not import it, so "
        "`from allocator import NotAllocatedError` (and `import *`) fails")


# ---------------------------------------------------------------- frees that must be refused


def test_P4_double_free_raises_and_changes_nothing(heap):
    a, b = heap.alloc(100), heap.alloc(100)
    heap.write(b, _pattern(7, 100))
    heap.free(a)
    before = _stats(heap)
    with pytest.raises(NotAllocatedError):
        heap.free(a)
    assert _stats(heap) == before
    assert heap.read(b, 100) == _pattern(7, 100)
    # the block is on the free list exactly once: two allocations get two blocks
    assert len({heap.alloc(100), heap.alloc(100)}) == 2


def test_P4_double_free_of_a_span_raises_and_changes_nothing(heap):
    a = heap.alloc(100_000)
    heap.free(a)
    before = _stats(heap)
    with pytest.raises(NotAllocatedError):
        heap.free(a)
    assert _stats(heap) == before
    assert len({heap.alloc(100_000), heap.alloc(100_000)}) == 2


def test_P4_interior_and_never_allocated_offsets_raise_and_change_nothing(heap):
    h = heap.file.header
    small = heap.alloc(108)         # class 112, a 1-page run
    mid = heap.alloc(20_000)        # an 8-page run
    span = heap.alloc(3 * PAGE)     # a 3-page span
    freed = heap.alloc(100_000)
    heap.free(freed)
    run_off = small - (small - h.data_off) % PAGE
    bad = {
        "inside a small block": small + 16, "misaligned": small + 8, "one before": small - 112 + 8,
        "run bitmap": run_off, "just before block 0": run_off + BITMAP - 16,
        "never handed out": small + 112 * 100,
        "inside a run block": mid + 4096,
        "inside a span": span + 16, "second page of a span": span + PAGE, "freed span": freed,
        "metadata": h.meta_off, "below data_off": h.data_off - 16, "the root word": layout.ROOT_OFF,
        "file end": heap.mapping.size, "past the file": heap.mapping.size + PAGE, "zero": 0,
    }
    bad["second page of a run"] = mid - (mid - h.data_off) % PAGE + PAGE
    before = _stats(heap)
    for what, off in bad.items():
        with pytest.raises(NotAllocatedError):
            heap.free(off)
            pytest.fail(f"free({off}) ({what}) was accepted")
        with pytest.raises(NotAllocatedError):
            heap.block_size(off)
    assert _stats(heap) == before
    assert (heap.block_size(small), heap.block_size(mid), heap.block_size(span)) == (112, 20480, 3 * PAGE)


def test_free_of_a_block_freed_through_free_from_raises(heap):
    off = heap.alloc_into(layout.ROOT_OFF, 500)
    heap.free_from(layout.ROOT_OFF)
    before = _stats(heap)
    with pytest.raises(NotAllocatedError):
        heap.free(off)
    with pytest.raises(NotAllocatedError):
        heap.free_from(layout.ROOT_OFF)
    assert _stats(heap) == before


# ---------------------------------------------------------------- large objects


@pytest.mark.parametrize("size", [65537, 100_000, 131072, 131073, 300_000])
def test_large_objects_are_page_aligned_spans(heap, size):
    off = heap.alloc(size)
    pages = -(-size // PAGE)
    assert (off - heap.file.header.data_off) % PAGE == 0, f"{size}-byte object at {off} is not page-aligned"
    assert heap.block_size(off) == pages * PAGE
    st = heap.stats()
    assert (st["large_objects"], st["live_blocks"], st["live_block_bytes"]) == (1, 1, pages * PAGE)
    assert st["bytes_used"] == pages * PAGE


def test_65536_bytes_is_still_a_class_block(heap):
    off = heap.alloc(65536)
    assert heap.block_size(off) == 65536
    assert heap.stats()["large_objects"] == 0
    assert (off - heap.file.header.data_off) % PAGE == BITMAP


def test_freeing_adjacent_spans_coalesces(heap):
    st = heap.stats()
    assert st["pages"] == 14 and st["largest_free_span_bytes"] == 14 * PAGE
    spans = sorted(heap.alloc(2 * PAGE) for _ in range(7))
    assert [b - a for a, b in itertools.pairwise(spans)] == [2 * PAGE] * 6, "spans not carved contiguously"
    assert heap.stats()["largest_free_span_bytes"] == 0
    assert heap.mapping.size == 1 << 20, "the heap grew although the spans fit"
    heap.free(spans[2])
    assert heap.stats()["largest_free_span_bytes"] == 2 * PAGE
    heap.free(spans[3])     # merges with its left neighbour
    assert heap.stats()["largest_free_span_bytes"] == 4 * PAGE
    heap.free(spans[1])     # merges with its right neighbour
    assert heap.stats()["largest_free_span_bytes"] == 6 * PAGE
    heap.free(spans[5])
    heap.free(spans[4])     # merges with both
    st = heap.stats()
    assert st["largest_free_span_bytes"] == 10 * PAGE
    assert st["bytes_free"] == 10 * PAGE
    # the merged span serves one object that needs all of it, without growing
    assert heap.alloc(10 * PAGE) == spans[1]
    assert heap.mapping.size == 1 << 20


def test_coalesced_free_spans_survive_reopen(tmp_path):
    path = tmp_path / "h.heap"
    with _create(path) as heap:
        spans = sorted(heap.alloc(2 * PAGE) for _ in range(7))
        for off in spans[1:6]:
            heap.free(off)
    with _open(path) as heap:
        st = heap.stats()
        assert st["largest_free_span_bytes"] == 10 * PAGE
        assert heap.alloc(10 * PAGE) == spans[1]


# ---------------------------------------------------------------- growth and full


def test_growth_keeps_earlier_data_at_the_same_offsets(tmp_path):
    path = tmp_path / "h.heap"
    heap = _create(path)
    size0 = heap.mapping.size
    assert heap.file.header.file_size == size0 == 1 << 20
    blocks = {}
    for i in range(40):
        n = [100, 3000, 20_000, 150_000][i % 4]
        off = heap.alloc(n)
        heap.write(off, _pattern(i, n))
        blocks[off] = (i, n)
    size1 = heap.mapping.size
    assert size1 > size0, "allocating beyond the initial size did not grow the file"
    assert heap.file.header.file_size == size1 == heap.stats()["file_size"]
    assert os.path.getsize(path) >= size1
    for off, (i, n) in blocks.items():
        assert heap.read(off, n) == _pattern(i, n), f"block {off} changed by growth"
    _assert_disjoint({off: heap.block_size(off) for off in blocks})
    heap.close()
    with _open(path) as heap:
        assert heap.mapping.size == heap.file.header.file_size == size1
        for off, (i, n) in blocks.items():
            assert heap.read(off, n) == _pattern(i, n), f"block {off} changed by reopen after growth"
        assert heap.report.live_blocks == len(blocks)


def test_growth_stops_at_max_size(tmp_path):
    heap = _create(tmp_path / "h.heap", max_size=4 << 20)
    with pytest.raises(HeapFullError):
        while True:
            heap.alloc(100_000)
    assert heap.mapping.size == heap.file.header.file_size == 4 << 20
    heap.close()


def test_impossible_allocation_raises_heap_full_without_growing(heap):
    size0 = heap.mapping.size
    with pytest.raises(HeapFullError):
        heap.alloc(heap.file.header.max_size + 1)
    assert heap.mapping.size == heap.file.header.file_size == size0, (
        f"a request larger than max_size grew the file from {size0} to {heap.mapping.size} bytes "
        "(posix_fallocate'd up to max_size) before failing; HeapFullError says nothing was changed")


def test_heap_full_changes_nothing_and_a_free_makes_room(tmp_path):
    heap = _create(tmp_path / "h.heap", max_size=2 << 20)
    blocks = {}

    def fill(size):
        while True:
            try:
                off = heap.alloc(size)
            except HeapFullError:
                return
            heap.write(off, _pattern(len(blocks), size))
            blocks[off] = (len(blocks), size)

    for _ in range(20):
        off = heap.alloc(4096)
        heap.write(off, _pattern(len(blocks), 4096))
        blocks[off] = (len(blocks), 4096)
    fill(70_000)
    fill(4096)
    assert heap.mapping.size == 2 << 20
    heap.set_root(next(iter(blocks)))
    before, root, size = _stats(heap), heap.root, heap.mapping.size
    for n in (16, 4096, 70_000, 1 << 20, 10 << 20):
        with pytest.raises(HeapFullError):
            heap.alloc(n)
        with pytest.raises(HeapFullError):
            heap.alloc_into(layout.ROOT_OFF, n)
        with pytest.raises(HeapFullError), heap.transaction() as tx:
            tx.alloc_into(layout.ROOT_OFF, n)
        assert _stats(heap) == before, f"a refused {n}-byte allocation changed the stats"
    assert (heap.root, heap.mapping.size, heap.file.header.file_size) == (root, size, size)
    for off, (i, n) in blocks.items():
        assert heap.read(off, n) == _pattern(i, n), f"block {off} changed by a refused allocation"
        assert heap.block_size(off) >= n
    span = next(off for off, (_, n) in blocks.items() if n == 70_000)
    small = next(off for off, (_, n) in blocks.items() if n == 4096)
    heap.free(span)
    assert heap.alloc(70_000) == span
    heap.free(small)
    assert heap.alloc(4096) == small
    with pytest.raises(HeapFullError):
        heap.alloc(70_000)
    heap.close()


# ---------------------------------------------------------------- reopen and the scan


@pytest.mark.parametrize("how", ["close", "abandon"])
def test_reopen_preserves_contents_root_and_report(tmp_path, how):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = tmp_path / "h.heap"
    heap = _create(path, max_size=64 << 20)
    blocks = {}
    for i in range(300):
        n = rng.choice([rng.randint(1, 512), rng.randint(513, 20_000), rng.randint(65537, 150_000)])
        off = heap.alloc(n)
        heap.write(off, _pattern(i, n))
        blocks[off] = (i, n)
    for off in rng.sample(sorted(blocks), 100):
        heap.free(off)
        del blocks[off]
    root = next(iter(blocks))
    heap.set_root(root)
    st = heap.stats()
    runs = sum(c["runs"] for c in st["classes"])
    spans = sum(1 for _, n in blocks.values() if n > 65536)
    getattr(heap, how)()
    with _open(path) as heap:
        assert heap.report.was_clean is (how == "close")
        assert heap.root == root
        rep = heap.report
        assert (rep.live_blocks, rep.runs, rep.spans) == (len(blocks), runs, spans)
        assert rep.pages_scanned >= 1
        for off, (i, n) in blocks.items():
            assert heap.read(off, n) == _pattern(i, n), f"block {off} changed by {how} + open"
            assert heap.block_size(off) >= n
        st2 = heap.stats()
        for k in ("live_blocks", "live_block_bytes", "bytes_used", "bytes_free", "large_objects", "pages"):
            assert st2[k] == st[k], f"stats[{k!r}] is {st2[k]} after reopen, was {st[k]}"


def test_report_of_a_fresh_heap(heap):
    rep = heap.report
    assert (rep.live_blocks, rep.runs, rep.spans, rep.lanes_replayed) == (0, 0, 0, 0)
    assert rep.pages_scanned == heap.stats()["pages"] == 14
    assert rep.total_ms >= 0


def test_H6_heap_without_a_class_table_is_refused(tmp_path):
    path = tmp_path / "h.heap"
    HeapFile.create(path, size=1 << 20, max_size=16 << 20, backend="none").close()
    with pytest.raises(UnsupportedVersionError) as ei:
        _open(path)
    assert ei.value.field == "class_table_id"
    assert f"table {CLASS_TABLE_ID}" in _message(ei.value) and "(H6)" in _message(ei.value)
    with HeapFile.open(path, backend="none") as hf:   # the refusal did not leave the file locked
        assert hf.header.class_table_id == 0


def test_H6_refused_open_leaves_the_file_bytes_unchanged(tmp_path):
    path = tmp_path / "h.heap"
    HeapFile.create(path, size=1 << 20, max_size=16 << 20, backend="none").close()
    raw = path.read_bytes()
    with pytest.raises(UnsupportedVersionError):
        _open(path)
    assert path.read_bytes() == raw, (
        "Heap.open refused a class_table_id 0 file but rewrote its header copies first "
        "(HeapFile.open's update_header(clean_shutdown=0) runs before the H6 check)")


@pytest.mark.corrupts_heap
def test_P5_descriptor_table_must_cover_max_size(tmp_path):
    path = tmp_path / "h.heap"
    # no room for descriptors below data_off, but a class table ID and 1 GiB to grow into
    HeapFile.create(path, size=1 << 20, max_size=1 << 30, class_table_id=CLASS_TABLE_ID, backend="none").close()
    with pytest.raises(CorruptHeapError) as ei:
        _open(path)
    assert ei.value.field == "data_off"
    assert "P5" in _message(ei.value), f"the refusal does not name FORMAT.md's invariant P5: {ei.value}"


def _closed_heap_with_run_and_span(path) -> tuple[int, int, int]:
    """A closed heap with a class-112 run at page 0 and a 2-page span at page 1."""
    with _create(path) as heap:
        small = heap.alloc(108)
        span = heap.alloc(100_000)
        h = heap.file.header
        assert (small - h.data_off) // PAGE == 0 and (span - h.data_off) // PAGE == 1
        return h.meta_off, h.data_off, heap.stats()["pages"]



@pytest.mark.corrupts_heap
@pytest.mark.parametrize("page,value", [
    (0, 0xFF),                                               # unknown kind
    (0, DESC_RUN | 95 << 8 | 1 << 16),                       # class index past the table
    (0, DESC_RUN | 12 << 8 | 8 << 16),                       # class 112 takes 1 page, not 8
    (0, DESC_RUN | 12 << 8 | 1 << 16 | 1 << 50),             # bits above 47 set
    (1, DESC_SPAN | 0 << 16),                                # a span of no pages
    (1, DESC_SPAN | 3 << 8 | 2 << 16),                       # a span with a class
    (1, DESC_SPAN | 1000 << 16),                             # a span past the last page
    (5, 0x100),                                              # a free page with junk bits
], ids=["kind", "class", "run-pages", "high-bits", "empty-span", "span-class", "span-past-end", "free-junk"])
def test_P1_impossible_descriptor_refuses_open(tmp_path, page, value):
    path = tmp_path / "h.heap"
    meta_off, _, _ = _closed_heap_with_run_and_span(path)
    poke(path, meta_off + 8 * page, struct.pack("<Q", value))
    with pytest.raises(CorruptHeapError) as ei:
        _open(path)
    assert ei.value.field == f"descriptor[{page}]", str(ei.value)
    assert "P1" in _message(ei.value) and str(ei.value).startswith(f"{path}: "), str(ei.value)


@pytest.mark.corrupts_heap
def test_P1_refused_open_leaves_the_file_bytes_unchanged(tmp_path):
    path = tmp_path / "h.heap"
    meta_off, _, _ = _closed_heap_with_run_and_span(path)
    poke(path, meta_off, struct.pack("<Q", 0xFF))
    raw = path.read_bytes()
    with pytest.raises(CorruptHeapError):
        _open(path)
    assert path.read_bytes() == raw, (
        "Heap.open refused the file but changed its bytes (HeapFile.open rewrote both header copies, "
        "clean_shutdown=0 and generation+1, before the allocator scan refused the file)")
    with pytest.raises(CorruptHeapError):   # refused again: the refusal left no lock behind
        _open(path)


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("bit", [580, 581, 639, 640, 4095])
def test_P2_bitmap_bit_beyond_run_capacity_refuses_open(tmp_path, bit):
    path = tmp_path / "h.heap"
    _, data_off, _ = _closed_heap_with_run_and_span(path)   # class 112: 580 blocks per run
    word_off = data_off + bit // 64 * 8
    word = struct.unpack("<Q", path.read_bytes()[word_off:word_off + 8])[0]
    poke(path, word_off, struct.pack("<Q", word | 1 << (bit % 64)))
    with pytest.raises(CorruptHeapError) as ei:
        _open(path)
    assert ei.value.field == "descriptor[0]" and "P2" in _message(ei.value), str(ei.value)


def test_P2_last_bit_within_capacity_is_accepted(tmp_path):
    path = tmp_path / "h.heap"
    _, data_off, _ = _closed_heap_with_run_and_span(path)
    word_off = data_off + 579 // 64 * 8
    word = struct.unpack("<Q", path.read_bytes()[word_off:word_off + 8])[0]
    poke(path, word_off, struct.pack("<Q", word | 1 << (579 % 64)))
    with _open(path) as heap:
        assert heap.report.live_blocks == 3
        assert heap.block_size(data_off + BITMAP + 579 * 112) == 112


# ---------------------------------------------------------------- bytes and the root


def test_write_read_view_load8(heap):
    off = heap.alloc(64)
    heap.write(off, b"\x01" * 8 + b"abc")
    assert heap.read(off, 11) == b"\x01" * 8 + b"abc"
    assert heap.load8(off) == 0x0101010101010101
    v = heap.view(off + 8, 3)
    assert bytes(v) == b"abc" and v.readonly
    heap.write(off + 8, b"xyz", persist=False)
    assert bytes(v) == b"xyz"
    with pytest.raises(ValueError):
        heap.write(heap.file.header.data_off - 8, b"12345678")
    with pytest.raises(ValueError):
        heap.write(layout.ROOT_OFF, b"12345678")


def test_read_and_view_check_their_range_and_see_growth(tmp_path):
    """read and view are C methods of the mapping (allocator._fast): a range past the
    mapped heap, a negative size or offset, or a closed heap raises; the tail a growth
    maps in is readable at once; a read over GIL_COPY_MAX (released GIL) copies it all."""
    from allocator import Heap
    from allocator.errors import HeapClosedError

    heap = Heap.create(tmp_path / "h.heap", size=1 << 20, max_size=8 << 20, backend="none")
    big = heap.alloc(3 << 20)                   # past the initial size: the heap grew
    size = heap.mapping.size
    assert size > 1 << 20
    data = bytes(range(256)) * (3 << 12)
    heap.write(big, data, persist=False)
    assert heap.read(big, len(data)) == data
    assert bytes(heap.view(big, len(data))) == data
    assert heap.read(size - 8, 8) == heap.view(size - 8, 8).tobytes()
    assert heap.read(size, 0) == b"" and heap.view(size, 0).nbytes == 0
    for off, n in [(size - 8, 16), (size + 1, 0), (big, -1), (big, 1 << 62)]:
        with pytest.raises(ValueError, match="outside the heap"):
            heap.read(off, n)
        with pytest.raises(ValueError, match="outside the heap"):
            heap.view(off, n)
    with pytest.raises(ValueError, match="negative offset"):
        heap.read(-8, 8)
    with pytest.raises(ValueError, match="negative offset"):
        heap.view(-8, 8)
    v = heap.view(big, 4)
    assert v.readonly and bytes(v) == data[:4]
    heap.write(big, b"abcd", persist=False)
    assert bytes(v) == b"abcd", "a view is not a copy"
    del v
    heap.close()
    with pytest.raises(HeapClosedError):
        heap.read(big, 8)
    with pytest.raises(HeapClosedError):
        heap.view(big, 8)


def test_L9_a_plain_write_waits_only_for_commits_on_its_lines(heap):
    """One barrier into memory no live commit wrote; over a word a commit just set, first
    the settle rounds that make that commit gone (its seal would replay over the write
    after a crash), then the write's own barrier. Crash states: tests/crash (L9)."""
    table = heap.alloc(128)
    heap.write(table, bytes(128))
    obj = heap.alloc_into(table, 100)       # the commit sets table[0]: not a word of obj
    n = heap.persist_count
    heap.write(obj, b"y" * 100)
    assert heap.persist_count - n == 1
    with heap.transaction() as tx:
        tx.set(table + 8, 7)
    n = heap.persist_count
    heap.write(table + 8, (8).to_bytes(8, "little"))
    assert heap.persist_count - n == 3, "settle the sealed commit (words, then its clearing), then write"
    n = heap.persist_count
    heap.write(table + 16, (9).to_bytes(8, "little"))
    assert heap.persist_count - n == 1, "that commit is gone now: no wait"
    assert [heap.load8(table + 8), heap.load8(table + 16)] == [8, 9]


def test_set_root_is_durable(tmp_path):
    path = tmp_path / "h.heap"
    with _create(path) as heap:
        off = heap.alloc(32)
        heap.set_root(off)
        assert heap.root == off
    with _open(path) as heap:
        assert heap.root == off


# ---------------------------------------------------------------- stats


def test_stats_after_1000_small_allocations(heap):
    offs = [heap.alloc(108) for _ in range(1000)]
    st = heap.stats()
    assert st["live_blocks"] == 1000
    assert st["live_block_bytes"] == 1000 * 112
    (cls,) = st["classes"]
    assert (cls["block_size"], cls["runs"], cls["pages"], cls["blocks"], cls["live_blocks"]) == (112, 2, 2, 1160, 1000)
    assert cls["occupancy"] == pytest.approx(1000 / 1160)
    assert st["bytes_used"] == 2 * PAGE
    assert st["bytes_used"] + st["bytes_free"] == st["pages"] * PAGE
    assert st["fragmentation"] == pytest.approx(2 * PAGE / (1000 * 112))
    assert st["large_objects"] == 0
    for off in offs[::2]:
        heap.free(off)
    st = heap.stats()
    assert (st["live_blocks"], st["live_block_bytes"]) == (500, 500 * 112)
    assert st["classes"][0]["live_blocks"] == 500
    assert st["bytes_used"] == 2 * PAGE, "runs keep their pages while they hold blocks"


def test_stats_mixed_classes_and_spans(heap):
    sizes = [1] * 5 + [201] * 3 + [5000] * 2 + [10_000] + [70_000, 200_000]
    offs = [heap.alloc(n) for n in sizes]
    st = heap.stats()
    expect_bytes = 5 * 16 + 3 * 208 + 2 * 5120 + 10240 + 2 * PAGE + 4 * PAGE
    assert (st["live_blocks"], st["live_block_bytes"], st["large_objects"]) == (len(sizes), expect_bytes, 2)
    by_size = {c["block_size"]: c for c in st["classes"]}
    assert sorted(by_size) == [16, 208, 5120, 10240]
    assert [by_size[s]["live_blocks"] for s in (16, 208, 5120, 10240)] == [5, 3, 2, 1]
    assert by_size[10240]["pages"] == 8
    assert st["bytes_used"] == (1 + 1 + 1 + 8 + 2 + 4) * PAGE
    assert st["bytes_used"] + st["bytes_free"] == st["pages"] * PAGE
    for off in offs:
        heap.free(off)
    st = heap.stats()
    assert (st["live_blocks"], st["live_block_bytes"], st["large_objects"], st["fragmentation"]) == (0, 0, 0, 0.0)
    assert st["bytes_used"] == 11 * PAGE


def test_persist_count_one_per_publish_or_free(tmp_path):
    heap = _create(tmp_path / "h.heap", size=8 << 20)     # no growth (2 header barriers) below
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    n = 400
    table = heap.alloc(8 * n)
    heap.write(table, bytes(8 * n))
    sizes = [16, 100, 1000, 5000]
    for s in sizes:                     # runs of every class used below exist
        heap.free(heap.alloc(s))
    deltas = []
    for i in range(n):
        c = heap.persist_count
        heap.alloc_into(table + 8 * i, rng.choice(sizes))
        deltas.append(heap.persist_count - c)
    for i in rng.sample(range(n), n):
        c = heap.persist_count
        heap.free_from(table + 8 * i)
        deltas.append(heap.persist_count - c)
    mean = sum(deltas) / len(deltas)
    assert mean <= 1.05, f"{mean:.3f} barriers per alloc_into/free_from (max {max(deltas)})"
    assert min(deltas) >= 1, "a publish or free returned before its commit point was durable"
    assert max(deltas) <= 2, "more than one extra barrier (a run's bitmap) for one operation"
    assert heap.mapping.size == 8 << 20
    heap.close()


def test_close_right_after_worker_threads_exit_is_safe(tmp_path):
    """Thread.join returns before a worker's thread-exit destructor has moved its runs
    back to the heap; closing the heap at once must not race that destructor (it once
    read the freed allocator: a sporadic segfault). Many short rounds to hit the window."""
    import threading
    for i in range(40):
        heap = _create(tmp_path / f"h{i}.heap", size=8 << 20)
        table = heap.alloc(8 * 64)

        def work(t, heap=heap, table=table):
            for k in range(8):
                heap.alloc_into(table + 8 * (8 * t + k), 64 + 16 * t)
            for k in range(8):
                heap.free_from(table + 8 * (8 * t + k))
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        heap.close()                        # the workers' destructors may be running now
    heap = _open(tmp_path / "h39.heap")
    assert heap.stats()["live_blocks"] == 1     # the table: every worker's block was freed
    heap.close()
