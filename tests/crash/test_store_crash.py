"""Crash enumeration over store workloads: insert, replace, delete, atomic batches,
inline and out-of-line values, tower heights above 1, growth (FORMAT.md 7.9; I1-I4, P4).

At every persist point x dirty-unit subsets (8 B, 64 B, 4 KiB/512 B) the image is
opened through normal recovery (redo replay, allocator scan, index walk), then: the
objects equal the model before or after the in-flight operation, byte for byte; the
checker finds nothing; the allocated blocks are exactly the superblock, the head, and
each object's record and value block (no leak, no dangling pointer).
"""

from __future__ import annotations

import random

import pytest

from recovery import crashsim
from recovery.check import check_heap
from store import Store

KEYS = [f"k/{i:02d}" for i in range(10)]
SIZES = [0, 30, 100, 900, 5000, 20000]


def _record(path, seed: int, op_count: int):
    rng = random.Random(seed)
    with Store.open(path, initial_size=256 << 10, max_size=16 << 20, backend="none") as s:
        for k in KEYS[:3]:
            s.put(k, k.encode() * 3)
    base = path.read_bytes()
    s = Store.open(path, backend="none", create=False)
    s.heap.mapping.trace_start()
    model = {k: (k.encode() * 3) for k in KEYS[:3]}
    models = [dict(model)]
    for i in range(op_count):
        s.heap.mapping.trace_mark(2 * i)
        k = rng.choice(KEYS)
        if i == op_count // 2:      # a value larger than the free space: the heap grows mid-workload
            v = rng.randbytes(s.heap.mapping.size)
            s.put(k, v)
            model[k] = v
        elif rng.random() < 0.25:     # an atomic batch of 2-3 puts and deletes
            with s.batch() as b:
                for kk in rng.sample(KEYS, rng.randint(2, 3)):
                    if kk in model and rng.random() < 0.4:
                        b.delete(kk)
                        del model[kk]
                    else:
                        v = rng.randbytes(rng.choice(SIZES))
                        b.put(kk, v)
                        model[kk] = v
        elif k in model and rng.random() < 0.35:
            s.delete(k)
            del model[k]
        else:
            v = rng.randbytes(rng.choice(SIZES))
            s.put(k, v)
            model[k] = v
        s.heap.mapping.trace_mark(2 * i + 1)
        models.append(dict(model))
    trace = s.heap.mapping.trace_take()
    s.abandon()
    assert any(e.kind == crashsim.TRACE_GROW for e in crashsim.parse_trace(trace)), "the workload must grow"
    return base, trace, models


def _check(img, point, models):
    acked = sum(1 for m in point.marks if m % 2 == 1)
    started = sum(1 for m in point.marks if m % 2 == 0)
    allowed = [models[acked]] + ([models[acked + 1]] if started > acked else [])
    with Store.open(img, backend="none", create=False) as s:
        got = {}
        for key in s:
            got[key] = s.get(key)[0]
        assert got in allowed, f"objects match neither the state before nor after op {acked}"
        expected = {s.heap.root}
        for key in got:
            info = s._index.head(key.encode())
            expected.add(info.rec_off)
            if info.value_off != info.rec_off and info.value_size > 4096:
                expected.add(info.value_off)
        head_off = int.from_bytes(s.heap.read(s.heap.root + 16, 8), "little")
        expected.add(head_off)
    rep = check_heap(img)
    assert rep.ok, "; ".join(map(str, rep.findings[:3]))
    assert set(rep.blocks) == expected, (f"leaked {sorted(set(rep.blocks) - expected)[:3]}, "
                                         f"dangling {sorted(expected - set(rep.blocks))[:3]}")


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_I1_I4_store_ops_are_all_or_nothing_at_every_crash_point(tmp_path, seed, crash_totals):
    base, trace, models = _record(tmp_path / "s.heap", seed, op_count=16)

    def check(img, point):
        _check(img, point, models)

    res = crashsim.explore(base, trace, check, workdir=tmp_path, max_subsets=16, seed=seed)
    crash_totals.add(f"store ops (seed {seed})", res)
    assert not res.violations, "\n".join(map(str, res.violations[:5]))
