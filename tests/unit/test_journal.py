"""The barrier journal (FORMAT.md 4.8, 7.11; J1-J3) on a real file with the msync backend.

The central test builds the file a power loss leaves behind when only what the barriers
made durable survived: the heap pages as of the last checkpoint, plus the journal. Open
must replay the journal and give back every acknowledged operation.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from allocator import CorruptHeapError, Heap, layout
from allocator.heapfile import validate_headers
from recovery import format as rformat
from recovery.check import check_heap
from store import Store

JOURNAL = 64 << 10


def _journal_range(path) -> tuple[int, int]:
    raw = Path(path).read_bytes()[:layout.HEADER_SIZE]
    h = layout.Header.unpack_raw(raw)
    return layout.journal_off_for(h["lane_count"], h["lane_size"]), h["journal_size"]


def _records(img: bytes, lo: int, size: int) -> list[tuple[int, int]]:
    """(offset, size) of the current epoch's records, read as FORMAT.md 4.8 says."""
    epoch = struct.unpack_from("<Q", img, lo)[0]
    out, pos = [], lo + layout.JNL_HDR_SIZE
    while pos + 24 <= lo + size:
        crc, n, seq, _count, _ = rformat.JNL_REC_STRUCT.unpack_from(img, pos)
        if n < 24 or n % 8 or n > lo + size - pos or seq != len(out) \
                or rformat.jnl_record_crc32c(epoch, img[pos:pos + n]) != crc:
            break
        out.append((pos, n))
        pos += n
    return out


def _power_loss_image(at_checkpoint: bytes, now: bytes, lo: int, size: int) -> bytes:
    """The heap pages as of the last checkpoint; the header copies and the journal as now
    (both are written back by their barriers: the header in place, the journal by its records)."""
    img = bytearray(at_checkpoint) + bytes(max(0, len(now) - len(at_checkpoint)))   # growth: zero-filled
    img[:layout.ROOT_OFF] = now[:layout.ROOT_OFF]
    img[lo:lo + size] = now[lo:lo + size]
    return bytes(img)


def test_J1_open_replays_the_journal_when_no_heap_page_reached_the_disk(tmp_path):
    path = tmp_path / "s.heap"
    with Store.open(path, initial_size=1 << 20, journal_size=4 * JOURNAL) as s:
        assert s.heap.mapping.backend == "msync" and s.heap.mapping.journal_stats()["in_use"]
        s.put("gone", b"to be deleted")
        s.put("kept", b"old value")
    at_checkpoint = path.read_bytes()           # close checkpointed: the heap as the disk holds it
    values = {f"k{i:03d}": bytes([i]) * (40 + 97 * i) for i in range(40)}
    s = Store.open(path, create=False)
    for k, v in values.items():
        s.put(k, v, content_type="application/x-test")
    s.put("kept", b"new value")
    s.delete("gone")
    with s.batch() as b:
        b.put("batched", b"b" * 300)
        b.delete("k000")
    stats = s.heap.mapping.journal_stats()
    assert stats["records"] >= 40 and stats["checkpoints"] == 0
    s.heap.abandon()                            # the crash
    lo, size = _journal_range(path)
    now = path.read_bytes()
    assert len(_records(now, lo, size)) == stats["records"]
    img = tmp_path / "crashed.heap"
    img.write_bytes(_power_loss_image(at_checkpoint, now, lo, size))
    raw = check_heap(img, at_rest=False)        # the checker replays the journal on its own
    assert raw.ok, raw.findings[:3]
    assert raw.journal_records == stats["records"] and raw.objects == 41
    with Store.open(img, create=False) as s:
        assert s.heap.report.journal_records_replayed == stats["records"]
        del values["k000"]
        assert {k: s.get(k)[0] for k in s} == {**values, "kept": b"new value", "batched": b"b" * 300}
        assert s.head("k005").content_type == "application/x-test"
    assert check_heap(img).ok                   # at rest: the journal was retired (J3)
    assert _records(img.read_bytes(), lo, size) == []


