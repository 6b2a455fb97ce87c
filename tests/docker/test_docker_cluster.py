"""The compose profile `cluster` on a real engine: three pmstore shards behind nginx.

Keys PUT through nginx spread over all three shards, each on the shard ShardedClient.shard_for
predicts (nginx's consistent hash reproduced); every key reads back through nginx;
ShardedClient lists them all in order across the shards; restarting a shard loses nothing;
each shard's heap is clean after `stop`.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
from dockerutil import Stack, free_ports, note

from service.client import Client
from service.sharded import ShardedClient

SHARDS = ("shard1", "shard2", "shard3")
# awkward keys too: nginx hashes the decoded path, and the client must agree on placement
KEYS = [f"user/{i:04d}/profile" for i in range(240)] + [
    "a//b", "a/./b", "x/../y/z", "sp ace", "q?x=1#f", "pct%41", "ünï/çødé", "€uro", "𝄞clef", "z" * 300]


@pytest.fixture(scope="module")
def cluster(docker_env):
    p1, p2, p3, gw = free_ports(4)
    stack = Stack(docker_env.compose, docker_env.docker, f"pmstore-{docker_env.session}-cluster",
                  docker_env.stack_env(PMSTORE_SHARD1_PORT=str(p1), PMSTORE_SHARD2_PORT=str(p2),
                                       PMSTORE_SHARD3_PORT=str(p3), PMSTORE_NGINX_PORT=str(gw),
                                       PMSTORE_HEAP_MAX_SIZE="1GiB", PMSTORE_MAX_OBJECT_SIZE="16MiB"),
                  profiles=("cluster",))
    stack.shard_urls = [f"http://127.0.0.1:{p}" for p in (p1, p2, p3)]
    stack.gateway = f"http://127.0.0.1:{gw}"
    try:
        yield stack
    finally:
        stack.down()


def _value(key: str) -> bytes:
    return f"value of {key}".encode() * 3


def test_cluster_up_healthy(cluster):
    t0 = time.monotonic()
    cluster.compose("up", "-d", "--no-build", "nginx")    # the shards come up first (depends_on healthy)
    s = cluster.wait_healthy("nginx", *SHARDS) + time.monotonic() - t0
    note(f"cluster: up -> 3 shards + nginx healthy {s:.1f} s")
    assert httpx.get(cluster.gateway + "/healthz").status_code == 200
    r = httpx.get(cluster.gateway + "/v1/objects")              # listing is not routed by nginx
    assert r.status_code == 501 and r.json()["error"]["code"] == "NotImplemented"


def test_keys_spread_over_shards_as_predicted(cluster):
    with Client(cluster.gateway) as gw, ShardedClient(cluster.shard_urls) as sc:
        for k in KEYS:
            gw.put(k, _value(k))
        per_shard = [{m.key for m in s.iter()} for s in sc.shards]
        counts = [len(s) for s in per_shard]
        note(f"cluster: {len(KEYS)} keys through nginx -> shards {counts}")
        assert all(counts), f"a shard got no keys: {counts}"
        assert sum(counts) == len(KEYS) and set().union(*per_shard) == set(KEYS)
        wrong = [(k, i, sc.shard_for(k)) for i, keys in enumerate(per_shard) for k in keys
                 if sc.shard_for(k) != i]
        assert not wrong, f"nginx placed keys elsewhere than ShardedClient.shard_for: {wrong[:5]}"
        for k in KEYS:
            assert gw.get(k) == _value(k), k
        # direct routing reaches the same shard nginx uses
        assert sc.get(KEYS[0]) == _value(KEYS[0])


def test_sharded_listing_is_ordered_and_complete(cluster):
    expected = sorted(KEYS, key=lambda k: k.encode())
    with ShardedClient(cluster.shard_urls, gateway=cluster.gateway) as sc:
        assert [m.key for m in sc.iter(page_size=17)] == expected
        assert [m.key for m in sc.iter("user/01")] == [k for k in expected if k.startswith("user/01")]
        page = sc.list(limit=5)
        assert [m.key for m in page.objects] == expected[:5] and page.next


def test_shard_restart_loses_nothing(cluster):
    cluster.compose("restart", "shard2")
    cluster.wait_healthy("shard2")
    with ShardedClient(cluster.shard_urls, gateway=cluster.gateway) as sc:
        for k in KEYS:
            assert sc.get(k) == _value(k), k
        assert len(list(sc.iter())) == len(KEYS)
        big = os.urandom(3 << 20)                        # streamed through nginx both ways
        sc.put("after-restart/big", big)
        assert sc.get("after-restart/big") == big


def test_shard_heaps_are_clean_after_stop(cluster):
    cluster.compose("stop")
    for shard in SHARDS:
        info = cluster.heap_info(shard)
        assert info["clean_shutdown"] is True, (shard, info)
        p = cluster.pmstore(shard, "check", "/data/pmstore.heap", check=False)
        assert p.returncode == 0, f"{shard}: {p.stdout}{p.stderr}"
