"""The crash simulator itself: it must find what a power cut can lose, and nothing else."""

from __future__ import annotations

import struct

import pytest

from allocator import HeapFile
from recovery import crashsim


@pytest.fixture
def heap(tmp_path):
    path = tmp_path / "sim.heap"
    HeapFile.create(path, size=128 << 10, max_size=1 << 20, lane_count=2, backend="none").close()
    base = path.read_bytes()
    hf = HeapFile.open(path, backend="none", trace=True)
    hf.mapping.trace_take()  # drop the open's own records; `base` is then stale only in the header
    yield hf, path, base
    if not hf.closed:
        hf.abandon()


def _word(img: bytes, off: int) -> int:
    return struct.unpack_from("<Q", img, off)[0]


def _images(base, trace, model):
    replay = crashsim.Replay(base, crashsim.parse_trace(trace), crashsim.MODELS[model])
    out = []
    for point in replay.points():
        chosen, _ = crashsim.subsets(point.dirty_units, 1 << 12, None)
        out.append((point, [bytes(replay.image(u)) for u in chosen]))
    return out


@pytest.mark.parametrize("model", list(crashsim.MODELS))
def test_unpersisted_store_may_be_lost_and_persisted_store_may_not(heap, model):
    hf, _, base = heap
    off = hf.header.data_off
    hf.mapping.store8(off, 0xAAAA)                 # never persisted
    hf.mapping.trace_mark(1)
    hf.mapping.write_persist(off + 8192, struct.pack("<Q", 0xBBBB))
    hf.mapping.trace_mark(2)
    images = _images(base, hf.mapping.trace_take(), model)
    seen_a = {_word(img, off) for _, imgs in images for img in imgs}
    assert seen_a == {0, 0xAAAA}, "an unpersisted store must be both lost and kept in some crash state"
    after = [img for point, imgs in images if 2 in point.marks for img in imgs]
    assert after and all(_word(img, off + 8192) == 0xBBBB for img in after)


def test_4k_model_tears_a_page_into_512_byte_sectors(heap):
    hf, _, base = heap
    off = hf.header.data_off
    hf.mapping.write(off, b"\x01" * 4096)          # one dirty OS page, never persisted
    images = [img for _, imgs in _images(base, hf.mapping.trace_take(), "4KiB/512B") for img in imgs]
    patterns = {tuple(img[off + s] for s in range(0, 4096, 512)) for img in images}
    assert len(patterns) == 256, "every subset of the 8 sectors must appear"


def test_4k_model_persist_makes_the_whole_os_page_durable(heap):
    """msync writes back whole OS pages; a persist in 8-byte units covers only its range."""
    hf, _, base = heap
    off = hf.header.data_off
    hf.mapping.store8(off + 1024, 7)               # same OS page, outside the persisted range
    hf.mapping.persist(off, 8)
    trace = hf.mapping.trace_take()
    end_4k = _images(base, trace, "4KiB/512B")[-1]
    assert end_4k[0].dirty_units == [] and _word(end_4k[1][0], off + 1024) == 7
    end_8b = _images(base, trace, "8B")[-1]
    assert {_word(img, off + 1024) for img in end_8b[1]} == {0, 7}


def test_8b_model_persist_makes_the_whole_line_durable(heap):
    """CLWB writes back the line: a barrier over one word makes its 64-byte line durable
    (the words beside it too), and only that line."""
    hf, _, base = heap
    off = hf.header.data_off
    hf.mapping.store8(off + 56, 7)                 # same line, outside the persisted range
    hf.mapping.store8(off + 64, 9)                 # the next line
    hf.mapping.persist(off, 8)
    end_8b = _images(base, hf.mapping.trace_take(), "8B")[-1]
    assert {_word(img, off + 56) for img in end_8b[1]} == {7}
    assert {_word(img, off + 64) for img in end_8b[1]} == {0, 9}


def test_subsets_enumerate_all_up_to_the_limit_and_sample_beyond():
    import random
    all_, sampled = crashsim.subsets(list(range(4)), 16, random.Random(0))
    assert not sampled and len(list(all_)) == 16
    some, sampled = crashsim.subsets(list(range(20)), 64, random.Random(0))
    some = list(some)
    assert sampled and len(some) == 64 and [] in some and list(range(20)) in some


def test_explore_reports_a_broken_protocol(heap, tmp_path):
    """A 'commit' that publishes a flag before its data is durable must be caught."""
    hf, _path, base = heap
    data, flag = hf.header.data_off, hf.header.data_off + 4096
    hf.mapping.store8(data, 42)                    # data not persisted ...
    hf.mapping.write_persist(flag, struct.pack("<Q", 1))  # ... but the flag is
    trace = hf.mapping.trace_take()
    hf.abandon()

    def check(img, point):
        raw = img.read_bytes()
        assert _word(raw, flag) == 0 or _word(raw, data) == 42, "flag set without its data"

    res = crashsim.explore(base, trace, check, workdir=tmp_path, seed=5)
    assert res.violations and all("flag set without its data" in v.message for v in res.violations)
    assert {v.model for v in res.violations} == set(crashsim.MODELS)  # data and flag: different OS pages


def test_parse_trace_rejects_garbage():
    with pytest.raises(ValueError, match="unknown kind"):
        crashsim.parse_trace(struct.pack("<IIQ", 99, 0, 0))
