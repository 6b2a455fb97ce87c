"""The REST API's semantics, in process: httpx over ASGITransport, lifespan included."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest
from apiutil import MAX_OBJECT_SIZE, TOKEN, small_settings
from pydantic import ValidationError

from service.app import create_app
from service.client import AsyncClient, BadDigestError, InvalidRangeError, delete_op, object_path, put_op
from service.settings import Settings, describe_error
from store.errors import (
    HeapFullError,
    InvalidKeyError,
    NoSuchKeyError,
    ObjectTooLargeError,
    PreconditionFailedError,
)

pytestmark = pytest.mark.anyio


def error_of(resp) -> str:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


async def test_put_get_head_roundtrip(api):
    r = await api.http.put("/v1/objects/photos/cat.jpg", content=b"meow", headers={"content-type": "image/jpeg"})
    assert r.status_code == 201
    etag = hashlib.md5(b"meow").hexdigest()
    assert r.json() == {"key": "photos/cat.jpg", "size": 4, "etag": etag}
    assert r.headers["etag"] == f'"{etag}"'
    r = await api.http.put("/v1/objects/photos/cat.jpg", content=b"purr", headers={"content-type": "image/png"})
    assert r.status_code == 200                       # replaced
    r = await api.http.get("/v1/objects/photos%2Fcat.jpg")   # %2F and / name the same key
    assert r.status_code == 200 and r.content == b"purr"
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-length"] == "4"
    assert r.headers["etag"] == f'"{hashlib.md5(b"purr").hexdigest()}"'
    assert r.headers["last-modified"].endswith(" GMT")
    h = await api.http.head("/v1/objects/photos/cat.jpg")
    assert h.status_code == 200 and h.content == b""
    for name in ("content-type", "content-length", "etag", "last-modified"):
        assert h.headers[name] == r.headers[name]
    r = await api.http.put("/v1/objects/plain", content=b"x")
    assert (await api.http.get("/v1/objects/plain")).headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("raw_key", ["a%0Ab", "%00", "x%7F", "%FF", "%C3", "tab%09", "", "%0D%0Aevil: 1"])
async def test_invalid_keys_are_400_invalid_key(api, raw_key):
    for method in ("GET", "PUT", "DELETE"):
        r = await api.http.request(method, "/v1/objects/" + raw_key, content=b"v" if method == "PUT" else None)
        assert r.status_code == 400 and error_of(r) == "InvalidKey", (method, raw_key, r.text)
    assert (await api.list()).objects == []


async def test_key_length_counts_utf8_bytes_not_characters(api):
    ok = "é" * 512               # 1024 bytes
    assert (await api.put(ok, b"1"))["created"]
    assert await api.get(ok) == b"1"
    with pytest.raises(InvalidKeyError):
        await api.put("é" * 513, b"1")                 # 513 characters, 1026 bytes
    with pytest.raises(InvalidKeyError):
        await api.put("k" * 1025, b"1")
    await api.put("k" * 1024, b"1")


async def test_dot_segments_and_odd_keys_survive_the_client(api):
    keys = [".", "..", "a/../b", "a//b", "/lead", "q?x=1#f", "100% sure", "sp ace", "ü/ß/日本"]
    for i, k in enumerate(keys):
        await api.put(k, str(i).encode())
    for i, k in enumerate(keys):
        assert await api.get(k) == str(i).encode(), k
    assert [o.key for o in (await api.list()).objects] == sorted(keys, key=lambda k: k.encode())


async def test_conditional_put_and_delete(api):
    first = await api.put("k", b"v1", if_none_match=True)
    assert first["created"]
    with pytest.raises(PreconditionFailedError) as e:
        await api.put("k", b"v2", if_none_match=True)
    assert e.value.status == 412 and e.value.code == "PreconditionFailed"
    with pytest.raises(PreconditionFailedError):
        await api.put("k", b"v2", if_match="0" * 32)
    assert await api.get("k") == b"v1"
    second = await api.put("k", b"v2", if_match=first["etag"])
    assert second["etag"] == hashlib.md5(b"v2").hexdigest() and not second["created"]
    with pytest.raises(PreconditionFailedError):
        await api.delete("k", if_match=first["etag"])
    assert await api.get("k") == b"v2"
    await api.delete("k", if_match=second["etag"])
    with pytest.raises(NoSuchKeyError) as e:
        await api.delete("k")
    assert e.value.status == 404
    r = await api.http.put("/v1/objects/k", content=b"x", headers={"if-match": "*"})
    assert r.status_code == 412                        # If-Match: * needs an existing object


async def test_content_md5(api):
    good = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    r = await api.http.put("/v1/objects/m", content=b"data", headers={"content-md5": good})
    assert r.status_code == 201
    r = await api.http.put("/v1/objects/m", content=b"DATA", headers={"content-md5": good})
    assert r.status_code == 400 and error_of(r) == "BadDigest"
    r = await api.http.put("/v1/objects/m", content=b"DATA", headers={"content-md5": "not base64!"})
    assert r.status_code == 400 and error_of(r) == "BadDigest"
    assert await api.get("m") == b"data"               # nothing stored by the refused PUTs
    await api.put("m2", b"zz", content_md5=True)
    assert await api.get("m2") == b"zz"
    with pytest.raises(BadDigestError):
        await api._call("PUT", "/v1/objects/m3", {"content": b"a", "headers": {"content-md5": good}})


async def test_ranges(api):
    value = bytes(range(100))
    await api.put("r", value)
    cases = {"bytes=2-5": (2, 6), "bytes=90-": (90, 100), "bytes=-4": (96, 100), "bytes=95-1000": (95, 100),
             "bytes=-500": (0, 100), "bytes=0-0": (0, 1)}
    for header, (a, b) in cases.items():
        r = await api.http.get("/v1/objects/r", headers={"range": header})
        assert r.status_code == 206 and r.content == value[a:b], header
        assert r.headers["content-range"] == f"bytes {a}-{b - 1}/100"
        assert r.headers["content-length"] == str(b - a)
    for header in ("bytes=100-", "bytes=500-600", "bytes=-0"):
        r = await api.http.get("/v1/objects/r", headers={"range": header})
        assert r.status_code == 416 and error_of(r) == "InvalidRange", header
        assert r.headers["content-range"] == "bytes */100"
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=5-2", "bytes=x-y"):   # ignored: the whole value
        r = await api.http.get("/v1/objects/r", headers={"range": header})
        assert r.status_code == 200 and r.content == value, header
    assert await api.get("r", start=10, end=20) == value[10:20]
    assert await api.get("r", end=3) == value[-3:]
    with pytest.raises(InvalidRangeError):
        await api.get("r", start=200)
    await api.put("empty", b"")
    r = await api.http.get("/v1/objects/empty", headers={"range": "bytes=-1"})
    assert r.status_code == 416


async def test_if_none_match_304(api):
    info = await api.put("c", b"cached")
    etag = f'"{info["etag"]}"'
    for header in (etag, f'W/{etag}', f'"nope", {etag}', "*"):
        r = await api.http.get("/v1/objects/c", headers={"if-none-match": header})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag, header
    r = await api.http.get("/v1/objects/c", headers={"if-none-match": '"0123"'})
    assert r.status_code == 200 and r.content == b"cached"
    value, meta = await api.get_with_meta("c", if_none_match=info["etag"])
    assert value is None and meta.etag == info["etag"]


async def test_large_objects_stream_and_range(api):
    value = hashlib.sha256(b"seed").digest() * ((3 << 20) // 32)     # 3 MiB: the worker-thread path
    r = await api.put("big", value)
    assert r["size"] == len(value)
    assert await api.get("big") == value
    assert await api.get("big", start=(1 << 20) + 7, end=(2 << 20)) == value[(1 << 20) + 7:(2 << 20)]
    assert (await api.head("big")).size == len(value)


async def test_too_large_is_413_before_the_body_is_read(api):
    with pytest.raises(ObjectTooLargeError) as e:
        await api.put("huge", b"x" * (MAX_OBJECT_SIZE + 1))
    assert e.value.status == 413
    sent_count = 0

    async def chunks():               # no Content-Length: chunked; count what the app pulled
        nonlocal sent_count
        for _ in range(64):
            sent_count += 1
            yield b"y" * (256 << 10)
    r = await api.http.put("/v1/objects/huge", content=chunks())
    assert r.status_code == 413 and error_of(r) == "EntityTooLarge"
    assert sent_count < 64                             # refused part-way, not after reading it whole
    assert not await api.exists("huge")
    r = await api.http.put("/v1/objects/fits", content=b"z" * MAX_OBJECT_SIZE)
    assert r.status_code == 201


async def test_list_pagination_is_exact_and_bytewise(api):
    keys = [f"p/{i:03d}" for i in range(25)] + ["p/Z", "p/a", "p/é", "p/\U0001F600", "q/other"]
    for k in keys:
        await api.put(k, k.encode())
    want = sorted((k for k in keys if k.startswith("p/")), key=lambda k: k.encode())
    got, after, pages = [], None, 0
    while True:
        page = await api.list("p/", after=after, limit=7)
        pages += 1
        got += [o.key for o in page.objects]
        assert all(o.size == len(o.key.encode()) and o.last_modified.endswith("Z") for o in page.objects)
        if page.next is None:
            break
        after = page.next
    assert got == want and pages == -(-len(want) // 7)
    assert [o.key async for o in api.iter("p/", page_size=3)] == want
    for bad in ("limit=0", "limit=10001", "limit=x", "after=%%%"):
        r = await api.http.get("/v1/objects?" + bad)
        assert r.status_code == 400 and error_of(r) == "BadRequest", bad
    r = await api.http.get("/v1/objects?limit=10000")
    assert r.status_code == 200 and len(r.json()["objects"]) == len(keys)


async def test_batch_is_atomic(api):
    old = await api.put("b/old", b"old")
    res = await api.batch([put_op("b/new", b"new", content_type="text/plain"), delete_op("b/old"),
                           delete_op("b/absent")])
    assert [(x["key"], x["result"]) for x in res] == [("b/new", "created"), ("b/old", "deleted"),
                                                     ("b/absent", "absent")]
    assert res[0]["etag"] == hashlib.md5(b"new").hexdigest()
    assert (await api.head("b/new")).content_type == "text/plain"
    assert not await api.exists("b/old")
    # one failing precondition: 412 and nothing applied
    with pytest.raises(PreconditionFailedError):
        await api.batch([put_op("b/x", b"x"), delete_op("b/new", if_match=old["etag"])])
    assert not await api.exists("b/x") and await api.get("b/new") == b"new"
    r = await api.http.post("/v1/batch", json={"ops": [{"op": "put", "key": "b/y", "value_b64": "!!"}]})
    assert r.status_code == 400 and error_of(r) == "BadRequest"
    r = await api.http.post("/v1/batch", json={"ops": [{"op": "delete", "key": "d"}] * 1001})
    assert r.status_code == 400 and error_of(r) == "BadRequest"
    with pytest.raises(InvalidKeyError):
        await api.batch([put_op("b/z", b"z"), put_op("bad\nkey", b"1")])
    assert not await api.exists("b/z")
    half = b"h" * (MAX_OBJECT_SIZE // 2 + 1)
    with pytest.raises(ObjectTooLargeError):
        await api.batch([put_op("b/h1", half), put_op("b/h2", half)])
    assert not await api.exists("b/h1")
    assert len(await api.batch([put_op(f"b/{i}", b"") for i in range(1000)])) == 1000


async def test_error_shape_everywhere(api):
    r = await api.http.get("/v1/objects/missing")
    assert r.status_code == 404 and error_of(r) == "NoSuchKey"
    r = await api.http.head("/v1/objects/missing")
    assert r.status_code == 404 and r.content == b""
    r = await api.http.get("/no/such/route")
    assert r.status_code == 404 and error_of(r) == "NotFound"
    r = await api.http.post("/v1/objects/x", content=b"1")
    assert r.status_code == 405 and error_of(r) == "MethodNotAllowed"
    r = await api.http.post("/v1/batch", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r) == "BadRequest"
    r = await api.http.put("/v1/objects/ct", content=b"1", headers={"content-type": "x/" + "y" * 300})
    assert r.status_code == 400 and error_of(r) == "BadRequest"


async def test_heap_full_is_507_and_reads_and_deletes_go_on(tmp_path):
    app = create_app(Settings(heap_path=tmp_path / "full.heap", heap_initial_size="2MiB", heap_max_size="8MiB",
                              max_object_size=1 << 20))
    async with app.router.lifespan_context(app), AsyncClient(
            "http://test", transport=httpx.ASGITransport(app=app)) as c:
        stored = []
        for i in range(200):
            r = await c.http.put(f"/v1/objects/f/{i}", content=bytes([i]) * 200_000)
            if r.status_code != 201:
                break
            stored.append(i)
        assert r.status_code == 507 and error_of(r) == "InsufficientStorage", r.text
        assert "maximum size" in r.json()["error"]["message"], r.text
        assert len(stored) > 10
        with pytest.raises(HeapFullError):
            await c.put("f/refused", bytes(200_000))
        assert not await c.exists("f/refused") and not await c.exists(f"f/{len(stored)}")
        for i in stored:                            # every acknowledged put is there
            assert await c.get(f"f/{i}") == bytes([i]) * 200_000
        for i in stored[:5]:                        # deletes work, and make room
            await c.delete(f"f/{i}")
        r = await c.http.put("/v1/objects/f/again", content=b"a" * 200_000)
        assert r.status_code == 201


async def test_auth(token_api):
    c = token_api
    for method, path in (("GET", "/v1/objects/a"), ("PUT", "/v1/objects/a"), ("GET", "/v1/objects"),
                         ("POST", "/v1/batch"), ("GET", "/v1/stats"), ("DELETE", "/v1/objects/a")):
        r = await c.request(method, path, content=b"{}" if method in ("PUT", "POST") else None)
        assert r.status_code == 401 and error_of(r) == "Unauthorized", (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        r = await c.request(method, path, headers={"authorization": f"Bearer {TOKEN}x"})
        assert r.status_code == 401
    good = {"authorization": f"Bearer {TOKEN}"}
    assert (await c.put("/v1/objects/a", content=b"1", headers=good)).status_code == 201
    assert (await c.get("/v1/objects/a", headers={"authorization": f"bearer {TOKEN}"})).content == b"1"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await c.get(path)).status_code == 200, path


async def test_stats_health_ready_metrics(api):
    await api.put("s/1", b"12345")
    await api.get("s/1")
    st = await api.stats()
    assert st["objects"] == 1 and st["heap"]["live_blocks"] >= 1
    assert {"was_clean", "lanes_replayed", "replay_ms", "index_ms"} <= set(st["recovery"])
    assert st["service"]["durability"] == "sync"
    assert await api.healthy() and await api.ready()
    text = await api.metrics()
    assert 'pmstore_http_requests_total{method="PUT",route="/v1/objects/{key}",status="201"} 1.0' in text
    assert 'pmstore_http_request_duration_seconds_count{method="GET",route="/v1/objects/{key}"} 1.0' in text
    assert 'route="/v1/stats"' in text
    assert "pmstore_objects 1.0" in text and "pmstore_heap_used_bytes" in text
    assert "pmstore_heap_fragmentation_ratio" in text and "pmstore_recovery_seconds" in text
    assert "pmstore_heap_persists_total" in text


async def test_openapi_documents_every_route(api):
    doc = (await api.http.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/v1/objects/{key}"]) == {"get", "head", "put", "delete"}
    assert {"/v1/objects", "/v1/batch", "/v1/stats", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PMSTORE_HEAP_PATH", str(tmp_path / "e.heap"))
    monkeypatch.setenv("PMSTORE_HEAP_MAX_SIZE", "2GiB")
    monkeypatch.setenv("PMSTORE_MAX_OBJECT_SIZE", "16MiB")
    monkeypatch.setenv("PMSTORE_DURABILITY", "os")
    monkeypatch.setenv("PMSTORE_VERIFY_READS", "false")
    s = Settings()
    assert (s.heap_max_size, s.max_object_size, s.durability, s.verify_reads) == (2 << 30, 16 << 20, "os", False)
    assert s.heap_initial_size == 64 << 20 and s.port == 8080 and s.host == "127.0.0.1"
    assert s.api_token is None


@pytest.mark.parametrize(("env", "names"), [
    ({"PMSTORE_HEAP_MAX_SIZE": "12XB"}, "PMSTORE_HEAP_MAX_SIZE: not a size"),
    ({"PMSTORE_PORT": "70000"}, "PMSTORE_PORT"),
    ({"PMSTORE_DURABILITY": "fast"}, "PMSTORE_DURABILITY"),
    ({"PMSTORE_HEAP_MAX_SIZE": "32MiB"}, "heap_max_size (33554432 bytes) is below heap_initial_size"),
    ({"PMSTORE_MAX_OBJECT_SIZE": "16GiB"}, "max_object_size must be"),
    ({"PMSTORE_DURABILITY": "os", "PMSTORE_BACKEND": "flush"}, "makes no sense with durability='os'"),
    ({"PMSTORE_API_TOKEN": "short"}, "at least 16 characters"),
])
def test_invalid_settings_are_named(monkeypatch, env, names):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as e:
        Settings()
    assert names in describe_error(e.value)


def test_object_path_escapes_everything():
    assert object_path("a/b c") == "/v1/objects/a%2Fb%20c"
    assert object_path("..") == "/v1/objects/%2E%2E"
    assert small_settings("x.heap").max_object_size == MAX_OBJECT_SIZE
