"""The heap file (allocator/heapfile.py): create/open/close, header validation (H2-H5),
locking, and redo-lane recovery at open (L2, L3).

Every refusal test also checks that the file's bytes are unchanged: open must never
rewrite a file it refuses.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from heaputil import poke

from allocator import (
    CorruptHeapError,
    ForeignFileError,
    HeapFile,
    HeapFormatError,
    HeapLockedError,
    TruncatedHeapError,
    UnsupportedVersionError,
    _native,
    layout,
)
from allocator.heapfile import MIN_FILE_SIZE, validate_headers
from allocator.layout import (
    HEADER_A_OFF,
    HEADER_B_OFF,
    HEADER_SIZE,
    REDO_OP_OR,
    REDO_OP_SET,
    ROOT_OFF,
    Header,
)

SIZE = 256 * 1024
MAX_SIZE = 4 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def _create(path, **kw) -> HeapFile:
    return HeapFile.create(path, size=SIZE, max_size=MAX_SIZE, backend="none", **kw)


def _open(path) -> HeapFile:
    return HeapFile.open(path, backend="none")


@pytest.fixture
def heap_path(tmp_path) -> Path:
    """A closed heap whose root points at data_off and whose first data word is 0x1234."""
    path = tmp_path / "heap"
    with _create(path) as hf:
        hf.commit([(REDO_OP_SET, ROOT_OFF, hf.header.data_off), (REDO_OP_SET, hf.header.data_off, 0x1234)])
    return path


def _header(path, copy: str = "A") -> dict:
    with open(path, "rb") as f:
        f.seek(HEADER_A_OFF if copy == "A" else HEADER_B_OFF)
        return Header.unpack_raw(f.read(HEADER_SIZE))


def _headers_of(path) -> tuple[Header, str | None]:
    with open(path, "rb") as f:
        raw = f.read()
    return validate_headers(path, raw[HEADER_A_OFF:HEADER_A_OFF + HEADER_SIZE],
                            raw[HEADER_B_OFF:HEADER_B_OFF + HEADER_SIZE], len(raw))



def _flip(path, off: int) -> None:
    with open(path, "rb") as f:
        f.seek(off)
        b = f.read(1)[0]
    poke(path, off, bytes([b ^ 0xFF]))


def _repack(path, copies=("A", "B"), **changes) -> None:
    """Rewrite header copies with `changes` and a correct CRC (a well-formed but different header)."""
    for c in copies:
        raw = Header.from_fields(_header(path, c)).replace(**changes).pack()
        poke(path, HEADER_A_OFF if c == "A" else HEADER_B_OFF, raw)


def _refused(path, exc_type, field: str) -> HeapFormatError:
    """Open must raise exc_type naming `field` and leave every byte of the file as it was."""
    before = Path(path).read_bytes()
    with pytest.raises(exc_type) as ei:
        _open(path)
    assert type(ei.value) is exc_type
    assert ei.value.field == field
    assert f": {field}: " in str(ei.value)
    assert Path(path).read_bytes() == before
    with pytest.raises(exc_type):   # the lock was released: a second try gives the same answer
        _open(path)
    return ei.value



# ----------------------------------------------------------------------------- create / open / close
def test_create_open_roundtrip_preserves_words_and_root(heap_path):
    h0 = Header.from_fields(_header(heap_path))
    with _open(heap_path) as hf:
        assert hf.root == hf.header.data_off
        assert hf.mapping.load8(hf.header.data_off) == 0x1234
        assert hf.header.uuid == h0.uuid
        assert hf.header.file_size == SIZE
        assert hf.header.max_size == MAX_SIZE
        assert hf.mapping.size == SIZE
        hf.commit([(REDO_OP_OR, hf.header.data_off, 0x1)])
    with _open(heap_path) as hf:
        assert hf.mapping.load8(hf.header.data_off) == 0x1235
        assert hf.root == hf.header.data_off


def test_new_heap_has_zero_root_and_consistent_layout(tmp_path):
    with _create(tmp_path / "heap") as hf:
        h = hf.header
        assert hf.root == 0
        assert h.meta_off == layout.meta_off_for(h.lane_count, h.lane_size)
        assert h.data_off % layout.PAGE_SIZE == 0 and h.data_off >= h.meta_off
        assert os.path.getsize(hf.path) == h.file_size == SIZE
    assert sorted(os.listdir(tmp_path)) == ["heap"]   # no temporary file left behind


def test_create_on_existing_heap_raises_FileExistsError(heap_path):
    before = heap_path.read_bytes()
    with pytest.raises(FileExistsError):
        _create(heap_path)
    assert heap_path.read_bytes() == before
    assert sorted(os.listdir(heap_path.parent)) == ["heap"]


def test_create_on_existing_other_file_raises_FileExistsError(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("keep me\n")
    with pytest.raises(FileExistsError):
        _create(p)
    assert p.read_text() == "keep me\n"


def test_was_clean_after_close_and_not_after_abandon(heap_path):
    with _open(heap_path) as hf:
        assert hf.report.was_clean is True
        assert _header(heap_path)["clean_shutdown"] == 0     # marked open on disk while held
    hf = _open(heap_path)
    hf.abandon()                                             # simulated crash
    assert _header(heap_path)["clean_shutdown"] == 0
    with _open(heap_path) as hf:
        assert hf.report.was_clean is False
        assert hf.mapping.load8(hf.header.data_off) == 0x1234
    with _open(heap_path) as hf:
        assert hf.report.was_clean is True


def test_H4_generation_increases_on_every_header_write(heap_path):
    g_closed = _header(heap_path)["generation"]
    hf = _open(heap_path)
    g_open = _header(heap_path)["generation"]
    assert hf.header.generation == g_open > g_closed
    hf.close()
    a, b = _header(heap_path, "A"), _header(heap_path, "B")
    assert a["generation"] == b["generation"] > g_open
    assert a["crc_ok"] and b["crc_ok"]


def test_close_is_idempotent(heap_path):
    hf = _open(heap_path)
    hf.close()
    g = _header(heap_path)["generation"]
    hf.close()
    assert hf.closed
    assert _header(heap_path)["generation"] == g


# ----------------------------------------------------------------------------- refusals (H2-H5)
@pytest.mark.parametrize("kind", ["random", "text"])
def test_foreign_file_refused_on_magic(tmp_path, kind):
    p = tmp_path / "foreign"
    if kind == "random":
        p.write_bytes(b"\x01" + os.urandom(100 * 1024 - 1))  # cannot start with the magic
    else:
        p.write_bytes((b"the quick brown fox jumps over the lazy dog\n" * 2400)[:100 * 1024])
    _refused(p, ForeignFileError, "magic")


@pytest.mark.parametrize("content", [b"", b"hello", b"x" * (MIN_FILE_SIZE - 1)], ids=["empty", "5B", "min-1"])
def test_tiny_foreign_file_refused_on_magic(tmp_path, content):
    p = tmp_path / "tiny"
    p.write_bytes(content)
    _refused(p, ForeignFileError, "magic")


def test_H5_tiny_file_with_magic_is_truncated(tmp_path):
    p = tmp_path / "tiny"
    p.write_bytes(layout.MAGIC + bytes(100))
    _refused(p, TruncatedHeapError, "file_size")


def test_H5_heap_cut_below_header_copy_b_is_truncated(heap_path):
    os.truncate(heap_path, MIN_FILE_SIZE - 1)
    _refused(heap_path, TruncatedHeapError, "file_size")


@pytest.mark.parametrize("new_size", [SIZE - 4096, 65536, 8192 + 4096])
@pytest.mark.corrupts_heap
def test_H5_truncated_heap_refused_on_file_size(heap_path, new_size):
    os.truncate(heap_path, new_size)
    _refused(heap_path, TruncatedHeapError, "file_size")


@pytest.mark.corrupts_heap
def test_H3_both_header_crcs_broken(heap_path):
    _flip(heap_path, HEADER_A_OFF + 40)
    _flip(heap_path, HEADER_B_OFF + 40)
    _refused(heap_path, CorruptHeapError, "crc32c")


@pytest.mark.parametrize("rel", [0, 8, 100, 200, 251, 252, 255], ids=lambda r: f"byte{r}")
@pytest.mark.corrupts_heap
def test_H3_crc_covers_every_header_byte(heap_path, rel):
    """A flip anywhere in [0, 256) of both copies is caught (the magic too: with both gone it is foreign)."""
    _flip(heap_path, HEADER_A_OFF + rel)
    _flip(heap_path, HEADER_B_OFF + rel)
    if rel < 8:
        _refused(heap_path, ForeignFileError, "magic")
    else:
        _refused(heap_path, CorruptHeapError, "crc32c")


@pytest.mark.parametrize("broken", ["A", "B"])
def test_H4_one_broken_copy_is_restored(heap_path, broken):
    off = HEADER_A_OFF if broken == "A" else HEADER_B_OFF
    _flip(heap_path, off + 40)
    _, restored = _headers_of(heap_path)
    assert restored == broken
    with _open(heap_path) as hf:
        assert hf.report.header_copy_restored == broken
        assert hf.report.was_clean is True
        assert hf.header.file_size == SIZE
        assert hf.root == hf.header.data_off
    header, restored = _headers_of(heap_path)
    assert restored is None
    a, b = _header(heap_path, "A"), _header(heap_path, "B")
    assert a["crc_ok"] and b["crc_ok"]
    assert a == b
    assert header.file_size == SIZE


def test_H4_stale_copy_loses_to_newer_generation(heap_path):
    """Copy A valid but one generation older (torn update between A and B is the other way round)."""
    g = _header(heap_path, "B")["generation"]
    _repack(heap_path, copies=("A",), generation=g - 1, clean_shutdown=0)
    header, restored = _headers_of(heap_path)
    assert (header.generation, header.clean_shutdown, restored) == (g, 1, "A")
    with _open(heap_path) as hf:
        assert hf.report.header_copy_restored == "A"
        assert hf.report.was_clean is True
    assert _headers_of(heap_path)[1] is None


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("version", [1, 3])   # 1: the layout before the journal field
def test_unsupported_format_version(heap_path, version):
    _repack(heap_path, format_version=version)
    err = _refused(heap_path, UnsupportedVersionError, "format_version")
    assert f"file has format {version}" in str(err)
    assert ("an older pmstore" if version == 1 else "a newer pmstore") in str(err)    # what to do about it


def test_unsupported_format_version_in_one_copy_only(heap_path):
    """A well-formed copy from another format is never silently ignored in favour of the other."""
    _repack(heap_path, copies=("B",), format_version=3)
    _refused(heap_path, UnsupportedVersionError, "format_version")


@pytest.mark.parametrize("field, value", [
    ("page_size", 4096),
    ("header_size", 128),
    ("lane_count", 0),
    ("lane_size", 1000),
    ("root_off", 16384),
    ("redo_off", 16384),
    ("meta_off", 81920),
    ("data_off", 100000),
    ("file_size", SIZE + 1),
    ("max_size", 65536),
    ("clean_shutdown", 2),
])
@pytest.mark.corrupts_heap
def test_H2_bad_field_with_valid_crc(heap_path, field, value):
    _repack(heap_path, **{field: value})
    _refused(heap_path, CorruptHeapError, field)


@pytest.mark.corrupts_heap
def test_H2_page_size_changed(heap_path):
    _repack(heap_path, page_size=layout.PAGE_SIZE * 2)
    err = _refused(heap_path, CorruptHeapError, "page_size")
    assert str(layout.PAGE_SIZE * 2) in str(err)


# ----------------------------------------------------------------------------- locking
def test_second_open_in_same_process_is_locked(heap_path):
    hf = _open(heap_path)
    try:
        before = heap_path.read_bytes()
        with pytest.raises(HeapLockedError) as ei:
            _open(heap_path)
        assert ei.value.pid == os.getpid()
        assert str(os.getpid()) in str(ei.value)
        with pytest.raises(HeapLockedError):      # the refused open did not drop the holder's lock
            _open(heap_path)
        assert heap_path.read_bytes() == before
    finally:
        hf.close()
    with _open(heap_path) as again:
        assert again.report.was_clean is True


def test_create_does_not_bypass_the_lock(heap_path):
    with _open(heap_path), pytest.raises(FileExistsError):
        _create(heap_path)


_HOLDER = """
import sys
from allocator import HeapFile
hf = HeapFile.open(sys.argv[1], backend="none")
print("ready", flush=True)
sys.stdin.readline()
hf.close()
print("closed", flush=True)
"""


def test_lock_held_by_another_process_names_its_pid(heap_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(heap_path)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(HeapLockedError) as ei:
            _open(heap_path)
        assert ei.value.pid == proc.pid
        assert f"process {proc.pid}" in str(ei.value)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with _open(heap_path) as hf:
        assert hf.report.was_clean is True
        assert hf.root == hf.header.data_off


# ----------------------------------------------------------------------------- redo recovery at open (L2, L3)
def _lane_off(path, lane: int) -> int:
    h = _header(path)
    return h["redo_off"] + lane * h["lane_size"]


def _seal(lane: int, seq: int, packed: bytes) -> int:
    """As seal_crc in csrc/redo.c: CRC32C over <QQ ((count << 32) | lane, seq) then the entries."""
    count = len(packed) // layout.REDO_ENTRY_SIZE
    crc = _native.crc32c(packed, _native.crc32c(struct.pack("<QQ", (count << 32) | lane, seq)))
    return (crc << 32) | count


def _write_lane(path, lane: int, seq: int, entries, *, seal: int | None = None) -> None:
    """A sealed lane written by hand into a closed heap: what a crash after the commit point leaves."""
    # raw packing: these lanes may hold entries pack_redo_entry refuses (an unknown op)
    packed = b"".join(struct.pack("<QQ", off | op, v) for op, off, v in entries)
    lo = _lane_off(path, lane)
    poke(path, lo + layout.LANE_HDR_SIZE, packed)
    poke(path, lo + 8, struct.pack("<Q", seq))
    poke(path, lo, struct.pack("<Q", _seal(lane, seq, packed) if seal is None else seal))


def _word(path, off: int) -> int:
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack("<Q", f.read(8))[0]


def test_L3_sealed_lane_is_replayed_at_open(heap_path):
    d = _header(heap_path)["data_off"]
    _write_lane(heap_path, 3, 7, [(REDO_OP_SET, d + 8, 0xABC), (REDO_OP_OR, d, 0x5), (REDO_OP_SET, ROOT_OFF, d + 8)])
    with _open(heap_path) as hf:
        r = hf.report
        assert (r.lanes_replayed, r.lanes_discarded, r.entries_applied) == (1, 0, 3)
        assert hf.mapping.load8(d + 8) == 0xABC
        assert hf.mapping.load8(d) == 0x1234 | 0x5
        assert hf.root == d + 8
        assert hf.mapping.load8(_lane_off(heap_path, 3)) == 0     # the lane is emptied after replay
        hf.commit([(REDO_OP_SET, d + 16, 1)])                     # and the heap takes new commits
    assert _word(heap_path, _lane_off(heap_path, 3)) == 0
    with _open(heap_path) as hf:
        assert (hf.report.lanes_replayed, hf.report.lanes_discarded) == (0, 0)
        assert hf.mapping.load8(d + 8) == 0xABC


def test_L2_sealed_lanes_replay_in_seq_order(heap_path):
    """Two sealed lanes writing one word: the higher seq wins, whatever the lane order."""
    d = _header(heap_path)["data_off"]
    _write_lane(heap_path, 0, 9, [(REDO_OP_SET, d, 0xB)])
    _write_lane(heap_path, 5, 4, [(REDO_OP_SET, d, 0xA), (REDO_OP_SET, d + 8, 0xA)])
    with _open(heap_path) as hf:
        assert (hf.report.lanes_replayed, hf.report.entries_applied) == (2, 3)
        assert hf.mapping.load8(d) == 0xB
        assert hf.mapping.load8(d + 8) == 0xA


@pytest.mark.parametrize("how", ["crc", "count_zero", "count_too_big", "entry_changed"])
def test_L3_lane_with_bad_seal_is_discarded(heap_path, how):
    d = _header(heap_path)["data_off"]
    entries = [(REDO_OP_SET, d, 0xBAD), (REDO_OP_SET, ROOT_OFF, 0)]
    packed = b"".join(layout.pack_redo_entry(*e) for e in entries)
    good = _seal(2, 11, packed)
    seal = {"crc": good ^ (1 << 40), "count_zero": good & ~0xFFFF_FFFF,
            "count_too_big": (good & ~0xFFFF_FFFF) | 10_000, "entry_changed": good}[how]
    _write_lane(heap_path, 2, 11, entries, seal=seal)
    if how == "entry_changed":   # torn entries under an intact seal
        poke(heap_path, _lane_off(heap_path, 2) + layout.LANE_HDR_SIZE + 8, struct.pack("<Q", 0xBAE))
    with _open(heap_path) as hf:
        r = hf.report
        assert (r.lanes_replayed, r.lanes_discarded, r.entries_applied) == (0, 1, 0)
        assert hf.mapping.load8(d) == 0x1234
        assert hf.root == d
        assert hf.mapping.load8(_lane_off(heap_path, 2)) == 0
    with _open(heap_path) as hf:
        assert hf.report.lanes_discarded == 0


@pytest.mark.parametrize("target", ["past_end", "header", "redo_lane", "bad_op"])
@pytest.mark.corrupts_heap
def test_L2_sealed_lane_with_impossible_entry_is_refused(heap_path, target):
    """A valid seal over an impossible entry: CorruptHeapError naming the lane; nothing applied."""
    h = _header(heap_path)
    d = h["data_off"]
    bad = {"past_end": (REDO_OP_SET, h["file_size"], 1), "header": (REDO_OP_SET, 40, 1),
           "redo_lane": (REDO_OP_SET, h["redo_off"] + h["lane_size"], 1), "bad_op": (5, d, 1)}[target]
    _write_lane(heap_path, 1, 3, [(REDO_OP_SET, d, 0x999)])           # a good lane beside it
    _write_lane(heap_path, 6, 4, [(REDO_OP_SET, d + 8, 0x777), bad])
    err = _refused(heap_path, CorruptHeapError, "lane[6]")
    assert err.path == str(heap_path)
    assert _word(heap_path, d) == 0x1234
    assert _word(heap_path, d + 8) == 0


def _trace_writes(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(off, size, data) of the WRITE records of a trace (u32 kind, u32 size, u64 off, data padded to 8)."""
    out, p = [], 0
    while p < len(raw):
        kind, size, off = struct.unpack_from("<IIQ", raw, p)
        p += 16
        if kind == _native.TRACE_WRITE:
            out.append((off, size, raw[p:p + size]))
            p += (size + 7) & ~7
    return out


