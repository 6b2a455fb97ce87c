"""The pmem layer (allocator/_native.py over csrc/pmem.c, redo.c, trace.c, crc32c.c).

CRC32C (H3, L3), byte and word access by offset, persist barriers and their count,
the three backends, growth in place, redo commits (L2) and the crash-simulator trace.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import pytest

from allocator import HeapFile, TransactionTooLargeError, _native, layout
from allocator.layout import REDO_OP_ANDNOT, REDO_OP_OR, REDO_OP_SET, ROOT_OFF

SIZE = 256 * 1024
MAX_SIZE = 4 * 1024 * 1024
U64 = 0xFFFF_FFFF_FFFF_FFFF


def _crc32c_ref(data: bytes, crc: int = 0) -> int:
    """Bit-at-a-time CRC32C (Castagnoli, reflected 0x82F63B78): independent of the C code."""
    crc ^= 0xFFFF_FFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFF_FFFF


@pytest.fixture
def heap(tmp_path):
    hf = HeapFile.create(tmp_path / "heap", size=SIZE, max_size=MAX_SIZE, backend="none")
    yield hf
    hf.close()


@pytest.fixture(params=["none", "msync", "flush"])
def any_backend_heap(request, tmp_path):
    """A heap on each backend; the flush backend's file lives under /dev/shm (cache-coherent tmpfs)."""
    backend = request.param
    if backend == "flush":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm for the flush backend")
        d = tempfile.mkdtemp(prefix="pmstore-test-", dir="/dev/shm")
        request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
        path = os.path.join(d, "heap")
    else:
        path = tmp_path / "heap"
    hf = HeapFile.create(path, size=SIZE, max_size=MAX_SIZE, backend=backend)
    yield hf
    hf.close()


def _snapshot(m: _native.Mapping) -> bytes:
    return m.read(0, m.size)


# ----------------------------------------------------------------------------- crc32c
@pytest.mark.parametrize("fn", [_native.crc32c, _native.crc32c_sw], ids=["dispatch", "sw"])
def test_H3_crc32c_known_vector(fn):
    """The standard CRC32C check value, on the hardware-dispatching and the table path."""
    assert fn(b"123456789") == 0xE3069283
    assert fn(b"") == 0


def test_H3_crc32c_uses_the_instruction_when_the_cpu_has_it():
    """crc32c_is_hw agrees with the CPU's sse4_2 flag, so the hw-vs-sw tests compare two paths."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags")
    assert _native.crc32c_is_hw() == ("sse4_2" in flags)


def test_H3_crc32c_hw_equals_sw_on_random_buffers():
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    for n in range(101):
        data = rng.randbytes(n)
        want = _crc32c_ref(data)
        assert _native.crc32c(data) == want, n
        assert _native.crc32c_sw(data) == want, n


def test_H3_crc32c_three_stream_path_on_long_buffers():
    """Buffers of 768 bytes and more go through three interleaved streams joined by a
    shift table (crc32c.c): every length around the stripe edges, at every offset mod 8."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    buf = memoryview(rng.randbytes(3 * 768 + 64))
    lengths = sorted({n + d for n in (768, 1536, 2304) for d in (-9, -8, -1, 0, 1, 7, 8, 9, 63)})
    for start in range(8):
        for n in lengths:
            part = buf[start:start + n]
            want = _crc32c_ref(bytes(part))
            assert _native.crc32c(part) == want, (start, n)
            assert _native.crc32c_sw(part) == want, (start, n)
    big = rng.randbytes(1 << 20)
    assert _native.crc32c(big) == _crc32c_ref(big) == _native.crc32c_sw(big)


