"""A full file system (not a heap at its max_size): the heap lives on a small tmpfs, so
posix_fallocate really fails with ENOSPC when it grows (allocator/heap.py `_grow`,
pmem.c `pm_heap_grow`) or is created (heapfile.py). Each must raise HeapFullError that
says so, change nothing, keep every acknowledged byte, and work again once room is made.

Mounting needs root, as CI has; where it cannot mount, a test says why it did not run.
"""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from allocator import Heap, HeapFullError
from recovery.check import check_heap, format_report
from store import Store

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    """A directory on a tmpfs of 12 MiB, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                       check=False, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _assert_checker_clean(path) -> None:
    rep = check_heap(path)
    assert rep.ok, format_report(rep)


def test_disk_full_while_growing_raises_heap_full_and_loses_nothing(small_fs):
    path = small_fs / "h.heap"
    rng = random.Random(7)
    blocks: dict[int, bytes] = {}
    with Heap.create(path, size=MiB, max_size=256 * MiB) as heap:
        with pytest.raises(HeapFullError) as ei:
            for _ in range(10_000):
                data = rng.randbytes(rng.choice([100, 5000, 60_000]))
                off = heap.alloc(len(data))
                heap.write(off, data)
                blocks[off] = data
        msg = str(ei.value)
        assert "file system is full" in msg and "nothing was changed" in msg, msg
        size = heap.mapping.size
        assert size == heap.file.header.file_size < 256 * MiB
        assert os.path.getsize(path) >= size
        assert sum(map(len, blocks.values())) > 8 * MiB, "the file system filled before the heap grew much"
        assert _free_bytes(small_fs) < 2 * MiB, "growth gave up while the disk still had room for a smaller step"
        for off, data in blocks.items():
            assert heap.read(off, len(data)) == data
        # freeing makes room inside the heap again, without any disk
        victim = max(blocks, key=lambda o: len(blocks[o]))
        n = len(blocks.pop(victim))
        heap.free(victim)
        off = heap.alloc(n)
        heap.write(off, b"again" * (n // 5))
        blocks[off] = b"again" * (n // 5)
    _assert_checker_clean(path)
    with Heap.open(path) as heap:
        assert heap.mapping.size == size
        assert heap.report.live_blocks == len(blocks)
        for off, data in blocks.items():
            assert heap.read(off, len(data)) == data


def test_disk_full_store_keeps_acknowledged_puts_and_serves_reads_and_deletes(small_fs):
    path = small_fs / "s.heap"
    rng = random.Random(11)
    acked: dict[str, bytes] = {}
    with Store.open(path, initial_size=2 * MiB, max_size=256 * MiB) as s:
        with pytest.raises(HeapFullError) as ei:
            for i in range(10_000):
                k, v = f"fill/{i:05d}", rng.randbytes(rng.choice([100, 4000, 50_000]))
                s.put(k, v)
                acked[k] = v
        assert "file system is full" in str(ei.value), str(ei.value)
        assert f"fill/{len(acked):05d}" not in s, "the refused put stored its key"
        assert len(s) == len(acked) > 50
        assert all(s.get(k)[0] == v for k, v in acked.items())
        for k in list(acked)[::2]:
            s.delete(k)
            del acked[k]
        for j in range(20):
            k, v = f"again/{j}", rng.randbytes(50_000)
            s.put(k, v)
            acked[k] = v
    _assert_checker_clean(path)
    with Store.open(path, create=False) as s:
        assert {k: s.get(k)[0] for k in s} == acked


def test_disk_full_at_create_leaves_no_file(small_fs):
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, _free_bytes(small_fs) - 2 * MiB)
    path = small_fs / "h.heap"
    with pytest.raises(HeapFullError, match="no space for a"):
        Heap.create(path, size=8 * MiB)
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"], "a failed create left a file behind"
    with pytest.raises(HeapFullError, match="no space for a"):
        Store.open(small_fs / "s.heap", initial_size=8 * MiB)
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    filler.unlink()
    with Store.open(small_fs / "s.heap", initial_size=8 * MiB) as s:    # room again: it works
        s.put("k", b"v")
    _assert_checker_clean(small_fs / "s.heap")