@pytest.mark.parametrize("broken", ["A", "B"])
def test_H4_open_rewrites_the_broken_copy_first(heap_path, broken):
    """The copy open found bad is written before the good one, so a torn write never leaves none valid."""
    _flip(heap_path, (HEADER_A_OFF if broken == "A" else HEADER_B_OFF) + 40)
    with HeapFile.open(heap_path, backend="none", trace=True) as hf:
        writes = [off for off, size, _ in _trace_writes(hf.mapping.trace_take()) if size == HEADER_SIZE]
    assert writes == ([HEADER_A_OFF, HEADER_B_OFF] if broken == "A" else [HEADER_B_OFF, HEADER_A_OFF])


def test_L2_recovery_empties_each_lane_right_after_its_replay(heap_path):
    """Replay is in seq order and each lane's seal is cleared before the next lane is applied."""
    d = _header(heap_path)["data_off"]
    _write_lane(heap_path, 4, 20, [(REDO_OP_SET, d + 16, 2)])
    _write_lane(heap_path, 1, 10, [(REDO_OP_SET, d + 8, 1)])
    lane1, lane4 = _lane_off(heap_path, 1), _lane_off(heap_path, 4)
    with HeapFile.open(heap_path, backend="none", trace=True) as hf:
        writes = _trace_writes(hf.mapping.trace_take())
    order = [(off, data) for off, _, data in writes if off in (d + 8, d + 16, lane1, lane4)]
    assert order == [(d + 8, struct.pack("<Q", 1)), (lane1, bytes(8)),
                     (d + 16, struct.pack("<Q", 2)), (lane4, bytes(8))]
