"""The service as deployed: `pmstore serve` (uvicorn) on 127.0.0.1, the clients and the CLI over TCP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import time

import pytest
from apiutil import MAX_OBJECT_SIZE, PMSTORE_BIN, TOKEN, Server

from service.cli import heap_state
from service.client import AsyncClient, Client, UnauthorizedError
from store.errors import NoSuchKeyError, ObjectTooLargeError


@pytest.fixture
def served(tmp_path):
    with Server(tmp_path / "srv.heap") as srv:
        yield srv


def test_clients_over_tcp(served):
    big = hashlib.sha256(b"x").digest() * ((2 << 20) // 32)        # streamed in chunks
    with Client(served.url) as c:
        assert c.put("a/1", b"one", content_type="text/plain")["created"]
        assert c.put("big", big, content_md5=True)["size"] == len(big)
        assert c.get("big") == big
        assert c.get("big", start=5, end=70_000) == big[5:70_000]
        assert c.head("a/1").content_type == "text/plain"
        assert [o.key for o in c.iter()] == ["a/1", "big"]
        with pytest.raises(NoSuchKeyError):
            c.get("nope")
        with pytest.raises(ObjectTooLargeError):
            c.put("huge", b"h" * (MAX_OBJECT_SIZE + 1))
        assert c.stats()["objects"] == 2

    async def concurrent():
        async with AsyncClient(served.url) as ac:
            await asyncio.gather(*(ac.put(f"c/{i}", str(i).encode()) for i in range(50)))
            values = await asyncio.gather(*(ac.get(f"c/{i}") for i in range(50)))
            assert values == [str(i).encode() for i in range(50)]
            assert len((await ac.list("c/")).objects) == 50
    asyncio.run(concurrent())


def _raw_request(url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request head and some body bytes, then read the answer without finishing the body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        for chunk in body_chunks:
            s.sendall(chunk)
        answer = b""
        while b"}}" not in answer:      # the error body ends the answer; then the server closes
            data = s.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_oversized_bodies_get_413_before_they_are_sent_whole(served):
    t0 = time.monotonic()
    answer = _raw_request(served.url, b"PUT /v1/objects/big HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 1073741824\r\n\r\n", [b"x" * 1000])     # 1 GiB announced
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"EntityTooLarge"' in answer
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"y" * (1 << 20))
    answer = _raw_request(served.url, b"PUT /v1/objects/big HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 5)        # 5 MiB of 1 GiB, no end
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"EntityTooLarge"' in answer
    answer = _raw_request(served.url, b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 1073741824\r\n\r\n", [])
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert time.monotonic() - t0 < 10
    with Client(served.url) as c:
        assert not c.exists("big")


def test_second_server_on_the_same_heap_fails_fast(served):
    other = Server(served.heap_path).start(wait=False)
    rc = other.proc.wait(30)
    err = other.stderr()
    assert rc != 0
    assert f"heap is locked by process {served.proc.pid}" in err, err
    assert "Traceback" not in err, f"a locked heap is reported in one line, not a traceback:\n{err}"
    with Client(served.url) as c:                        # the first one still serves
        assert c.ready()


def test_sigterm_closes_the_heap_cleanly_and_data_survives(tmp_path):
    heap = tmp_path / "term.heap"
    with Server(heap) as srv, Client(srv.url) as c:
        c.put("kept", b"value")
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why
        assert srv.terminate() in (0, -signal.SIGTERM)
    state = heap_state(heap)
    assert state["clean_shutdown"] and state["lanes_not_empty"] == 0 and state["locked_by_pid"] is None
    with Server(heap) as srv, Client(srv.url) as c:
        assert c.get("kept") == b"value"
        assert c.stats()["recovery"]["was_clean"]


def test_token_and_cli_commands(tmp_path):
    env = {"PMSTORE_API_TOKEN": TOKEN}
    with Server(tmp_path / "cli.heap", env=env) as srv:
        with Client(srv.url) as anon, pytest.raises(UnauthorizedError):
            anon.list()
        cli_env = {**os.environ, "PMSTORE_URL": srv.url, "PMSTORE_API_TOKEN": TOKEN}

        def cli(*args, stdin=None, ok=True):
            r = subprocess.run([PMSTORE_BIN, *args], check=False, env=cli_env, input=stdin, capture_output=True, timeout=60)
            assert (r.returncode == 0) == ok, (args, r.returncode, r.stderr)
            return r
        src = tmp_path / "in.bin"
        src.write_bytes(b"\x00\x01binary\xff")
        assert b'"created": true' in cli("put", "d/file.bin", str(src), "--content-type", "application/x-test").stdout
        cli("put", "d/stdin", stdin=b"from stdin")
        assert cli("get", "d/file.bin").stdout == b"\x00\x01binary\xff"
        out = tmp_path / "out.bin"
        cli("get", "d/stdin", "-o", str(out))
        assert out.read_bytes() == b"from stdin"
        lines = cli("ls", "d/").stdout.decode().splitlines()
        assert [ln.split()[-1] for ln in lines] == ["d/file.bin", "d/stdin"]
        assert b'"content_type": "application/x-test"' in cli("stat", "d/file.bin").stdout
        cli("rm", "d/stdin")
        r = cli("get", "d/stdin", ok=False)
        assert r.returncode == 1 and b"NoSuchKey" in r.stderr
        r = subprocess.run([PMSTORE_BIN, "ls", "--url", srv.url], check=False, env={**cli_env, "PMSTORE_API_TOKEN": ""},
                           capture_output=True, timeout=60)
        assert r.returncode == 1 and b"Unauthorized" in r.stderr


def test_serve_refuses_invalid_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMSTORE_")}
    r = subprocess.run([PMSTORE_BIN, "serve", "--heap", str(tmp_path / "x.heap"), "--max-object-size", "lots"],
                       check=False, env={**env, "PMSTORE_PORT": "99999"}, capture_output=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "PMSTORE_PORT" in err and "PMSTORE_MAX_OBJECT_SIZE: not a size: 'lots'" in err
    assert not (tmp_path / "x.heap").exists()