def test_J1_without_the_journal_the_same_image_loses_the_writes(tmp_path):
    """The control for the test above: the heap pages alone do not hold the new objects,
    so the replay is what brings them back."""
    path = tmp_path / "s.heap"
    with Store.open(path, initial_size=1 << 20, journal_size=JOURNAL) as s:
        s.put("kept", b"old value")
    at_checkpoint = path.read_bytes()
    s = Store.open(path, create=False)
    s.put("kept", b"new value")
    s.put("added", b"x" * 100)
    s.heap.abandon()
    lo, size = _journal_range(path)
    img = tmp_path / "crashed.heap"
    img.write_bytes(_power_loss_image(at_checkpoint, path.read_bytes(), lo, size)[:lo] + bytes(size)
                    + at_checkpoint[lo + size:])
    with Store.open(img, create=False) as s:
        assert s.heap.report.journal_records_replayed == 0
        assert {k: s.get(k)[0] for k in s} == {"kept": b"old value"}


def test_J1_a_torn_last_record_ends_the_replay(tmp_path):
    path = tmp_path / "s.heap"
    with Store.open(path, initial_size=1 << 20, journal_size=JOURNAL) as s:
        pass
    at_checkpoint = path.read_bytes()
    s = Store.open(path, create=False)
    for i in range(5):
        s.put(f"k{i}", b"v" * 50)
    records = s.heap.mapping.journal_stats()["records"]
    s.heap.abandon()
    lo, size = _journal_range(path)
    now = bytearray(path.read_bytes())
    recs = _records(now, lo, size)
    last_off, last_size = recs[-1]
    now[last_off + last_size - 3] ^= 0xFF       # the last record's barrier never returned
    img = tmp_path / "crashed.heap"
    img.write_bytes(_power_loss_image(at_checkpoint, bytes(now), lo, size))
    assert check_heap(img, at_rest=False).journal_records == records - 1
    with Store.open(img, create=False) as s:
        assert s.heap.report.journal_records_replayed == records - 1
        got = sorted(s)
    # the last barrier was the last put's commit point: that put is all or nothing
    assert got in (["k0", "k1", "k2", "k3"], ["k0", "k1", "k2", "k3", "k4"])
    assert check_heap(img).ok


@pytest.mark.corrupts_heap
def test_J2_a_record_naming_an_impossible_range_refuses_the_open_and_changes_nothing(tmp_path):
    path = tmp_path / "s.heap"
    with Store.open(path, initial_size=1 << 20, journal_size=JOURNAL) as s:
        pass
    s = Store.open(path, create=False)
    s.put("a", b"1")
    s.put("b", b"2")
    s.heap.abandon()
    lo, size = _journal_range(path)
    img = bytearray(path.read_bytes())
    epoch = struct.unpack_from("<Q", img, lo)[0]
    pos, n = _records(img, lo, size)[0]
    struct.pack_into("<Q", img, pos + 24, lo + 8)     # its first range now points into the journal
    struct.pack_into("<I", img, pos, rformat.jnl_record_crc32c(epoch, bytes(img[pos:pos + n])))
    path.write_bytes(img)
    rep = check_heap(path, at_rest=False)
    assert [f.invariant for f in rep.findings] == ["J2"]
    before = path.read_bytes()
    with pytest.raises(CorruptHeapError) as ei:
        Store.open(path, create=False)
    assert ei.value.field == "journal" and "J2" in str(ei.value)
    assert path.read_bytes() == before