def test_H3_crc32c_unaligned_slices():
    """Views starting at every offset mod 8 give the same CRC as a fresh copy of the bytes."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    buf = bytearray(random.Random(seed).randbytes(256))
    mv = memoryview(buf)
    for start in range(9):
        for n in (0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100):
            part = mv[start:start + n]
            want = _crc32c_ref(bytes(part))
            assert _native.crc32c(part) == want, (start, n)
            assert _native.crc32c_sw(part) == want, (start, n)


@pytest.mark.parametrize("fn", [_native.crc32c, _native.crc32c_sw], ids=["dispatch", "sw"])
def test_H3_crc32c_chains(fn):
    """crc(a + b) == crc(b, crc(a)) at every split point, including empty halves."""
    data = bytes(range(37)) * 3
    whole = fn(data)
    for cut in (0, 1, 7, 8, 13, 64, len(data)):
        assert fn(data[cut:], fn(data[:cut])) == whole, cut


# ----------------------------------------------------------------------------- word and byte access
def test_store8_load8_roundtrip(heap):
    m = heap.mapping
    base = heap.header.data_off
    values = [0, 1, U64, 0x0123_4567_89AB_CDEF, 1 << 63]
    for i, v in enumerate(values):
        m.store8(base + 8 * i, v)
    assert [m.load8(base + 8 * i) for i in range(len(values))] == values
    assert m.read(base + 24, 8) == struct.pack("<Q", 0x0123_4567_89AB_CDEF)  # little-endian


@pytest.mark.parametrize("delta", [1, 4, 7])
def test_store8_load8_misaligned_raise_ValueError(heap, delta):
    m = heap.mapping
    off = heap.header.data_off + delta
    before = _snapshot(m)
    with pytest.raises(ValueError):
        m.store8(off, 5)
    with pytest.raises(ValueError):
        m.load8(off)
    assert _snapshot(m) == before


def test_store8_load8_out_of_range_raise_ValueError(heap):
    m = heap.mapping
    size = m.size
    before = _snapshot(m)
    for off in (size, size + 8, size - 4, 1 << 40):
        with pytest.raises(ValueError):
            m.store8(off, 5)
        with pytest.raises(ValueError):
            m.load8(off)
    m.store8(size - 8, 9)   # the last word is inside
    assert m.load8(size - 8) == 9
    assert _snapshot(m)[:-8] == before[:-8]


@pytest.mark.parametrize("call", [
    lambda m: m.store8(-8, 1),
    lambda m: m.load8(-8),
    lambda m: m.write(-1, b"x"),
    lambda m: m.read(-1, 1),
    lambda m: m.persist(-1, 1),
    lambda m: m.view(-1, 1),
], ids=["store8", "load8", "write", "read", "persist", "view"])
def test_negative_offsets_raise_ValueError(heap, call):
    """Every by-offset call reports a negative offset the same way (ValueError), not per C type."""
    with pytest.raises(ValueError):
        call(heap.mapping)


def test_write_read_roundtrip(heap):
    m = heap.mapping
    off = heap.header.data_off + 3             # byte access need not be aligned
    data = bytes(range(256)) * 5
    m.write(off, data)
    assert m.read(off, len(data)) == data
    assert m.read(off - 1, 1) == b"\0"          # neighbours untouched
    assert m.read(off + len(data), 1) == b"\0"
    m.write(off, bytearray(b"xyz"))             # any buffer object
    assert m.read(off, 4) == b"xyz" + data[3:4]


def test_write_read_out_of_range_raise_ValueError(heap):
    m = heap.mapping
    before = _snapshot(m)
    with pytest.raises(ValueError):
        m.write(m.size - 3, b"abcd")
    with pytest.raises(ValueError):
        m.read(m.size - 3, 4)
    with pytest.raises(ValueError):
        m.write_persist(m.size, b"a")
    with pytest.raises(ValueError):
        m.persist(m.size - 3, 4)
    assert _snapshot(m) == before


def test_view_is_read_only(heap):
    v = heap.mapping.view(heap.header.data_off, 16)
    assert v.readonly
    with pytest.raises(TypeError):
        v[0] = 1
    with pytest.raises(TypeError):
        v[0:2] = b"ab"


def test_view_is_zero_copy(heap):
    """A view taken before a write shows the write (it aliases the mapping)."""
    m = heap.mapping
    off = heap.header.data_off
    v = m.view(off, 16)
    assert bytes(v) == bytes(16)
    m.write(off, b"hello")
    m.store8(off + 8, 0x1122334455667788)
    assert bytes(v) == b"hello\0\0\0" + struct.pack("<Q", 0x1122334455667788)


def test_view_out_of_range_raises_ValueError(heap):
    m = heap.mapping
    with pytest.raises(ValueError):
        m.view(m.size - 8, 16)
    assert len(m.view(m.size - 8, 8)) == 8


# ----------------------------------------------------------------------------- persist barriers and backends
def test_persist_count_per_call(any_backend_heap):
    """One barrier per write_persist/persist and per redo commit, none for plain stores;
    quiesce settles the last commit's words, then makes its seal clear durable."""
    hf = any_backend_heap
    m = hf.mapping
    off = hf.header.data_off
    c = m.persist_count
    m.write(off, b"plain")
    m.store8(off + 8, 1)
    assert m.persist_count == c
    m.write_persist(off, b"x" * 100)
    assert m.persist_count == c + 1
    m.persist(off, 100)
    assert m.persist_count == c + 2
    hf.commit([(REDO_OP_SET, off + 128, 7)])
    assert m.persist_count == c + 3
    m.redo_quiesce()
    assert m.persist_count == c + 5
    m.redo_quiesce()                        # nothing left to settle or clear
    assert m.persist_count == c + 5
    hf.commit([(REDO_OP_SET, off + 8 * i, i) for i in range(40)])   # more entries than the on-stack list
    assert m.persist_count == c + 7         # too many words to defer: commit point, then the words
    hf.commit([])
    assert m.persist_count == c + 7
    assert m.load8(off + 8 * 39) == 39


