"""The store under threads (store/store.py, csrc/index.c: one writer at a time, readers
without a lock that retry when `version` moves, FORMAT.md 7.9).

Four writers put (and now and then delete) keys of a shared key space; a per-key lock
around each write and its record makes the recorded version the last acknowledged
write. A value is one 16-byte block naming (key, version) with a check field, repeated
to a size that the pair determines, inline and out of line. Four readers get, range-read
and list while the writers run: a value must be one whole version of the key asked for
(never torn, never another key's or a reused block's bytes), its etag the MD5 of the
returned bytes, versions per key never going backwards for a reader, and every listing
page sorted and unique. Afterwards, and again after a reopen, every key holds exactly
its last acknowledged write.
"""

from __future__ import annotations

import hashlib
import random
import struct
import threading
import time

import pytest

from recovery.check import check_heap, format_report
from store import Store
from store.errors import NoSuchKeyError

WRITERS = 4
READERS = 4
RUN_SECONDS = 2.0
KEY_COUNT = 64
KEYS = [f"t/{i:02d}" for i in range(KEY_COUNT)]
BLOCK = struct.Struct("<HIH8s")         # key index, version, block count mod 2^16, check bytes


def _check(kidx: int, version: int) -> bytes:
    return hashlib.blake2b(struct.pack("<HI", kidx, version), digest_size=8).digest()


def _blocks(kidx: int, version: int) -> int:
    """The value's size in 16-byte blocks: from 0 (empty) through 256 (4096 bytes, the
    largest inline value) and 257 to 1 in 16 of 4000 (64000 bytes: the heap grows while
    readers run; values above the 64 KiB read scratch have their own test below)."""
    h = int.from_bytes(_check(kidx, version)[:4], "little")
    if h % 16 == 0:
        return 4000
    return (0, 1, 3, 255, 256, 257, 600, 1200)[h % 8] if h & 0x100 else h % 300


def _value(kidx: int, version: int) -> bytes:
    n = _blocks(kidx, version)
    return BLOCK.pack(kidx, version, n & 0xFFFF, _check(kidx, version)) * n


