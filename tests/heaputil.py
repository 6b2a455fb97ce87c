"""Helpers shared by the heap tests (imported as a plain module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os

from allocator import Heap


def create_heap(path, *, size=1 << 20, max_size=16 << 20) -> Heap:
    return Heap.create(path, size=size, max_size=max_size, backend="none")


def open_heap(path) -> Heap:
    return Heap.open(path, backend="none")


def stats_without_barriers(h: Heap) -> dict:
    """stats() without the barrier counter (which a refused call may legitimately not touch)."""
    st = h.stats()
    del st["persist_count"]
    return st


def poke(path, off: int, data: bytes) -> None:
    """Write raw bytes into a (closed) heap file: damage on purpose."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def peek(path, off: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(size)