def test_backend_is_the_one_asked_for_and_persists_to_the_file(any_backend_heap):
    """msync and flush (and none) all put the bytes into the file: another descriptor reads them."""
    hf = any_backend_heap
    off = hf.header.data_off + 64
    payload = os.urandom(300)
    hf.mapping.write_persist(off, payload)
    hf.commit([(REDO_OP_SET, ROOT_OFF, off)])
    fd = os.open(hf.path, os.O_RDONLY)
    try:
        assert os.pread(fd, len(payload), off) == payload
        assert struct.unpack("<Q", os.pread(fd, 8, ROOT_OFF))[0] == off
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", ["msync", "flush", "none"])
def test_backend_name_reported(tmp_path, backend):
    d = tmp_path
    if backend == "flush":
        d = tempfile.mkdtemp(prefix="pmstore-test-", dir="/dev/shm")
    try:
        with HeapFile.create(os.path.join(d, "heap"), size=SIZE, max_size=MAX_SIZE, backend=backend) as hf:
            assert hf.mapping.backend == backend
    finally:
        if backend == "flush":
            shutil.rmtree(d, ignore_errors=True)


def test_flush_kind_is_known():
    assert _native.flush_kind() in ("clwb", "clflushopt", "clflush")


# ----------------------------------------------------------------------------- growth
def test_grow_keeps_offsets_and_zero_fills(heap):
    m = heap.mapping
    off = heap.header.data_off
    old = m.size
    m.write(off, b"before growth")
    m.store8(old - 8, 0xDEAD_BEEF)
    v = m.view(off, 13)                       # a view taken before growth stays valid
    new = old + 256 * 1024
    m.grow(new)
    assert m.size == new
    assert os.path.getsize(heap.path) == new
    assert m.read(off, 13) == b"before growth"
    assert bytes(v) == b"before growth"
    assert m.load8(old - 8) == 0xDEAD_BEEF
    assert m.read(old, new - old) == bytes(new - old)
    m.write(old + 100, b"after growth")
    m.store8(new - 8, 42)
    assert m.read(old + 100, 12) == b"after growth"
    assert m.load8(new - 8) == 42
    heap.commit([(REDO_OP_SET, new - 16, 77)])  # redo targets may lie in the grown tail
    assert m.load8(new - 16) == 77
    fd = os.open(heap.path, os.O_RDONLY)
    try:
        assert os.pread(fd, 12, old + 100) == b"after growth"
    finally:
        os.close(fd)


