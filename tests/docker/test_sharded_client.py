"""service.sharded without docker: the k-way merged listing and its token against three real
`pmstore serve` processes, and the placement ring's properties.

(The docker tier checks placement against nginx itself: test_docker_cluster.py.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dockerutil import REPO, free_ports

from recovery.check import check_heap, format_report
from service.sharded import HashRing, ShardedClient, nginx_uri


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three `pmstore serve` processes on free ports, small heaps; checked at rest afterwards."""
    tmp = tmp_path_factory.mktemp("shards")

    def _log(url):
        i = urls.index(url)
        return (tmp / f"shard{i}.log").read_text(errors="replace")[-2000:]

    pmstore = Path(sys.executable).with_name("pmstore")
    procs, urls, heaps = [], [], []
    for i, port in enumerate(free_ports(3)):
        heap = tmp / f"shard{i}.heap"
        env = {**os.environ, "PMSTORE_HEAP_PATH": str(heap), "PMSTORE_PORT": str(port),
               "PMSTORE_HOST": "127.0.0.1", "PMSTORE_DURABILITY": "os", "PMSTORE_HEAP_INITIAL_SIZE": "2MiB",
               "PMSTORE_HEAP_MAX_SIZE": "64MiB", "PMSTORE_MAX_OBJECT_SIZE": "1MiB"}
        env.pop("PMSTORE_API_TOKEN", None)
        with open(tmp / f"shard{i}.log", "wb") as log:
            procs.append(subprocess.Popen([str(pmstore), "serve", "--log-level", "warning"], env=env, cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
        heaps.append(heap)
    try:
        deadline = time.monotonic() + 30
        for url, p in zip(urls, procs):
            while True:
                assert p.poll() is None, f"pmstore serve for {url} exited {p.returncode}: {_log(url)}"
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"{url} not ready in 30 s"
                time.sleep(0.05)
        time.sleep(0.2)
        dead = [(u, p.returncode) for u, p in zip(urls, procs) if p.poll() is not None]
        assert not dead, f"a shard answered but its server exited (port taken?): {dead}"
        yield urls
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
    for heap in heaps:
        rep = check_heap(heap, at_rest=True)
        assert rep.ok, f"shard heap fails the checker (kept at {heap}):\n{format_report(rep)}"


@pytest.fixture
def sc(shards):
    """A ShardedClient over the shards, emptied before the test."""
    with ShardedClient(shards) as c:
        for s in c.shards:
            for m in list(s.iter()):
                s.delete(m.key)
        yield c


def _bytewise(keys):
    return sorted(keys, key=lambda k: k.encode())


def _all_pages(sc, prefix="", limit=1000):
    keys, after, pages = [], None, 0
    while True:
        page = sc.list(prefix, after=after, limit=limit)
        pages += 1
        keys += [m.key for m in page.objects]
        if page.next is None:
            return keys, pages
        after = page.next


def test_ring_spreads_keys_and_moves_few_when_a_shard_is_added():
    names = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
    three, four = HashRing(names), HashRing([*names, "127.0.0.1:8084"])
    keys = [nginx_uri(f"k{i}") for i in range(6000)]
    owners = [three.lookup(k) for k in keys]
    shares = [owners.count(i) / len(keys) for i in range(3)]
    assert all(0.15 < s < 0.55 for s in shares), shares
    moved = [(a, four.lookup(k)) for a, k in zip(owners, keys) if four.lookup(k) != a]
    assert all(b == 3 for _, b in moved)                    # keys only move to the new shard
    assert 0.1 < len(moved) / len(keys) < 0.45
    assert HashRing(names).lookup(b"/v1/objects/x") == three.lookup(b"/v1/objects/x")     # deterministic


def test_nginx_uri_is_the_decoded_normalised_path():
    assert nginx_uri("a/b") == b"/v1/objects/a/b"
    assert nginx_uri("a//b") == b"/v1/objects/a//b"         # merge_slashes off
    assert nginx_uri("a/./b") == b"/v1/objects/a/b"
    assert nginx_uri("x/../y") == b"/v1/objects/y"
    assert nginx_uri("x/..") == b"/v1/objects/"
    assert nginx_uri("ü") == "/v1/objects/ü".encode()


def test_merged_listing_is_bytewise_ordered_across_shards(sc):
    rnd = random.Random(7)
    print("seed 7")
    keys = [f"obj/{rnd.randrange(10**6):06d}" for _ in range(250)] + \
        ["é", "z", "€", "𝄞", "a//b", "A", "obj", "obj/", "obj0"]
    keys = list(dict.fromkeys(keys))
    for k in keys:
        sc.put(k, k.encode())
    per_shard = [len(list(s.iter())) for s in sc.shards]
    assert all(per_shard) and sum(per_shard) == len(keys), per_shard
    for limit in (1, 7, 100, 1000):
        got, pages = _all_pages(sc, limit=limit)
        assert got == _bytewise(keys), limit
        assert pages == -(-len(keys) // limit)             # a full last page has no `next`
    got, _ = _all_pages(sc, "obj/", limit=9)
    assert got == _bytewise(k for k in keys if k.startswith("obj/"))
    assert [m.key for m in sc.iter("obj/", page_size=13)] == got
    assert sc.list("nothing-here").objects == [] and sc.list("nothing-here").next is None


def test_last_page_has_no_token_and_exact_pages_end(sc):
    for k in ("a", "b", "c", "d"):
        sc.put(k, b"1")
    p = sc.list(limit=4)
    assert [m.key for m in p.objects] == ["a", "b", "c", "d"] and p.next is None
    p = sc.list(limit=2)
    p2 = sc.list(after=p.next, limit=2)
    assert [m.key for m in p2.objects] == ["c", "d"] and p2.next is None


def test_token_continues_after_the_last_key_whatever_changed(sc):
    keys = [f"k{i:03d}" for i in range(60)]
    for k in keys:
        sc.put(k, b"v")
    first = sc.list(limit=20)
    last = first.objects[-1].key
    assert last == "k019"
    sc.put("k005x", b"new, before the cursor")          # not seen: already passed
    sc.put("k030x", b"new, after the cursor")           # seen
    sc.delete("k020")                                   # the next key is gone
    sc.delete("k041")
    rest, after = [], first.next
    while after is not None:
        page = sc.list(after=after, limit=20)
        rest += [m.key for m in page.objects]
        after = page.next
    expected = _bytewise([k for k in keys[20:] if k not in ("k020", "k041")] + ["k030x"])
    assert rest == expected


def test_bad_arguments(sc):
    with pytest.raises(ValueError):
        sc.list(limit=0)
    with pytest.raises(ValueError):
        sc.list(limit=10_001)
    with pytest.raises(ValueError, match="not a `next` token"):
        sc.list(after="bm90IGEgdG9rZW4")
    sc.put("a", b"1")
    sc.put("b", b"1")
    token = sc.list(limit=1).next
    two = [str(s.http.base_url).rstrip("/") for s in sc.shards[:2]]
    with ShardedClient(two) as c2, pytest.raises(ValueError, match="3 shards"):
        c2.list(after=token)


def test_direct_routing_uses_the_owning_shard(sc):
    for i in range(30):
        sc.put(f"r{i}", b"x")
    for i in range(30):
        key = f"r{i}"
        owner = sc.shard_for(key)
        assert sc.shards[owner].exists(key)
        assert not any(s.exists(key) for j, s in enumerate(sc.shards) if j != owner)
