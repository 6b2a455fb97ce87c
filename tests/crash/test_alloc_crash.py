"""Crash enumeration over allocator workloads: alloc_into, free_from, transactions,
large spans, new runs and growth (FORMAT.md 7.5-7.7; P1-P5).

At every persist point x dirty-unit subsets (8 B, 64 B, 4 KiB/512 B), the image is
opened through normal recovery, then: every acknowledged operation is there and the
in-flight one is all-or-nothing (the slot table equals the model before or after it);
the independent checker finds nothing; the allocated blocks are exactly the slot
table plus the blocks its slots publish (no leak, no dangling word); every published
block has the class its size asks for; and fresh allocations never hand out a
published block (no double allocation).
"""

from __future__ import annotations

import random
import struct

import pytest

from allocator import Heap, HeapFullError, layout
from recovery import crashsim
from recovery.check import check_heap

SLOT_COUNT = 12
SIZES = [24, 100, 700, 2000, 9000, 20000, 70000, 150000]


def _record(path, seed: int, op_count: int):
    """Run random allocator operations on a traced heap; return base image, trace, models."""
    rng = random.Random(seed)
    with Heap.create(path, size=256 << 10, max_size=8 << 20, lane_count=4, backend="none") as heap:
        heap.alloc_into(layout.ROOT_OFF, SLOT_COUNT * 8)
    base = path.read_bytes()
    heap = Heap.open(path, backend="none", trace=True)
    table = heap.root
    slots = [0] * SLOT_COUNT          # published offsets
    sizes = [0] * SLOT_COUNT          # requested sizes
    datas = [b""] * SLOT_COUNT        # bytes a transaction wrote at the start of the block
    models = [(tuple(slots), tuple(sizes), tuple(datas))]
    for i in range(op_count):
        heap.mapping.trace_mark(2 * i)
        k = rng.randrange(SLOT_COUNT)
        dest = table + 8 * k
        kind = rng.choice(["alloc", "alloc", "free", "tx"])
        if kind == "alloc" and not slots[k]:
            size = rng.choice(SIZES)
            slots[k], sizes[k], datas[k] = heap.alloc_into(dest, size), size, b""
        elif kind == "free" and slots[k]:
            heap.free_from(dest)
            slots[k], sizes[k], datas[k] = 0, 0, b""
        else:  # replace slot k and fill another empty slot, atomically
            empty = [j for j in range(SLOT_COUNT) if not slots[j] and j != k]
            with heap.transaction() as tx:
                size = rng.choice(SIZES)
                new = tx.alloc(size)
                data = struct.pack("<Q", i + 1) * 2
                tx.write(new, data)
                if slots[k]:
                    tx.free(slots[k])
                tx.set(dest, new)
                slots[k], sizes[k], datas[k] = new, size, data
                if empty:
                    j = rng.choice(empty)
                    size_j = rng.choice(SIZES[:4])
                    slots[j], sizes[j], datas[j] = tx.alloc_into(table + 8 * j, size_j), size_j, b""
        heap.mapping.trace_mark(2 * i + 1)
        models.append((tuple(slots), tuple(sizes), tuple(datas)))
    trace = heap.mapping.trace_take()
    grew = heap.mapping.size > 256 << 10
    heap.abandon()
    return base, trace, table, models, grew