def test_grow_to_max_size_and_beyond(heap):
    m = heap.mapping
    with pytest.raises(ValueError):
        m.grow(MAX_SIZE + 4096)
    assert m.size == SIZE
    assert os.path.getsize(heap.path) == SIZE
    m.grow(MAX_SIZE)
    assert m.size == MAX_SIZE
    m.store8(MAX_SIZE - 8, 3)
    assert m.load8(MAX_SIZE - 8) == 3


@pytest.mark.parametrize("new", [SIZE, SIZE - 4096, SIZE + 100])
def test_grow_rejects_shrink_and_unaligned(heap, new):
    with pytest.raises(ValueError):
        heap.mapping.grow(new)
    assert heap.mapping.size == SIZE
    assert os.path.getsize(heap.path) == SIZE


# ----------------------------------------------------------------------------- redo commits
def test_L2_commit_applies_set_or_andnot(heap):
    w = heap.header.data_off
    heap.commit([(REDO_OP_SET, w, 0b1100), (REDO_OP_SET, w + 8, U64)])
    assert heap.mapping.load8(w) == 0b1100
    assert heap.mapping.load8(w + 8) == U64
    heap.commit([(REDO_OP_OR, w, 0b0011)])
    assert heap.mapping.load8(w) == 0b1111
    heap.commit([(REDO_OP_ANDNOT, w, 0b0101), (REDO_OP_ANDNOT, w + 8, 1 << 63)])
    assert heap.mapping.load8(w) == 0b1010
    assert heap.mapping.load8(w + 8) == U64 >> 1


def test_L2_entries_of_one_commit_apply_in_order(heap):
    w = heap.header.data_off
    heap.commit([(REDO_OP_SET, w, 0xF0), (REDO_OP_OR, w, 0x0F), (REDO_OP_ANDNOT, w, 0x3C)])
    assert heap.mapping.load8(w) == 0xC3


def test_commit_sets_root(heap):
    heap.commit([(REDO_OP_SET, ROOT_OFF, heap.header.data_off)])
    assert heap.root == heap.header.data_off


def test_commit_at_capacity_succeeds_and_one_more_raises(heap):
    m = heap.mapping
    cap = heap.redo_capacity
    assert cap == (layout.DEFAULT_LANE_SIZE - layout.LANE_HDR_SIZE) // layout.REDO_ENTRY_SIZE
    base = heap.header.data_off
    before = _snapshot(m)
    with pytest.raises(TransactionTooLargeError):
        heap.commit([(REDO_OP_SET, base + 8 * i, i + 1) for i in range(cap + 1)])
    assert _snapshot(m) == before
    heap.commit([(REDO_OP_SET, base + 8 * i, i + 1) for i in range(cap)])
    assert [m.load8(base + 8 * i) for i in range(cap + 1)] == [*range(1, cap + 1), 0]


def _forbidden_offsets(hf):
    h = hf.header
    redo_end = h.redo_off + h.lane_count * h.lane_size
    return {
        "header_a": 0, "header_a_crc": 248, "header_b": 4096, "below_root": ROOT_OFF - 8,
        "first_lane": h.redo_off, "lane_seal_3": h.redo_off + 3 * h.lane_size,
        "last_lane_word": redo_end - 8, "file_end": h.file_size, "far": 1 << 50,
    }


@pytest.mark.parametrize("where", ["header_a", "header_a_crc", "header_b", "below_root", "first_lane",
                                   "lane_seal_3", "last_lane_word", "file_end", "far"])
def test_L2_commit_rejects_forbidden_targets(heap, where):
    """Headers, redo lanes and words past the end are refused, and a valid entry beside them is not applied."""
    off = _forbidden_offsets(heap)[where]
    m = heap.mapping
    before = _snapshot(m)
    with pytest.raises(ValueError):
        heap.commit([(REDO_OP_SET, heap.header.data_off, 1), (REDO_OP_SET, off, 0xBAD)])
    assert _snapshot(m) == before


