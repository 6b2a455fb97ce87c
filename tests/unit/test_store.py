"""The object store (store/store.py over store/_index.py and csrc/index.c): put/get
roundtrips inline and out of line, metadata (etag, CRC32C, content type, mtime), keys,
conditional puts and deletes, ranges, listing and pagination, reopen after a clean close
and after a process crash, checksummed reads (I4), a full heap, zero-copy views, and the
independent checker's view of the blocks a store holds (I3).

Every refusal checks that nothing changed: the old value is still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest
from storeutil import v2_contents, v2_store

from allocator._native import _fast, crc32c
from allocator.errors import CorruptHeapError, UnsupportedVersionError
from recovery.check import check_heap, format_report
from store import Store
from store.errors import (
    CorruptObjectError,
    HeapFullError,
    InvalidKeyError,
    NoSuchKeyError,
    ObjectTooLargeError,
    PreconditionFailedError,
)

INLINE_MAX = 4096
SIZES = [0, 1, 100, 256, 257, 4096, 4097, 70_000, 1 << 20]
WRONG_ETAG = "0" * 32


def _open(path, **kw) -> Store:
    kw.setdefault("initial_size", 4 << 20)
    kw.setdefault("max_size", 64 << 20)
    kw.setdefault("durability", "os")
    return Store.open(path, **kw)


def _value(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _contents(s: Store) -> dict[str, bytes]:
    return {k: s.get(k)[0] for k in s}


def _flip(path, off: int) -> None:
    """Invert one byte of the file at off with plain file I/O."""
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))


# ---------------------------------------------------------------- roundtrip and metadata


@pytest.mark.parametrize("size", SIZES)
def test_put_get_roundtrip_with_metadata(tmp_path, size):
    value = _value(size, size)
    with _open(tmp_path / "s.heap") as s:
        t0 = time.time_ns()
        info = s.put("obj/x", value, content_type="application/x-test")
        t1 = time.time_ns()
        assert info.key == "obj/x"
        assert info.size == size
        assert info.etag == hashlib.md5(value).hexdigest()
        assert info.checksum == crc32c(value)
        assert info.content_type == "application/x-test"
        assert t0 <= info.last_modified <= t1, (t0, info.last_modified, t1)
        got, ginfo = s.get("obj/x")
        assert type(got) is bytes
        assert got == value, f"get returned {len(got)} bytes differing from the {size} put"
        assert ginfo == info
        assert s.head("obj/x") == info
        assert len(s) == 1


def test_content_type_absent_is_none_and_too_long_is_refused(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        assert s.put("a", b"x").content_type is None
        assert s.get("a")[1].content_type is None
        assert s.put("b", b"y", content_type="t/" + "é" * 126).content_type == "t/" + "é" * 126  # 254 B
        with pytest.raises(ValueError):
            s.put("a", b"new", content_type="x" * 256)
        assert s.get("a")[0] == b"x"


def test_bytes_like_values_are_stored(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        s.put("ba", bytearray(b"abc"))
        s.put("mv", memoryview(b"0123456789")[2:6])
        assert s.get("ba")[0] == b"abc"
        assert s.get("mv")[0] == b"2345"


@pytest.mark.parametrize("sizes", [(100, 200), (100, 70_000), (70_000, 100), (70_000, 5000), (4097, 4096)])
def test_replace_returns_new_info_and_get_returns_new_value(tmp_path, sizes):
    old, new = _value(1, sizes[0]), _value(2, sizes[1])
    with _open(tmp_path / "s.heap") as s:
        s.put("k0", b"neighbour")
        i1 = s.put("k", old, content_type="a/old")
        i2 = s.put("k", new, content_type="a/new")
        assert i2.size == len(new) and i2.etag == hashlib.md5(new).hexdigest()
        assert i2.checksum == crc32c(new) and i2.content_type == "a/new"
        assert i2.last_modified >= i1.last_modified
        assert i2.etag != i1.etag
        assert s.get("k") == (new, i2)
        assert len(s) == 2 and list(s) == ["k", "k0"]
        assert s.get("k0")[0] == b"neighbour"


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["a", b"a", "x" * 1024, b"y" * 1024, "日本/語", "€" * 341, "a b~!"])
def test_valid_keys_roundtrip(tmp_path, key):
    with _open(tmp_path / "s.heap") as s:
        info = s.put(key, b"v")
        text = key if isinstance(key, str) else key.decode()
        assert info.key == text
        assert s.get(key)[0] == b"v"
        assert s.get(text)[0] == b"v"          # str and bytes name the same object
        assert s.get(text.encode())[0] == b"v"
        assert list(s) == [text]


@pytest.mark.parametrize("key", ["", b"", "x" * 1025, b"y" * 1025, "€" * 342, "é" * 513],
                         ids=["empty", "empty-bytes", "1025", "1025-bytes", "342-euro-1026B", "513-eacute-1026B"])
def test_key_length_is_counted_in_utf8_bytes(tmp_path, key):
    with _open(tmp_path / "s.heap") as s:
        with pytest.raises(InvalidKeyError):
            s.put(key, b"v")
        assert len(s) == 0


@pytest.mark.parametrize("ch", [*range(0x20), 0x7F], ids=lambda c: f"0x{c:02X}")
def test_control_characters_anywhere_in_the_key_are_refused(tmp_path, ch):
    c = chr(ch)
    with _open(tmp_path / "s.heap") as s:
        s.put("ab", b"v")
        for key in (c, c + "ab", "a" + c + "b", "ab" + c):
            for k in (key, key.encode()):
                with pytest.raises(InvalidKeyError):
                    s.put(k, b"bad")
                with pytest.raises(InvalidKeyError):
                    s.get(k)
                with pytest.raises(InvalidKeyError):
                    s.delete(k)
                assert k not in s
        assert len(s) == 1 and s.get("ab")[0] == b"v"


@pytest.mark.parametrize("key", [b"\xff", b"a\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"ok/\xf8\x88\x80\x80\x80"])
def test_invalid_utf8_key_bytes_are_refused(tmp_path, key):
    with _open(tmp_path / "s.heap") as s:
        with pytest.raises(InvalidKeyError):
            s.put(key, b"v")
        assert len(s) == 0


def test_str_key_that_is_not_encodable_as_utf8_is_an_invalid_key(tmp_path):
    """A lone surrogate has no UTF-8 form: the key is invalid (InvalidKeyError, which the
    service maps to 400), not an unexpected UnicodeEncodeError."""
    with _open(tmp_path / "s.heap") as s:
        try:
            s.put("a\ud800b", b"v")
        except InvalidKeyError:
            pass
        except Exception as e:      # noqa: BLE001 -- report exactly what escaped
            pytest.fail(f"put('a\\ud800b') raised {type(e).__name__}: {e}; expected InvalidKeyError")
        else:
            pytest.fail("put('a\\ud800b') stored a key with no UTF-8 form; expected InvalidKeyError")
        assert len(s) == 0


# ---------------------------------------------------------------- size limit


def test_value_above_max_object_size_is_refused_and_nothing_stored(tmp_path):
    with _open(tmp_path / "s.heap", max_object_size=10_000) as s:
        assert s.put("edge", bytes(10_000)).size == 10_000
        with pytest.raises(ObjectTooLargeError):
            s.put("big", bytes(10_001))
        assert "big" not in s and len(s) == 1
        s.put("k", b"old")
        with pytest.raises(ObjectTooLargeError):
            s.put("k", bytes(10_001))
        assert s.get("k")[0] == b"old"


def test_default_max_object_size_is_64_mib(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        assert s.max_object_size == 64 << 20
        with pytest.raises(ObjectTooLargeError):
            s.put("big", memoryview(bytearray((64 << 20) + 1)))
        assert len(s) == 0


# ---------------------------------------------------------------- conditions


def test_if_none_match_on_existing_key_fails_and_keeps_old_value(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        info = s.put("k", b"old", if_none_match=True)
        with pytest.raises(PreconditionFailedError):
            s.put("k", b"new", if_none_match=True)
        assert s.get("k") == (b"old", info)


def test_if_match_wrong_etag_fails_right_etag_replaces(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        info = s.put("k", b"old")
        for wrong in (WRONG_ETAG, hashlib.md5(b"other").hexdigest(), "not-hex", ""):
            with pytest.raises(PreconditionFailedError):
                s.put("k", b"new", if_match=wrong)
            assert s.get("k") == (b"old", info)
        new = s.put("k", b"new", if_match=info.etag)
        assert s.get("k") == (b"new", new)
        newer = s.put("k", b"newer", if_match=f'"{new.etag}"')    # the quoted HTTP form
        assert s.get("k")[0] == b"newer" and newer.etag == hashlib.md5(b"newer").hexdigest()


def test_if_match_on_absent_key_fails_and_creates_nothing(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        with pytest.raises(PreconditionFailedError):
            s.put("k", b"new", if_match=hashlib.md5(b"new").hexdigest())
        assert "k" not in s and len(s) == 0


def test_delete_absent_key_raises_no_such_key(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        s.put("a", b"1")
        with pytest.raises(NoSuchKeyError) as ei:
            s.delete("b")
        assert isinstance(ei.value, KeyError)
        with pytest.raises(NoSuchKeyError):
            s.get("b")
        with pytest.raises(NoSuchKeyError):
            s.head("b")
        s.delete("a")
        with pytest.raises(NoSuchKeyError):
            s.delete("a")
        assert len(s) == 0


def test_delete_with_if_match(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        info = s.put("k", b"value")
        with pytest.raises(PreconditionFailedError):
            s.delete("k", if_match=WRONG_ETAG)
        assert s.get("k") == (b"value", info)
        s.delete("k", if_match=info.etag)
        assert "k" not in s and len(s) == 0
        with pytest.raises(PreconditionFailedError):
            s.delete("k", if_match=info.etag)      # absent: the condition cannot hold


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize("size", [100, 4096, 70_000])
def test_get_range(tmp_path, size):
    value = _value(size, size)
    with _open(tmp_path / "s.heap") as s:
        info = s.put("k", value)
        cases = [(0, None), (0, size), (5, 17), (size - 1, None), (size, None), (size + 10, None),
                 (size + 10, size + 20), (3, size + 1000), (7, 7), (0, 1), (size // 2, size // 2 + 4097)]
        for start, end in cases:
            got, ginfo = s.get_range("k", start, end)
            assert got == value[start:end], f"get_range({start}, {end}) of {size} bytes: {len(got)} bytes, wrong"
            assert ginfo == info
        for start, end in [(-1, None), (-1, 5), (10, 9)]:
            with pytest.raises(ValueError):
                s.get_range("k", start, end)
        with pytest.raises(NoSuchKeyError):
            s.get_range("absent", 0, 1)


def test_get_range_of_empty_value(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        s.put("e", b"")
        assert s.get_range("e", 0)[0] == b""
        assert s.get_range("e", 5, 10)[0] == b""


# ---------------------------------------------------------------- listing

LIST_KEYS = ["B", "Z", "a", "a.", "a/b", "a/b/c", "a/c", "a0", "ab", "b", "é", "éa", "€", "日本", "a/é", "a/B",
             "ø/x", "😀", "\ufffd"]


def _bsorted(keys) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


def _fill(s: Store, keys) -> None:
    for k in keys:
        s.put(k, k.encode() * 2, content_type=f"t/{len(k)}")


def _paginate(s: Store, prefix: str = "", limit: int = 1000, after=None) -> list[str]:
    out, pages = [], 0
    while True:
        infos, after = s.list(prefix=prefix, after=after, limit=limit)
        pages += 1
        assert len(infos) <= limit
        if after is not None:
            assert len(infos) == limit, f"a non-last page holds {len(infos)} < limit {limit} objects"
            assert after == infos[-1].key
        out += [i.key for i in infos]
        if after is None:
            return out
        assert pages < 10_000


def test_list_is_in_bytewise_key_order_with_metadata(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        _fill(s, LIST_KEYS)
        infos, nxt = s.list()
        assert nxt is None
        assert [i.key for i in infos] == _bsorted(LIST_KEYS)
        for i in infos:
            assert i == s.head(i.key), f"list and head disagree on {i.key!r}"
        assert list(s) == _bsorted(LIST_KEYS)


@pytest.mark.parametrize("size", SIZES)
def test_list_gives_the_same_info_as_head_and_get(tmp_path, size):
    # every field, the checksum included: computed for a small value, stored for a larger one
    value = _value(size, size)
    with _open(tmp_path / "s.heap") as s:
        put = s.put("k", value, content_type="application/x-test")
        (listed,), _ = s.list()
        assert listed == put == s.head("k") == s.get("k")[1]
        assert (listed.checksum, listed.etag, listed.size) == (crc32c(value), hashlib.md5(value).hexdigest(), size)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "a/b/", "é", "€", "日", "zz", "A", "a/b/c/d"])
def test_list_prefix_filters(tmp_path, prefix):
    with _open(tmp_path / "s.heap") as s:
        _fill(s, LIST_KEYS)
        want = _bsorted(k for k in LIST_KEYS if k.encode().startswith(prefix.encode()))
        infos, nxt = s.list(prefix=prefix)
        assert [i.key for i in infos] == want and nxt is None
        for limit in (1, 2, 3):
            assert _paginate(s, prefix, limit) == want


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 7, 18, 19, 20, 1000])
def test_list_pagination_visits_every_key_once(tmp_path, limit):
    with _open(tmp_path / "s.heap") as s:
        _fill(s, LIST_KEYS)
        assert _paginate(s, limit=limit) == _bsorted(LIST_KEYS)


def test_list_after_a_key_not_in_the_store(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        _fill(s, LIST_KEYS)
        for after in ["a/bb", "A", "a/", "zzz", "\u00e0", "a/b/c/d", "0", "ø", "😀😀"]:
            want = [k for k in _bsorted(LIST_KEYS) if k.encode() > after.encode()]
            infos, nxt = s.list(after=after)
            assert [i.key for i in infos] == want and nxt is None, f"list(after={after!r})"
            assert _paginate(s, limit=2, after=after) == want, f"paginated list(after={after!r})"


def test_list_with_prefix_and_after_together(tmp_path):
    """Every (prefix, after) pair, including an `after` that sorts before the prefix's
    range (a proper prefix of the prefix, like after='a', prefix='a/'): the result is
    exactly the keys that start with prefix and sort after `after`."""
    keys = ["a", "a!", "a-", "a.", "a/1", "a/2", "a/2/x", "a0", "b", "b/1"]
    with _open(tmp_path / "s.heap") as s:
        _fill(s, keys)
        bad = []
        for prefix in ["", "a", "a/", "a/2", "b/", "c"]:
            for after in [None, "0", "a", "a!", "a/", "a/1", "a/15", "a/2", "a0", "b", "z"]:
                want = [k for k in _bsorted(keys) if k.startswith(prefix) and (after is None or k > after)]
                got = [i.key for i in s.list(prefix=prefix, after=after)[0]]
                if got != want:
                    bad.append(f"list(prefix={prefix!r}, after={after!r}) returned {got}, expected {want}")
        assert not bad, f"{len(bad)} wrong listings, e.g.:\n" + "\n".join(bad[:6])


def test_list_pages_of_long_keys_with_long_content_types_are_complete(tmp_path):
    """Keys of 1024 bytes with 255-byte content types: every page must hold `limit`
    objects (or be the last page), and pagination must visit all keys."""
    keys = [f"{i:04d}" + "k" * 1020 for i in range(60)]
    with _open(tmp_path / "s.heap") as s:
        for k in keys:
            s.put(k, b"v", content_type="c" * 255)
        seen, after, pages = [], None, 0
        while True:
            infos, after = s.list(after=after, limit=50)
            pages += 1
            seen += [i.key for i in infos]
            if after is None:
                break
        assert len(seen) == len(keys), (
            f"paginating with limit=50 visited {len(seen)} of 60 keys in {pages} page(s) "
            f"(missing {min(set(keys) - set(seen))[:8]}...): a page came back short "
            "with next_after=None")
        assert seen == keys
        assert len(list(s)) == 60


def test_list_limit_bounds(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        s.put("a", b"")
        for bad in (0, -1, 100_001):
            with pytest.raises(ValueError):
                s.list(limit=bad)
        assert s.list(limit=100_000)[0][0].key == "a"


def test_len_contains_iter_across_pages(tmp_path):
    keys = [f"k/{i:05d}" for i in range(1100)]      # more than one 1000-object page
    with _open(tmp_path / "s.heap") as s:
        assert len(s) == 0 and list(s) == [] and "k/00000" not in s
        for k in keys:
            s.put(k, k.encode())
        assert len(s) == 1100
        assert list(s) == keys
        assert "k/00500" in s and b"k/00500" in s and "k/99999" not in s
        assert "" not in s and "a\x00" not in s      # invalid keys are simply absent
        for k in keys[::3]:
            s.delete(k)
        left = [k for i, k in enumerate(keys) if i % 3]
        assert len(s) == len(left) and list(s) == left and "k/00000" not in s


# ---------------------------------------------------------------- reopen and crash


def _populate(s: Store, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    model: dict[str, bytes] = {}
    for i in range(300):
        k = f"p/{rng.randrange(120):03d}"
        if k in model and rng.random() < 0.3:
            s.delete(k)
            del model[k]
        else:
            v = rng.randbytes(rng.choice([0, 10, 900, 4096, 4097, 20_000]))
            s.put(k, v, content_type=f"c/{i}")
            model[k] = v
    return model


def test_reopen_preserves_everything(tmp_path):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    path = tmp_path / "s.heap"
    with _open(path) as s:
        model = _populate(s, seed)
        infos = {k: s.head(k) for k in model}
    with _open(path, create=False) as s:
        assert len(s) == len(model)
        assert _contents(s) == model
        assert {k: s.head(k) for k in model} == infos
        s.put("after/reopen", b"more")
        assert s.get("after/reopen")[0] == b"more"


def test_abandon_then_open_preserves_every_acknowledged_change(tmp_path):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    path = tmp_path / "s.heap"
    s = _open(path)
    model = _populate(s, seed)
    infos = {k: s.head(k) for k in model}
    s.abandon()
    assert s.closed
    with _open(path, create=False) as s:
        assert _contents(s) == model
        assert {k: s.head(k) for k in model} == infos
        model2 = _populate(s, seed + 1)
        s2_infos = {k: s.head(k) for k in model2}
        s.abandon()
    with _open(path, create=False) as s:
        got = _contents(s)
        for k in model2:
            assert got[k] == model2[k] and s.head(k) == s2_infos[k]


def test_open_missing_without_create_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        _open(tmp_path / "none.heap", create=False)
    assert not (tmp_path / "none.heap").exists()
    with pytest.raises(ValueError):
        _open(tmp_path / "x.heap", durability="fast")


def test_sync_durability_roundtrip_and_reopen(tmp_path):
    path = tmp_path / "s.heap"
    with _open(path, durability="sync") as s:
        assert s.durability == "sync"
        small, big = _value(1, 300), _value(2, 9000)
        s.put("small", small)
        s.put("big", big)
        s.put("gone", b"x")
        s.delete("gone")
    s = _open(path, durability="sync", create=False)
    assert _contents(s) == {"big": big, "small": small}
    s.put("small", b"replaced")
    s.abandon()
    with _open(path, durability="sync", create=False) as s:
        assert _contents(s) == {"big": big, "small": b"replaced"}


# ---------------------------------------------------------------- get_value / store[key]


@pytest.mark.parametrize("size", [0, 100, _fast.GIL_COPY_MAX, _fast.GIL_COPY_MAX + 1, 65536, 70_000])
def test_get_value_returns_what_get_returns(tmp_path, size):
    """The value-only read (a one-frame closure over one C call) agrees with get for
    every kind of key: printable str (fast path), bytes, non-printable or long str keys
    (encode_key), values on both sides of _fast.GIL_COPY_MAX (1 KiB: read first with the
    GIL held, then again without it) and past the 64 KiB scratch buffer."""
    keys = ["k", "dir/ñame", b"raw-bytes", "line\u2028sep", "x" * 300, "é" * 256]
    with _open(tmp_path / "s.heap") as s:
        for i, k in enumerate(keys):
            s.put(k, _value(i, size))
        for i, k in enumerate(keys):
            got = s.get_value(k)
            assert type(got) is bytes
            assert got == s.get(k)[0] == s[k] == _value(i, size)


def test_every_call_on_a_closed_store_says_so(tmp_path):
    from allocator.errors import HeapClosedError
    s = _open(tmp_path / "s.heap")
    s.put("k", b"v")
    s.close()
    calls = [lambda: s.get("k"), lambda: s.get_value("k"), lambda: s["k"], lambda: s.get_range("k", 0, 1),
             lambda: s.head("k"), lambda: s.put("k", b"w"), lambda: s.put("k", b"w", content_type="a/b"),
             lambda: s.delete("k"), lambda: s.list(), lambda: len(s), lambda: "k" in s, lambda: list(s),
             lambda: s.get("k", zero_copy=True)]
    for i, call in enumerate(calls):
        with pytest.raises(HeapClosedError):
            call()
            pytest.fail(f"call {i} on a closed store returned")
    s.close()                                   # idempotent


def test_get_value_errors(tmp_path):
    with _open(tmp_path / "s.heap") as s:
        s.put("k", b"v")
        with pytest.raises(NoSuchKeyError):
            s.get_value("missing")
        with pytest.raises(KeyError):           # a mapping's miss
            s["missing"]
        for bad in ["", "a\x00b", "tab\there", "x" * 1025, b"\xff\xfe"]:
            with pytest.raises(InvalidKeyError):
                s.get_value(bad)
        s.delete("k")
        with pytest.raises(NoSuchKeyError):
            s.get_value("k")


# ---------------------------------------------------------------- checksummed reads (I4)


def _corrupt_one(tmp_path, size: int, *, flip_at: int | None = None):
    path = tmp_path / "s.heap"
    value = _value(size, size)
    with _open(path) as s:
        s.put("before", b"neighbour-a")
        s.put("k", value)
        s.put("zafter", b"neighbour-z")
        info = s._index.head(b"k")
        assert info.value_size == size
        value_off = info.value_off
    i = size // 2 if flip_at is None else flip_at
    _flip(path, value_off + i)
    flipped = bytearray(value)
    flipped[i] ^= 0xFF
    return path, value, bytes(flipped)


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("size", [1, 100, 256, 257, 4096, 4097, 70_000])
def test_I4_flipped_value_byte_is_never_returned(tmp_path, size):
    path, value, _ = _corrupt_one(tmp_path, size)
    with _open(path, create=False) as s:
        with pytest.raises(CorruptObjectError):
            got = s.get("k")[0]
            pytest.fail(f"get returned {'the original' if got == value else 'flipped'} bytes of a corrupt value")
        with pytest.raises(CorruptObjectError):
            s.get_value("k")
        with pytest.raises(CorruptObjectError):
            s["k"]
        with pytest.raises(CorruptObjectError):
            s.get("k", zero_copy=True)
        ranges = [(0, None), (0, 1), (size // 2, size // 2 + 1), (size, None)]
        if size > 2:
            ranges.append((size - 1, None))      # a range away from the flipped byte: still refused
        for start, end in ranges:
            with pytest.raises(CorruptObjectError):
                s.get_range("k", start, end)
        # metadata and other objects are unaffected
        assert s.head("k").size == size
        assert s.get("before")[0] == b"neighbour-a"
        assert s.get("zafter")[0] == b"neighbour-z"
        assert len(s) == 3
        # a replace heals the key
        s.put("k", b"fresh")
        assert s.get("k")[0] == b"fresh"


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("field_off", [4, 5, 8, 15], ids=["height_flags", "ctype_size", "mtime", "mtime-top"])
def test_I2_record_failing_its_crc_is_refused_on_read_and_the_rest_is_served(tmp_path, field_off):
    path = tmp_path / "s.heap"
    with _open(path) as s:
        s.put("before", b"neighbour-a")
        s.put("k", b"v" * 100, content_type="text/plain")
        s.put("zafter", b"neighbour-z")
        rec_off = s._index.head(b"k").rec_off
    if field_off == 4:      # height 1 -> 2 would move the tail: flip INLINE's neighbour bit 6 (must be 0)
        with open(path, "r+b") as f:
            f.seek(rec_off + 4)
            b = f.read(1)[0]
            f.seek(rec_off + 4)
            f.write(bytes([b ^ 0x40]))
    else:
        _flip(path, rec_off + field_off)
    if field_off == 4:                  # a reserved bit: the record no longer decodes, open refuses
        with pytest.raises(CorruptHeapError) as ei:
            _open(path, create=False)
        assert "I1/I2" in str(ei.value), str(ei.value)
        return
    with _open(path, create=False) as s:
        with pytest.raises(CorruptObjectError):
            s.get("k")
        assert s.get("before")[0] == b"neighbour-a" and s.get("zafter")[0] == b"neighbour-z"
        assert len(s) == 3
    rep = check_heap(path)
    assert "I2" in {f.invariant for f in rep.findings}, format_report(rep)
    with _open(path, create=False) as s:
        s.put("k", b"fresh")            # a replace heals the key
        assert s.get("k")[0] == b"fresh"


@pytest.mark.corrupts_heap
def test_I5_store_of_another_record_layout_is_refused_by_name(tmp_path):
    path = tmp_path / "s.heap"
    with _open(path) as s:
        s.put("k", b"v")
        super_off = s.heap.root
    with open(path, "r+b") as f:
        f.seek(super_off + 8)
        f.write((1).to_bytes(4, "little"))      # version 1: 64-byte record headers
    with pytest.raises(UnsupportedVersionError) as ei:
        _open(path, create=False)
    assert ei.value.field == "store version" and "layout 1" in str(ei.value), str(ei.value)


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("size", [1, 100, 256])
def test_I4_verify_reads_off_still_refuses_a_flipped_small_value(tmp_path, size):
    # a small value's CRC32C is not stored but computed on every read for ObjectInfo.checksum,
    # so the record CRC that covers it is checked at no extra cost, verify_reads or not (FORMAT.md 4.7)
    path, _, _ = _corrupt_one(tmp_path, size)
    with _open(path, create=False, verify_reads=False) as s:
        for read in (lambda: s.get("k"), lambda: s.get_value("k"), lambda: s.get("k", zero_copy=True),
                     lambda: s.get_range("k", 0, 1)):
            with pytest.raises(CorruptObjectError):
                read()
        assert s.head("k").size == size
        assert s.get("before")[0] == b"neighbour-a"


@pytest.mark.corrupts_heap
@pytest.mark.parametrize("size", [257, 4096, 4097, 70_000])
def test_I4_verify_reads_off_returns_the_flipped_bytes(tmp_path, size):
    path, value, flipped = _corrupt_one(tmp_path, size)
    with _open(path, create=False, verify_reads=False) as s:
        got, info = s.get("k")
        assert got == flipped and got != value
        assert s.get_value("k") == flipped == s["k"]
        assert info.checksum == crc32c(value) != crc32c(got)
        assert bytes(s.get("k", zero_copy=True)[0]) == flipped
        assert s.get_range("k", size // 2, size // 2 + 1)[0] == flipped[size // 2:size // 2 + 1]


# ---------------------------------------------------------------- heap full


def test_heap_full_keeps_every_acknowledged_object_and_recovers_after_deletes(tmp_path):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = tmp_path / "s.heap"
    with _open(path, initial_size=2 << 20, max_size=4 << 20) as s:
        acked: dict[str, bytes] = {}
        i = 0
        with pytest.raises(HeapFullError):
            while True:
                i += 1
                assert i < 10_000, "the heap never filled"
                k = f"fill/{i:05d}"
                v = rng.randbytes(rng.choice([50, 3000, 20_000, 60_000]))
                s.put(k, v)
                acked[k] = v
        assert f"fill/{i:05d}" not in s, "the refused put stored its key"
        assert len(acked) > 10
        assert len(s) == len(acked)
        assert _contents(s) == acked
        # replacing with a bigger value may be refused; the old one stays
        k0 = next(iter(acked))
        try:
            s.put(k0, bytes(200_000))
            acked[k0] = bytes(200_000)
        except HeapFullError:
            pass
        assert s.get(k0)[0] == acked[k0]
        for k in list(acked)[: len(acked) // 2]:
            s.delete(k)
            del acked[k]
        for j in range(5):
            k = f"again/{j}"
            v = rng.randbytes(20_000)
            s.put(k, v)
            acked[k] = v
        assert _contents(s) == acked
    with _open(path, create=False) as s:
        assert _contents(s) == acked


# ---------------------------------------------------------------- zero copy


@pytest.mark.parametrize("size", [0, 100, 70_000])
def test_zero_copy_view_is_read_only_and_equals_the_bytes(tmp_path, size):
    value = _value(size, size)
    with _open(tmp_path / "s.heap") as s:
        info = s.put("k", value)
        view, vinfo = s.get("k", zero_copy=True)
        assert isinstance(view, memoryview)
        assert view.readonly
        assert view == value and bytes(view) == value
        assert vinfo == info
        if size:
            with pytest.raises(TypeError):
                view[0] = 0
        assert s.get("k")[0] == value
        del view


# ---------------------------------------------------------------- the checker's view (I3)


def test_I3_checker_finds_exactly_the_blocks_the_store_holds(tmp_path):
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    path = tmp_path / "s.heap"
    with _open(path) as s:
        model = _populate(s, seed)
        expected = {s.heap.root, s.heap.load8(s.heap.root + 16)}   # superblock, head
        for k in model:
            info = s._index.head(k.encode())
            expected.add(info.rec_off)
            if info.value_size > INLINE_MAX:
                assert info.value_off != info.rec_off
                expected.add(info.value_off)
        large = sum(1 for v in model.values() if len(v) > INLINE_MAX)
        assert large and large < len(model)
    rep = check_heap(path)
    assert rep.ok, format_report(rep)
    assert len(rep.blocks) == 2 + len(model) + large, (
        f"checker sees {len(rep.blocks)} blocks; the store holds 2 + {len(model)} records + {large} values")
    assert set(rep.blocks) == expected, (f"leaked {sorted(set(rep.blocks) - expected)[:5]}, "
                                         f"missing {sorted(expected - set(rep.blocks))[:5]}")


@pytest.mark.parametrize("size", [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 4096, 4097, 100_003])
def test_I4_etag_computed_in_c_is_the_md5_of_the_value(tmp_path, size):
    value = bytes((i * 7 + size) % 256 for i in range(size))
    with Store.open(tmp_path / "s.heap", initial_size=1 << 20, max_size=16 << 20, backend="none") as s:
        before = time.time_ns()
        info = s.put("k", value)
        after = time.time_ns()
        assert info.etag == hashlib.md5(value).hexdigest() == s.head("k").etag
        assert info.checksum == s.head("k").checksum and info.size == size
        assert before <= info.last_modified <= after and s.head("k").last_modified == info.last_modified


def test_put_created_reports_create_then_replace(tmp_path):
    with Store.open(tmp_path / "s.heap", initial_size=1 << 20, max_size=16 << 20, backend="none") as s:
        info, created = s.put_created("k", b"one")
        assert created and info.size == 3
        info2, created2 = s.put_created("k", b"two!")
        assert not created2 and info2.size == 4 and s.get("k")[0] == b"two!"
        s.delete("k")
        assert s.put_created("k", b"3")[1]


def test_put_created_is_reported_through_group_commit(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    with Store.open(tmp_path / "s.heap", initial_size=1 << 20, max_size=16 << 20, backend="msync",
                    group_commit=True) as s, ThreadPoolExecutor(8) as ex:
        first = list(ex.map(lambda i: s.put_created(f"k{i % 16}", b"v%d" % i)[1], range(16)))
        again = list(ex.map(lambda i: s.put_created(f"k{i % 16}", b"w%d" % i)[1], range(16)))
    assert first == [True] * 16 and again == [False] * 16


# ------------------------------------------------------------------ store version 2 (FORMAT.md 9)
def _derived_keys(path) -> set[str]:
    from recovery import format as fmt
    rep = check_heap(path, records=True)
    assert rep.ok, format_report(rep)
    return {r.key.decode() for r in rep.store.records if r.hdr["height_flags"] & fmt.OBJ_FLAG_MD5_DERIVED}


def test_I5_a_version_2_store_is_read_and_raised_to_version_3_at_open(tmp_path):
    path = v2_store(tmp_path)
    assert _derived_keys(path) == set()                  # the checker reads version 2 as it is
    want = v2_contents()
    with _open(path, create=False) as s:
        assert s.report["index_upgraded_from"] == 2
        super_off = s.heap.root
        assert int.from_bytes(s.heap.read(super_off + 8, 4), "little") == 3
        for k, (v, ct) in want.items():                 # every stored ETag as written
            got, info = s.get(k)
            assert (got, info.etag, info.content_type) == (v, hashlib.md5(v).hexdigest(), ct), k
        s.put("small/new", b"n" * 50)                   # version-3 records beside version-2 ones
        s.put("small/01", b"replaced", if_match=hashlib.md5(want["small/01"][0]).hexdigest())
        want["small/new"], want["small/01"] = (b"n" * 50, None), (b"replaced", None)
        s.delete("small/02", if_match=hashlib.md5(want.pop("small/02")[0]).hexdigest())
        infos, _ = s.list()
        assert {i.key: i.etag for i in infos} == {k: hashlib.md5(v).hexdigest() for k, (v, _) in want.items()}
    assert _derived_keys(path) == {"small/new", "small/01"}
    with _open(path, create=False) as s:
        assert s.report["index_upgraded_from"] is None
        assert {k: s.get(k)[0] for k in s} == {k: v for k, (v, _) in want.items()}


@pytest.mark.corrupts_heap
def test_I5_md5_derived_records_in_a_version_2_store_are_refused(tmp_path):
    """A version-2 superblock over version-3 records (MD5_DERIVED): an old build would misread
    them, so it is damage, not a store to upgrade: refused, and nothing in it is lost."""
    path = tmp_path / "s.heap"
    with _open(path) as s:
        s.put("a", b"x" * 300)                          # a stored ETag
        s.put("b", b"y" * 100)                          # MD5_DERIVED
        super_off = s.heap.root
    with open(path, "r+b") as f:
        f.seek(super_off + 8)
        f.write((2).to_bytes(4, "little"))
    rep = check_heap(path)
    assert [f.invariant for f in rep.findings] == ["I5"] and "MD5_DERIVED" in rep.findings[0].message, \
        format_report(rep)
    with pytest.raises(CorruptHeapError):
        _open(path, create=False)
    with open(path, "r+b") as f:                        # the superblock repaired by hand
        f.seek(super_off + 8)
        f.write((3).to_bytes(4, "little"))
    with _open(path, create=False) as s:
        assert {k: s.get(k)[0] for k in s} == {"a": b"x" * 300, "b": b"y" * 100}


@pytest.mark.parametrize("size", [0, 100, 256, 257, 4096, 4097])
def test_small_values_derive_their_etag_and_every_read_reports_the_md5(tmp_path, size):
    """FORMAT.md 4.7: a value of at most 256 bytes is MD5_DERIVED (its ETag not stored, 16
    bytes saved); get, head, list, put's info and if_match all see the MD5 all the same."""
    path = tmp_path / "s.heap"
    v = _value(size, size)
    md5 = hashlib.md5(v).hexdigest()
    with _open(path) as s:
        assert s.put("k", v).etag == md5
        assert s.get("k")[1].etag == s.head("k").etag == s.list()[0][0].etag == md5
        assert s.get("k", zero_copy=True)[1].etag == md5
        assert s.get_range("k", 0, 1)[1].etag == md5
        with pytest.raises(PreconditionFailedError):
            s.put("k", b"other", if_match=WRONG_ETAG)
        s.put("k", v, if_match=md5)
        with s.batch() as b:
            b.put("k", v, if_match=md5)
    assert (_derived_keys(path) == {"k"}) == (size <= 256)


def test_infos_built_in_c_are_whole_objectinfos_outside_the_gc(tmp_path):
    """allocator._fast builds ObjectInfo in place (fastcall.c make_info_of) and leaves it
    untracked by the GC: each field must be where a NamedTuple keeps it, and anything but a
    tuple subclass is refused rather than misbuilt."""
    import gc

    from store.store import ObjectInfo
    with _open(tmp_path / "s.heap") as s:
        s.put("a", b"x" * 100, content_type="text/plain")
        for info in (s.get("a")[1], s.head("a"), s.list()[0][0]):
            assert type(info) is ObjectInfo and not gc.is_tracked(info)
            assert info == ObjectInfo("a", 100, hashlib.md5(b"x" * 100).hexdigest(), "text/plain",
                                      info.last_modified, crc32c(b"x" * 100))
            assert info._asdict()["content_type"] == "text/plain" and info.size == info[1] == 100
        with pytest.raises(TypeError, match="tuple subclass"):
            _fast.index_list(s._index._xp, b"", b"", 10, dict)
