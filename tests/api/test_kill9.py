"""kill -9 of a real server under concurrent PUT load, 20 cycles.

Every PUT answered 2xx must read back with identical bytes after the restart; a PUT that
got no answer may have left the old value or the new one; no key that was never written
may appear. Writers own disjoint keys and write each key sequentially, so the model of
what a key may hold is exact. The seed is printed; the heap is checked at teardown.
"""

from __future__ import annotations

import os
import random
import threading
import time

import httpx
from apiutil import Server

from service.client import object_path

CYCLE_COUNT = 20
WRITER_COUNT = 6
KEYS_PER_WRITER = 6
LOAD_S = (0.15, 0.5)            # random load time before the kill, seconds
ABSENT = None


def test_kill9_under_put_load_loses_no_acknowledged_write(tmp_path):
    seed = int(os.environ.get("PMSTORE_TEST_SEED", random.randrange(1 << 32)))
    print(f"kill9 seed {seed}")
    rng = random.Random(seed)
    heap = tmp_path / "kill9.heap"
    keys = [f"w{w}/k{k}" for w in range(WRITER_COUNT) for k in range(KEYS_PER_WRITER)]
    possible = {k: {ABSENT} for k in keys}     # values each key may hold after a crash
    acked_count = 0
    failures: list[str] = []
    for cycle in range(CYCLE_COUNT):
        srv = Server(heap).start()
        stop = threading.Event()
        lock = threading.Lock()

        def writer(w: int, wseed: int, url: str, stop: threading.Event, lock: threading.Lock, cycle: int) -> None:
            nonlocal acked_count
            wr = random.Random(wseed)
            mine = [k for k in keys if k.startswith(f"w{w}/")]
            with httpx.Client(base_url=url, timeout=10) as c:
                seq = 0
                while not stop.is_set():
                    key = wr.choice(mine)
                    value = f"{cycle}:{w}:{seq}:".encode() + wr.randbytes(wr.randrange(0, 3000))
                    seq += 1
                    with lock:
                        possible[key].add(value)      # in flight: may or may not land
                    try:
                        r = c.put(object_path(key), content=value)
                    except httpx.HTTPError:
                        return                         # the server died: the value stays possible
                    if r.status_code not in (200, 201):
                        failures.append(f"PUT {key}: {r.status_code} {r.text}")
                        return
                    with lock:
                        possible[key] = {value}        # acknowledged: durable, the only outcome
                        acked_count += 1

        threads = [threading.Thread(target=writer, args=(w, rng.randrange(1 << 32), srv.url, stop, lock, cycle))
                   for w in range(WRITER_COUNT)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(*LOAD_S))
        srv.kill9()
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, failures
        # restart (recovery at open) and compare every key with the model
        srv = Server(heap).start()
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            listed = [o["key"] for o in c.get("/v1/objects", params={"limit": 10000}).json()["objects"]]
            assert set(listed) <= set(keys), f"cycle {cycle}: keys never written: {set(listed) - set(keys)}"
            for key in keys:
                r = c.get(object_path(key))
                got = r.content if r.status_code == 200 else ABSENT
                assert r.status_code in (200, 404), r.text
                assert got in possible[key], f"cycle {cycle} seed {seed}: {key} holds {got!r:.60}"
                assert (got is not ABSENT) == (key in listed)
                possible[key] = {got}                  # read back: now the only state
        if cycle == CYCLE_COUNT - 1:
            assert srv.terminate() is not None         # last cycle: a clean close for the checker
        else:
            srv.kill9()                                # crash again while idle, straight after recovery
    assert acked_count > CYCLE_COUNT * 10, f"only {acked_count} acknowledged PUTs: the load did not run"
    print(f"kill9: {acked_count} acknowledged PUTs over {CYCLE_COUNT} cycles")