@pytest.mark.corrupts_heap  # writes raw words, the root included (R1)
def test_L2_commit_accepts_boundary_targets(heap):
    h = heap.header
    redo_end = h.redo_off + h.lane_count * h.lane_size
    offs = [ROOT_OFF, ROOT_OFF + 8, h.redo_off - 8, redo_end, h.file_size - 8]
    heap.commit([(REDO_OP_SET, o, i + 1) for i, o in enumerate(offs)])
    assert [heap.mapping.load8(o) for o in offs] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("op", [3, 4, 7])
def test_L2_commit_rejects_unknown_op(heap, op):
    m = heap.mapping
    before = _snapshot(m)
    with pytest.raises(ValueError, match="op"):
        heap.commit([(REDO_OP_SET, heap.header.data_off, 1), (op, heap.header.data_off + 8, 1)])
    assert _snapshot(m) == before


@pytest.mark.parametrize("op", [8, 9, 16, -1])
def test_L2_commit_rejects_op_that_does_not_fit_three_bits(heap, op):
    """An op outside 0..7 must not spill into the offset bits and hit another word."""
    m = heap.mapping
    before = _snapshot(m)
    with pytest.raises(ValueError):
        heap.commit([(op, ROOT_OFF, 7)])
    assert _snapshot(m) == before


@pytest.mark.parametrize("delta", [1, 2, 4])
def test_L2_commit_rejects_misaligned_target(heap, delta):
    """A misaligned offset must be refused, not reread as another op on the aligned word below."""
    m = heap.mapping
    before = _snapshot(m)
    with pytest.raises(ValueError):
        heap.commit([(REDO_OP_SET, ROOT_OFF + delta, 5)])
    assert _snapshot(m) == before


def test_L2_concurrent_commits_on_disjoint_words(heap):
    """8 threads x 50 commits (SET and OR on their own words) all apply; 1 barrier each."""
    threads_n, rounds, words = 8, 50, 4
    base = heap.header.data_off
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    c0 = heap.mapping.persist_count

    def worker(t: int) -> None:
        try:
            start.wait()
            mine = base + t * words * 8
            for r in range(rounds):
                heap.commit([(REDO_OP_SET, mine, (t << 32) | r),
                             (REDO_OP_SET, mine + 8, r),
                             (REDO_OP_OR, mine + 16, 1 << (r % 64))])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    assert not errors
    assert not any(t.is_alive() for t in ts)
    m = heap.mapping
    for t in range(threads_n):
        mine = base + t * words * 8
        assert m.load8(mine) == (t << 32) | (rounds - 1)
        assert m.load8(mine + 8) == rounds - 1
        assert m.load8(mine + 16) == (1 << rounds) - 1
        assert m.load8(mine + 24) == 0
    n = threads_n * rounds
    # one barrier per commit; a thread that finds every lane taken settles them (rare)
    assert n <= m.persist_count - c0 <= n + n // 20
    m.redo_quiesce()
    h = heap.header
    seals = [m.load8(h.redo_off + i * h.lane_size) for i in range(h.lane_count)]
    assert seals == [0] * h.lane_count      # every lane invalidated once its words are durable