def _decode(value: bytes, kidx: int, what: str) -> tuple[int | None, str | None]:
    """(version, None) for a whole value of key kidx, or (None, what is wrong)."""
    if not value:
        return 0, None                  # empty: some version with 0 blocks; cannot name it
    if len(value) % 16:
        return None, f"{what}: {len(value)} bytes, not whole 16-byte blocks"
    k, v, _n, chk = BLOCK.unpack_from(value)
    if k != kidx:
        return None, f"{what}: holds key index {k}'s bytes"
    if chk != _check(k, v):
        return None, f"{what}: first block fails its check (version {v})"
    if value != value[:16] * (len(value) // 16):
        return None, f"{what}: blocks of version {v} mixed with other bytes (torn or reused)"
    return v, None


@pytest.mark.parametrize("group_commit", [False, True], ids=["direct", "group-commit"])
def test_threads_readers_never_see_torn_values_and_last_write_wins(tmp_path, group_commit):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    path = tmp_path / "s.heap"
    s = Store.open(path, initial_size=4 << 20, max_size=64 << 20, durability="os", group_commit=group_commit)
    key_locks = [threading.Lock() for _ in KEYS]
    last: list[int | None] = [None] * KEY_COUNT       # last acknowledged version; None = absent
    next_version = [1] * KEY_COUNT
    errors: list[str] = []
    counts = {"put": 0, "delete": 0, "get": 0, "range": 0, "list": 0, "absent": 0}
    count_lock = threading.Lock()
    start = threading.Barrier(WRITERS + READERS)
    deadline = [0.0]

    def fail(msg: str) -> None:
        errors.append(msg)

    def writer(wid: int) -> None:
        rng = random.Random(seed * 31 + wid)
        n = dict.fromkeys(counts, 0)
        try:
            start.wait()
            while time.monotonic() < deadline[0] and not errors:
                kidx = rng.randrange(KEY_COUNT)
                with key_locks[kidx]:
                    if last[kidx] is not None and rng.random() < 0.1:
                        s.delete(KEYS[kidx])
                        last[kidx] = None
                        n["delete"] += 1
                        continue
                    version = next_version[kidx]
                    next_version[kidx] += 1
                    value = _value(kidx, version)
                    info = s.put(KEYS[kidx], value, content_type=f"v/{version}")
                    last[kidx] = version
                if info.size != len(value) or info.etag != hashlib.md5(value).hexdigest():
                    fail(f"writer {wid}: put {KEYS[kidx]} v{version} returned {info}")
                n["put"] += 1
        except Exception as e:      # noqa: BLE001 -- any escape is a failure to report
            fail(f"writer {wid}: {type(e).__name__}: {e}")
        with count_lock:
            for k, c in n.items():
                counts[k] += c

    def reader(rid: int) -> None:
        rng = random.Random(seed * 77 + rid)
        seen = [0] * KEY_COUNT                 # highest version this reader saw per key
        n = dict.fromkeys(counts, 0)
        try:
            start.wait()
            while time.monotonic() < deadline[0] and not errors:
                r = rng.random()
                kidx = rng.randrange(KEY_COUNT)
                key = KEYS[kidx]
                if r < 0.6:
                    try:
                        value, info = s.get(key)
                    except NoSuchKeyError:
                        n["absent"] += 1
                        continue
                    n["get"] += 1
                    v, bad = _decode(value, kidx, f"reader {rid}: get {key}")
                    if bad:
                        fail(bad)
                        continue
                    if info.etag != hashlib.md5(value).hexdigest() or info.size != len(value):
                        fail(f"reader {rid}: get {key}: info {info} does not describe the {len(value)} "
                             "bytes returned")
                    if value:
                        if info.content_type != f"v/{v}":
                            fail(f"reader {rid}: get {key}: content type {info.content_type} with v{v}'s bytes")
                        if len(value) != 16 * _blocks(kidx, v):
                            fail(f"reader {rid}: get {key}: v{v} is {len(value)} bytes, not "
                                 f"{16 * _blocks(kidx, v)}")
                        if v < seen[kidx]:
                            fail(f"reader {rid}: get {key}: v{v} after v{seen[kidx]} (went backwards)")
                        seen[kidx] = max(seen[kidx], v)
                elif r < 0.85:
                    a = 16 * rng.randrange(0, 300)
                    b = a + 16 * rng.randrange(1, 300)
                    try:
                        part, info = s.get_range(key, a, b)
                    except NoSuchKeyError:
                        n["absent"] += 1
                        continue
                    n["range"] += 1
                    if len(part) != max(0, min(b, info.size) - a):
                        fail(f"reader {rid}: get_range {key} [{a}, {b}) of {info.size}: {len(part)} bytes")
                    elif part:
                        _, bad = _decode(part, kidx, f"reader {rid}: get_range {key} [{a}, {b})")
                        if bad:
                            fail(bad)
                        elif info.content_type != f"v/{BLOCK.unpack_from(part)[1]}":
                            fail(f"reader {rid}: get_range {key}: info of {info.content_type}, bytes of "
                                 f"v{BLOCK.unpack_from(part)[1]}")
                else:
                    after, prev, pages = None, b"", 0
                    limit = rng.choice([1, 5, 16, 1000])
                    while pages < 100:
                        infos, after = s.list(prefix="t/", after=after, limit=limit)
                        pages += 1
                        for i in infos:
                            k = i.key.encode()
                            if k <= prev:
                                fail(f"reader {rid}: list (limit {limit}) gave {i.key!r} after {prev!r}")
                            if i.key not in KEYS:
                                fail(f"reader {rid}: list gave unknown key {i.key!r}")
                            prev = k
                        if after is None:
                            break
                    n["list"] += 1
        except Exception as e:      # noqa: BLE001
            fail(f"reader {rid}: {type(e).__name__}: {e}")
        with count_lock:
            for k, c in n.items():
                counts[k] += c

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    deadline[0] = time.monotonic() + RUN_SECONDS
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=RUN_SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    print(f"ops {counts}, file {s.heap.mapping.size} bytes")
    assert not errors, f"{len(errors)} errors (seed {seed}), e.g.:\n" + "\n".join(errors[:8])
    assert counts["put"] > 200 and counts["get"] > 200 and counts["list"] > 10, f"too little ran: {counts}"

    def verify(st: Store, when: str) -> None:
        want = {KEYS[i]: _value(i, v) for i, v in enumerate(last) if v is not None}
        assert len(st) == len(want), f"{when}: {len(st)} objects, {len(want)} acknowledged"
        assert list(st) == sorted(want), f"{when}: listing differs from the acknowledged keys"
        for i, key in enumerate(KEYS):
            if last[i] is None:
                assert key not in st, f"{when}: {key} was deleted last but is present"
                continue
            value, info = st.get(key)
            assert value == want[key], (f"{when}: {key} holds version {_decode(value, i, key)[0]}, "
                                        f"last acknowledged v{last[i]}")
            assert info.content_type == f"v/{last[i]}"

    verify(s, "after the threads")
    s.close()
    with Store.open(path, durability="os", create=False) as s2:
        verify(s2, "after reopen")


def _run_threads(targets, seconds: float) -> list[str]:
    """Run each target(deadline, errors) in its own thread; returns the errors."""
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=t, args=(deadline, errors)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_threads_get_of_a_large_value_racing_a_replace_returns_one_whole_version(tmp_path):
    """Values above the 64 KiB read scratch take a second C call into a buffer of the
    size the first call saw; a replace in between (by a smaller or larger value) must
    still give one whole version, never an error."""
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    sizes = [200 << 10, 70 << 10, 100, 300 << 10]
    with Store.open(tmp_path / "s.heap", initial_size=4 << 20, max_size=64 << 20, durability="os") as s:
        s.put("big", _value(0, 1) * (sizes[0] // 16))
        gets = [0]

        def writer(deadline, errors):
            rng = random.Random(seed)
            v = 1
            while time.monotonic() < deadline and not errors:
                s.put("big", BLOCK.pack(0, v, 0, _check(0, v)) * (rng.choice(sizes) // 16))
                v += 1

        def reader(deadline, errors):
            while time.monotonic() < deadline and not errors:
                try:
                    value, info = s.get("big")
                except Exception as e:      # noqa: BLE001
                    errors.append(f"get of a value being replaced raised {type(e).__name__}: {e!r}")
                    return
                gets[0] += 1
                _, bad = _decode(value, 0, "get big")
                if bad or info.size != len(value) or len(value) not in [n // 16 * 16 for n in sizes]:
                    errors.append(bad or f"get big: {len(value)} bytes with info.size {info.size}")

        errors = _run_threads([writer] + [reader] * 3, 1.0)
        assert not errors, f"{len(errors)} errors (seed {seed}, {gets[0]} gets), e.g.:\n" + "\n".join(errors[:5])


@pytest.mark.parametrize("group_commit", [False, True], ids=["direct", "group-commit"])
def test_threads_concurrent_puts_of_one_key_each_return_their_own_info(tmp_path, group_commit):
    """put returns the ObjectInfo of the object it stored (its etag, size, content type),
    even when other writers put the same key at the same time (shared group commits)."""
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    with Store.open(tmp_path / "s.heap", initial_size=4 << 20, max_size=64 << 20, durability="os",
                    group_commit=group_commit) as s:
        puts = [0]

        def writer_for(wid):
            def writer(deadline, errors):
                rng = random.Random(seed * 13 + wid)
                i = 0
                while time.monotonic() < deadline and len(errors) < 20:
                    i += 1
                    value = f"{wid}:{i}:".encode() * rng.randrange(1, 50)
                    try:
                        info = s.put("same", value, content_type=f"w/{wid}/{i}")
                    except Exception as e:      # noqa: BLE001
                        errors.append(f"writer {wid}: put #{i} raised {type(e).__name__}: {e}")
                        continue
                    puts[0] += 1
                    if (info.etag, info.size, info.content_type) != \
                            (hashlib.md5(value).hexdigest(), len(value), f"w/{wid}/{i}"):
                        errors.append(f"writer {wid}: put #{i} of {len(value)} bytes returned the info of "
                                      f"another write (content type {info.content_type}, {info.size} bytes)")
            return writer

        errors = _run_threads([writer_for(w) for w in range(4)], 1.0)
        assert not errors, (f"{len(errors)} of {puts[0]} puts returned wrong info (seed {seed}), e.g.:\n"
                            + "\n".join(errors[:5]))
        assert len(s) == 1


def test_group_commit_heap_full_and_create_only_races(tmp_path):
    """Group commit (pm_index_submit): 8 writers fill a small heap until HeapFullError;
    every put that returned is there byte for byte, the store still serves reads, and of
    writers racing to create one key with if_none_match exactly one wins per round."""
    from store.errors import HeapFullError, PreconditionFailedError
    with Store.open(tmp_path / "s.heap", initial_size=1 << 20, max_size=8 << 20, durability="os",
                    group_commit=True) as s:
        acked: dict[str, bytes] = {}
        full = threading.Event()
        lock = threading.Lock()

        def filler(wid):
            def run(deadline, errors):
                i = 0
                while time.monotonic() < deadline and not full.is_set():
                    key, value = f"w{wid}/{i:06d}", bytes([wid, i % 251]) * (500 + i % 3)
                    try:
                        s.put(key, value)
                    except HeapFullError:
                        full.set()
                        return
                    except Exception as e:      # noqa: BLE001
                        errors.append(f"writer {wid}: {type(e).__name__}: {e}")
                        return
                    with lock:
                        acked[key] = value
                    i += 1
            return run

        errors = _run_threads([filler(w) for w in range(8)], 20.0)
        assert not errors, "\n".join(errors[:5])
        assert full.is_set(), "the heap never filled"
        assert len(s) == len(acked) > 100
        for key, value in acked.items():
            assert s.get_value(key) == value
        for key in list(acked)[: len(acked) // 2]:     # deletes free room again
            s.delete(key)

        for rnd in range(5):
            wins, fails = [], []

            def creator(wid, rnd=rnd, wins=wins, fails=fails):
                def run(deadline, errors):
                    try:
                        s.put(f"once/{rnd}", f"{wid}".encode(), if_none_match=True)
                        wins.append(wid)
                    except PreconditionFailedError:
                        fails.append(wid)
                    except Exception as e:      # noqa: BLE001
                        errors.append(f"creator {wid}: {type(e).__name__}: {e}")
                return run

            race_errors = _run_threads([creator(w) for w in range(8)], 5.0)
            assert not race_errors, "\n".join(race_errors[:5])
            assert len(wins) == 1 and len(fails) == 7, (wins, fails)
            assert s.get_value(f"once/{rnd}") == str(wins[0]).encode()


def test_group_commit_plain_puts_share_barriers_on_a_file(tmp_path):
    """The common put (one C call, pm_index_put_plain) joins group commit itself: 8 writers
    on the msync backend share barriers (fewer barriers than puts), and every put is there."""
    with Store.open(tmp_path / "s.heap", initial_size=4 << 20) as s:
        assert s.heap.mapping.backend == "msync"
        c0 = s.heap.mapping.persist_count
        per_writer = 40

        def writer_for(wid):
            def run(deadline, errors):
                for i in range(per_writer):
                    info = s.put(f"w{wid}/{i:03d}", bytes([wid, i]) * 50)
                    if info.size != 100 or info.etag != hashlib.md5(bytes([wid, i]) * 50).hexdigest():
                        errors.append(f"writer {wid}: put {i} returned {info}")
            return run

        errors = _run_threads([writer_for(w) for w in range(8)], 60.0)
        assert not errors, "\n".join(errors[:5])
        puts = 8 * per_writer
        assert s.heap.mapping.persist_count - c0 < 0.9 * puts, "concurrent plain puts never shared a barrier"
        assert len(s) == puts
        for w in range(8):
            for i in range(per_writer):
                assert s.get_value(f"w{w}/{i:03d}") == bytes([w, i]) * 50


@pytest.mark.parametrize("close", ["close", "abandon"])
def test_closing_right_after_writer_threads_exit_waits_for_their_destructors(tmp_path, close):
    """Python's join returns before the OS thread has run its TLS destructors, and a
    writer's thread heap drains its limbo there through barriers on the mapping. Closing
    (or abandoning) the store at that instant must not unmap the heap under it. With the
    allocator torn down after the unmap, this test segfaulted in 5 runs of 5 (a journal
    barrier copies from the mapping), and 1 crash-plan run in about 30. Nor may such an
    exit write after close's last checkpoint: before close retired the thread heaps first
    (pm_alloc_retire), 1 close in 10 left a journal record at rest (J3)."""
    for i in range(40):
        path = tmp_path / f"s{i}.heap"
        s = Store.open(path, initial_size=1 << 20)     # msync and a journal: barriers copy from the mapping

        def writer(t, s=s):
            for j in range(60):     # replaces: every one frees the old record into the limbo
                s.put(f"t{t}/{j % 5}", bytes([t, j]) * (40 + j))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        getattr(s, close)()
        if close == "close":    # at rest: no thread's exit wrote after the last checkpoint (J3)
            rep = check_heap(path)
            assert rep.ok, format_report(rep)
        with Store.open(path, create=False) as s:
            assert len(s) == 15
            assert s.get_value("t2/4") == bytes([2, 59]) * 99
