"""One pmstore container from docker/compose.yaml on a real engine: healthy after `up`, PUT and
GET on 127.0.0.1, data kept across `restart`, a clean heap after `stop` (SIGTERM closes it),
and after `docker kill -s KILL` every acknowledged PUT back with the checker clean.

The tests run in file order on one stack (module fixture); `down -v` removes it at the end.
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest
from dockerutil import Stack, free_ports, note, run

from allocator.errors import PmstoreError
from service.client import Client

SERVICE = "pmstore"


@pytest.fixture(scope="module")
def single(docker_env):
    (port,) = free_ports(1)
    stack = Stack(docker_env.compose, docker_env.docker, f"pmstore-{docker_env.session}-single",
                  docker_env.stack_env(PMSTORE_PORT=str(port), PMSTORE_HEAP_MAX_SIZE="1GiB",
                                       PMSTORE_MAX_OBJECT_SIZE="16MiB"))
    stack.port = port
    stack.url = f"http://127.0.0.1:{port}"
    try:
        yield stack
    finally:
        stack.down()


def test_up_becomes_healthy(single):
    t0 = time.monotonic()
    single.compose("up", "-d", "--no-build", SERVICE)
    up_s = time.monotonic() - t0
    healthy_s = single.wait_healthy(SERVICE) + up_s
    note(f"single: `up -d` {up_s:.1f} s, up -> healthy {healthy_s:.1f} s")
    info = single.inspect(SERVICE)
    assert info["Config"]["User"] == "pmstore"
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert info["HostConfig"]["Memory"] > 0 and info["HostConfig"]["NanoCpus"] > 0     # limits applied
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    with Client(single.url) as c:
        assert c.healthy() and c.ready()


def test_put_and_get_on_loopback(single):
    with Client(single.url) as c:
        r = c.put("docs/hello.txt", b"hello from docker", content_type="text/plain")
        assert r["created"] and r["size"] == 17
        assert c.get("docs/hello.txt") == b"hello from docker"
        assert c.head("docs/hello.txt").content_type.startswith("text/plain")
        big = os.urandom(3 << 20)
        c.put("big.bin", big)
        assert c.get("big.bin") == big
        assert [m.key for m in c.iter()] == ["big.bin", "docs/hello.txt"]


def test_restart_keeps_data(single):
    single.compose("restart", SERVICE)
    single.wait_healthy(SERVICE)
    with Client(single.url) as c:
        assert c.get("docs/hello.txt") == b"hello from docker"


def test_stop_closes_the_heap_cleanly(single):
    single.compose("stop", SERVICE)
    info = single.heap_info(SERVICE)
    assert info["clean_shutdown"] is True and info["lanes_not_empty"] == 0, info
    assert single.pmstore(SERVICE, "check", "/data/pmstore.heap").returncode == 0
    single.compose("start", SERVICE)
    single.wait_healthy(SERVICE)


def test_kill_keeps_every_acknowledged_put(single):
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int):
        with Client(single.url, timeout_s=5) as c:
            for i in range(100_000):
                if stop.is_set():
                    return
                key, value = f"kill/{w}/{i:06d}", os.urandom(64 + (i * 37) % 8000)
                try:
                    c.put(key, value)
                except (httpx.HTTPError, PmstoreError):     # the server is gone: never acknowledged
                    return
                with lock:
                    acked[key] = value

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    run([single.docker, "kill", "-s", "KILL", single.container(SERVICE)])
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 300, f"only {len(acked)} PUTs acknowledged before the kill"
    assert single.inspect(SERVICE)["State"]["Running"] is False     # a kill is not restarted

    # the heap exactly as the kill left it is one the checker accepts as a crash state
    assert single.heap_info(SERVICE)["clean_shutdown"] is False
    crashed = single.pmstore(SERVICE, "check", "--crashed", "/data/pmstore.heap", check=False)
    assert crashed.returncode == 0, crashed.stdout + crashed.stderr

    single.compose("start", SERVICE)
    single.wait_healthy(SERVICE)
    with Client(single.url) as c:
        missing = [k for k, v in acked.items() if c.get(k) != v]
        listed = {m.key for m in c.iter("kill/")}
    assert not missing, f"{len(missing)} acknowledged PUTs lost or changed, e.g. {missing[:3]}"
    assert set(acked) <= listed and len(listed - set(acked)) <= 4     # at most one in flight per writer
    note(f"single: kill -9 under 4 writers after {len(acked)} acknowledged PUTs: all back after restart")

    single.compose("stop", SERVICE)
    at_rest = single.pmstore(SERVICE, "check", "/data/pmstore.heap", check=False)
    assert at_rest.returncode == 0, at_rest.stdout + at_rest.stderr
    assert single.heap_info(SERVICE)["clean_shutdown"] is True