# ----------------------------------------------------------------------------- trace
def _parse_trace(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    """(kind, size, off, data) records: u32 kind, u32 size, u64 off, WRITE data padded to 8."""
    out, p = [], 0
    while p < len(raw):
        kind, size, off = struct.unpack_from("<IIQ", raw, p)
        p += 16
        data = b""
        if kind == _native.TRACE_WRITE:
            body = (size + 7) & ~7
            data, pad = raw[p:p + size], raw[p + size:p + body]
            assert pad == bytes(body - size), "WRITE padding must be zero"
            p += body
        out.append((kind, size, off, data))
    assert p == len(raw)
    return out


def test_trace_write_then_persist(heap):
    m = heap.mapping
    off = heap.header.data_off + 5
    m.trace_start()
    m.write(off, b"hello, trace!")          # 13 bytes: padded to 16
    m.persist(off, 13)
    recs = _parse_trace(m.trace_take())
    assert recs == [
        (_native.TRACE_WRITE, 13, off, b"hello, trace!"),
        (_native.TRACE_FLUSH, 13, off, b""),
        (_native.TRACE_FENCE, 0, 0, b""),
    ]
    assert m.trace_take() == b""            # take empties the log


def test_trace_store8_write_persist_and_mark(heap):
    m = heap.mapping
    off = heap.header.data_off
    m.trace_start()
    m.store8(off, 0x0102030405060708)
    m.trace_mark(99)
    m.write_persist(off + 8, b"abcdefgh")
    recs = _parse_trace(m.trace_take())
    assert recs == [
        (_native.TRACE_WRITE, 8, off, struct.pack("<Q", 0x0102030405060708)),
        (_native.TRACE_MARK, 0, 99, b""),
        (_native.TRACE_WRITE, 8, off + 8, b"abcdefgh"),
        (_native.TRACE_FLUSH, 8, off + 8, b""),
        (_native.TRACE_FENCE, 0, 0, b""),
    ]


def test_a_barrier_writes_each_line_back_once(heap):
    """Four words of one commit on one line, and one on the next line: the barrier that
    makes them durable (the next commit's) names the first line once, the second once,
    and nothing else of theirs. What the trace names is what CLWB writes back (pmem.c
    written_back), and the crash suites check it (mutant lineskip)."""
    m = heap.mapping
    w = heap.header.data_off + 4096
    words = [w, w + 8, w + 16, w + 56, w + 64]
    m.trace_start()
    heap.commit([(REDO_OP_SET, off, i + 1) for i, off in enumerate(words)])
    heap.commit([(REDO_OP_SET, heap.header.data_off, 1)])
    recs = _parse_trace(m.trace_take())
    fences = [i for i, r in enumerate(recs) if r[0] == _native.TRACE_FENCE]
    assert len(fences) == 2
    flushed = [(r[2], r[1]) for r in recs[fences[0]:fences[1]] if r[0] == _native.TRACE_FLUSH]
    mine = [(off, size) for off, size in flushed if w <= off < w + 128]
    assert mine == [(w, 8), (w + 64, 8)], flushed
    assert {m.load8(off) for off in words} == {1, 2, 3, 4, 5}


def test_L3_L4_trace_of_a_commit_follows_the_protocol(heap):
    """Log then seal, barrier (commit point), apply; the applied word is flushed by the
    next commit's barrier, and only after that barrier is the first seal cleared."""
    m = heap.mapping
    h = heap.header
    w = h.data_off
    m.trace_start()
    heap.commit([(REDO_OP_SET, w, 0xABCD)])
    heap.commit([(REDO_OP_SET, w + 64, 1)])
    recs = _parse_trace(m.trace_take())
    kinds = [r[0] for r in recs]
    fences = [i for i, k in enumerate(kinds) if k == _native.TRACE_FENCE]
    assert len(fences) == 2                 # one barrier per commit
    seal_i = next(i for i, r in enumerate(recs)
                  if r[0] == _native.TRACE_WRITE and r[2] >= h.redo_off and r[2] % h.lane_size == 0
                  and r[3] != bytes(8))
    lane_off = recs[seal_i][2]
    entries_i = next(i for i, r in enumerate(recs) if r[0] == _native.TRACE_WRITE and r[2] == lane_off + layout.LANE_HDR_SIZE)
    word_i = next(i for i, r in enumerate(recs) if r[0] == _native.TRACE_WRITE and r[2] == w)
    assert recs[entries_i][3] == layout.pack_redo_entry(REDO_OP_SET, w, 0xABCD)
    assert entries_i < seal_i < fences[0] < word_i < fences[1]
    assert any(r[0] == _native.TRACE_FLUSH and r[2] <= lane_off and r[2] + r[1] >= lane_off + 8
               for r in recs[seal_i:fences[0]])
    assert any(r[0] == _native.TRACE_FLUSH and r[2] <= w and r[2] + r[1] >= w + 8
               for r in recs[word_i:fences[1]])
    clear_i = next(i for i, r in enumerate(recs) if r[0] == _native.TRACE_WRITE and r[2] == lane_off and r[3] == bytes(8))
    assert fences[1] < clear_i              # the seal outlives the barrier that made its word durable (L4)