def _check_image(img, point, table, models, class_size):
    acked = sum(1 for m in point.marks if m % 2 == 1)
    started = sum(1 for m in point.marks if m % 2 == 0)
    allowed = [models[acked]] + ([models[acked + 1]] if started > acked else [])
    heap = Heap.open(img, backend="none")
    try:
        assert heap.root == table, "the slot table is no longer published"
        slots = tuple(heap.load8(table + 8 * k) for k in range(SLOT_COUNT))
        match = [m for m in allowed if m[0] == slots]
        assert match, f"slots {slots} match neither the state before nor after the in-flight op"
        sizes, datas = match[0][1], match[0][2]
        for off, size, data in zip(slots, sizes, datas):
            if off:
                assert heap.block_size(off) == class_size(size), f"block {off} has the wrong class"
                assert heap.read(off, len(data)) == data, f"block {off} lost the bytes its transaction wrote (L5)"
        fresh = [heap.alloc(s) for s in (24, 700, 9000, 70000)]
        assert not set(fresh) & set(slots), "a published block was handed out again"
        for off in fresh:
            heap.free(off)
    finally:
        heap.close()
    rep = check_heap(img)
    assert rep.ok, "; ".join(map(str, rep.findings[:3]))
    published = {table} | {off for off in slots if off}
    assert set(rep.blocks) == published, (
        f"leaked {sorted(set(rep.blocks) - published)[:4]}, dangling {sorted(published - set(rep.blocks))[:4]}")


def _class_size(size: int) -> int:
    from recovery import format as fmt
    for block, _, _ in fmt.class_table():
        if block >= size:
            return block
    return -(-size // fmt.PAGE_SIZE) * fmt.PAGE_SIZE


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_P1_P4_allocator_ops_survive_every_crash_point(tmp_path, seed, crash_totals):
    base, trace, table, models, grew = _record(tmp_path / "a.heap", seed, op_count=24)
    assert grew, "the workload must include growth"

    def check(img, point):
        _check_image(img, point, table, models, _class_size)

    res = crashsim.explore(base, trace, check, workdir=tmp_path, max_subsets=24, seed=seed)
    crash_totals.add(f"allocator ops (seed {seed})", res)
    assert not res.violations, "\n".join(map(str, res.violations[:5]))


def test_P1_reclaiming_empty_runs_is_crash_safe(tmp_path, crash_totals):
    """A heap at its maximum size, full of 9000-byte runs that are then emptied: the next
    large allocation must reclaim them (one commit clears their descriptors). At every
    crash point the pages are either still runs (empty) or free, never both or lost."""
    path = tmp_path / "r.heap"
    with Heap.create(path, size=1 << 20, max_size=1 << 20, lane_count=2, backend="none") as heap:
        table = heap.alloc_into(layout.ROOT_OFF, 8 * 64)
        k = 0
        try:
            while k < 64:
                heap.alloc_into(table + 8 * k, 9000)
                k += 1
        except HeapFullError:   # the heap is full of 9000-byte runs
            pass
        assert k > 8, "the heap must hold several runs"
        for j in range(k):
            heap.free_from(table + 8 * j)
    base = path.read_bytes()
    heap = Heap.open(path, backend="none", trace=True)
    runs_before = sum(c["runs"] for c in heap.stats()["classes"])
    heap.mapping.trace_mark(0)
    big = heap.alloc_into(table, 400_000)           # needs the runs' pages back
    heap.mapping.trace_mark(1)
    assert sum(c["runs"] for c in heap.stats()["classes"]) < runs_before, "no run was reclaimed"
    trace = heap.mapping.trace_take()
    heap.abandon()
    models = [{"big": 0}, {"big": big}]

    def check(img, point):
        acked = sum(1 for m in point.marks if m % 2 == 1)
        started = sum(1 for m in point.marks if m % 2 == 0)
        allowed = [models[acked]["big"]] + ([models[acked + 1]["big"]] if started > acked else [])
        with Heap.open(img, backend="none") as h:
            got = h.load8(table)
            assert got in allowed, f"slot holds {got}, expected one of {allowed}"
            try:
                fresh = h.alloc(9000)
            except HeapFullError:
                assert got, "before the big allocation the emptied runs must serve 9000 bytes"
            else:
                assert fresh != got
                h.free(fresh)
        rep = check_heap(img)
        assert rep.ok, "; ".join(map(str, rep.findings[:3]))
        assert set(rep.blocks) == {table} | ({got} if got else set())

    res = crashsim.explore(base, trace, check, workdir=tmp_path, max_subsets=32, seed=41)
    crash_totals.add("run reclaim", res)
    assert res.points > 4
    assert not res.violations, "\n".join(map(str, res.violations[:5]))