@pytest.mark.corrupts_heap
def test_J3_a_record_of_the_current_epoch_at_rest_is_reported(tmp_path):
    path = tmp_path / "s.heap"
    with Store.open(path, initial_size=1 << 20, journal_size=JOURNAL) as s:
        s.put("a", b"1")
    lo, _ = _journal_range(path)
    img = bytearray(path.read_bytes())
    epoch = struct.unpack_from("<Q", img, lo)[0]
    pos = lo + layout.JNL_HDR_SIZE
    rec = bytearray(struct.pack("<IIQIIQQ", 0, 48, 0, 1, 0, layout.ROOT_OFF, 8) + img[layout.ROOT_OFF:layout.ROOT_OFF + 8])
    struct.pack_into("<I", rec, 0, rformat.jnl_record_crc32c(epoch, bytes(rec)))
    img[pos:pos + len(rec)] = rec
    path.write_bytes(img)
    assert [f.invariant for f in check_heap(path).findings] == ["J3"]
    assert check_heap(path, at_rest=False).ok     # a crash may leave it: it replays to the same bytes


def test_J3_a_full_journal_checkpoints_and_every_object_survives(tmp_path):
    path = tmp_path / "s.heap"
    values = {f"k{i:04d}": bytes([i % 256]) * (i % 700 + 1) for i in range(400)}
    with Store.open(path, initial_size=1 << 20, journal_size=2 * layout.JNL_HDR_SIZE) as s:
        for k, v in values.items():
            s.put(k, v)
        s.put("big", b"z" * 10000)              # larger than the journal: a checkpoint is its barrier
        st = s.heap.mapping.journal_stats()
        assert st["checkpoints"] >= 10 and st["epoch"] >= 10
    with Store.open(path, create=False) as s:
        assert {k: s.get(k)[0] for k in s} == {**values, "big": b"z" * 10000}


def test_J3_no_journal_on_the_flush_or_none_backends_and_none_when_size_is_0(tmp_path):
    with Store.open(tmp_path / "a.heap", initial_size=1 << 20, journal_size=0) as s:
        assert s.heap.mapping.journal_stats() == {"in_use": False, "records": 0, "bytes": 0, "checkpoints": 0,
                                                  "epoch": 0, "dirty_pages": 0}
        assert _journal_range(tmp_path / "a.heap")[1] == 0
    with Store.open(tmp_path / "b.heap", initial_size=1 << 20, durability="os") as s:
        s.put("a", b"1")
        st = s.heap.mapping.journal_stats()
        assert not st["in_use"] and st["records"] == 0
    with Store.open(tmp_path / "b.heap", create=False) as s:    # the same file, msync: journaled
        s.put("b", b"2")
        assert s.heap.mapping.journal_stats()["records"] >= 1


def test_J3_store_default_journal_is_a_quarter_of_the_initial_size_within_bounds(tmp_path):
    for initial, want in ((1 << 20, 256 << 10), (64 << 10, 64 << 10), (1 << 30, 16 << 20)):
        p = tmp_path / f"{initial}.heap"
        Store.open(p, initial_size=initial).close()
        assert _journal_range(p)[1] == want


@pytest.mark.parametrize("bad", [4096, 12288 + 100, 1])
def test_H2_journal_size_must_be_whole_pages_of_at_least_two(tmp_path, bad):
    with pytest.raises(ValueError, match="journal_size"):
        Heap.create(tmp_path / "h.heap", size=1 << 20, journal_size=bad)
    assert not (tmp_path / "h.heap").exists()


@pytest.mark.corrupts_heap
def test_H2_a_header_with_an_impossible_journal_size_is_refused(tmp_path):
    path = tmp_path / "h.heap"
    Heap.create(path, size=1 << 20, journal_size=JOURNAL).close()
    raw = bytearray(path.read_bytes()[:layout.HEADER_SIZE])
    h = layout.Header.from_fields(layout.Header.unpack_raw(bytes(raw))).replace(journal_size=4096)
    with open(path, "r+b") as f:
        f.write(h.pack())
        f.seek(layout.HEADER_B_OFF)
        f.write(h.pack())
    with pytest.raises(CorruptHeapError) as ei:
        validate_headers(path, h.pack(), h.pack(), path.stat().st_size)
    assert ei.value.field == "journal_size"
    assert any(f.invariant == "H2" for f in check_heap(path).findings)
