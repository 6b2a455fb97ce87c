"""Helpers for checker and repair tests: a small store on disk and raw-byte surgery on it."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from heaputil import peek, poke  # noqa: F401 (re-exported to the store tests)

from recovery import check_store
from recovery import format as fmt
from recovery.check import check_heap
from store import Store


@pytest.fixture(autouse=True, params=["c", "python"])
def checker_loops(request, monkeypatch):
    """Every test runs with the checker's C loops (recovery/csrc/walk.c) and with its pure-Python ones."""
    if request.param == "c" and not check_store.FAST:
        pytest.skip("recovery._walk_c is not built")
    monkeypatch.setattr(check_store, "FAST", request.param == "c")


VALUES = {f"obj/{i:02d}": (bytes([i]) * (100 + 700 * i)) for i in range(12)}   # obj/06.. are out of line


def make_store(path, values=VALUES) -> dict:
    with Store.open(path, initial_size=1 << 20, max_size=16 << 20, backend="none") as s:
        for k, v in values.items():
            s.put(k, v)
    return dict(values)


def records(path) -> dict[str, object]:
    """key -> the checker's Record (offsets read by the independent checker, not the store)."""
    rep = check_heap(path, records=True)
    assert rep.ok, rep.findings[:3]
    return {r.key.decode(): r for r in rep.store.records}


def next_word(rec_off: int, level: int) -> int:
    """The offset of a record's next[level] (FORMAT.md 4.7: after the 16-byte header)."""
    return rec_off + fmt.OBJ_HDR_SIZE + 8 * level


def tail_off(rec) -> int:
    """The offset of a checker Record's tail header (t = 16 + 8 x height, FORMAT.md 4.7)."""
    return rec.off + fmt.OBJ_HDR_SIZE + 8 * rec.height


def key_off(rec) -> int:
    """The offset of a checker Record's key, right after its tail header."""
    return tail_off(rec) + fmt.obj_tail_size(None if rec.value_block else rec.value_size,
                                             bool(rec.hdr["height_flags"] & fmt.OBJ_FLAG_MD5_DERIVED))


def set_next(path, rec_off: int, level: int, target: int) -> None:
    poke(path, next_word(rec_off, level), struct.pack("<Q", target))


def head_off(path) -> int:
    return check_heap(path).store.head_off


def contents(path) -> dict[str, bytes]:
    with Store.open(path, create=False, backend="none") as s:
        return {k: s.get(k)[0] for k in s}


# A store written by an older build (FORMAT.md 9): tests/fixtures/store-v2.heap.gz.
V2_FIXTURE = Path(__file__).parent / "fixtures" / "store-v2.heap.gz"


def v2_contents() -> dict[str, tuple[bytes, str | None]]:
    """key -> (value, content type) of V2_FIXTURE: written by commit 039ea0a (store version 2,
    every ETag stored) through Store.open(initial_size=1 MiB, max_size=16 MiB) and these puts,
    then a delete of small/05."""
    want = {f"small/{i:02d}": (bytes([i]) * (i * 7), "text/plain" if i % 2 else None) for i in range(40) if i != 5}
    want["mid/800"] = (b"m" * 800, "application/x-mid")
    want["big/9000"] = (bytes(range(256)) * 36, None)
    return want


def v2_store(directory: Path) -> Path:
    """A fresh copy of V2_FIXTURE in directory."""
    path = directory / "v2.heap"
    path.write_bytes(gzip.decompress(V2_FIXTURE.read_bytes()))
    return path
