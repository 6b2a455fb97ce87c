"""Object requests: GET, HEAD, PUT and DELETE of /v1/objects/{key}, as one raw ASGI handler.

This is the service's hot path and the only implementation of these semantics: the front
door (service/app.py) calls it directly, ahead of FastAPI, and the FastAPI routes that
document it in the OpenAPI schema delegate to it. It parses only the headers it needs
and answers through the error mapping of service/errors.py.

Blocking store calls: reads of small values and, unless write threads are configured,
writes run inline on the event loop (a few microseconds, GIL released in C); values over
OFFLOAD_SIZE are copied and hashed in a worker thread so the loop keeps serving.
Large GETs copy the value out of the heap once (the store may reuse a replaced object's
blocks, so a view into the heap cannot be streamed across awaits) and stream slices of
that one copy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import hashlib
import json
import logging
from concurrent.futures import Executor
from urllib.parse import unquote_to_bytes

from service.errors import ApiError, error_body, from_exception
from store.errors import NoSuchKeyError, PreconditionFailedError
from store.store import encode_key

OBJECTS_PREFIX = "/v1/objects/"
_PREFIX_RAW = OBJECTS_PREFIX.encode()
OFFLOAD_SIZE = 1 << 20          # bytes: larger values are copied / hashed off the event loop
STREAM_CHUNK_SIZE = 256 << 10   # bytes per body message when streaming a large value
CONTENT_TYPE_MAX_SIZE = 255     # bytes (the store's limit)
DEFAULT_CONTENT_TYPE = b"application/octet-stream"
_JSON = (b"content-type", b"application/json")
log = logging.getLogger("pmstore.service")


class ClientDisconnect(Exception):
    """The client went away before its request body arrived."""


def request_key(scope) -> bytes:
    """The key's bytes from the raw (still percent-encoded) path, validated by the store's
    rules; decoding raw bytes ourselves keeps invalid UTF-8 an InvalidKey instead of U+FFFD."""
    raw = scope.get("raw_path")
    if raw is not None:
        raw = raw.partition(b"?")[0]    # httpx's ASGITransport leaves the query in raw_path
        if raw.startswith(_PREFIX_RAW):
            return encode_key(unquote_to_bytes(raw[len(_PREFIX_RAW):]))
    return encode_key(scope["path"][len(OBJECTS_PREFIX):])


@functools.lru_cache(maxsize=4096)
def http_date(second: int) -> bytes:
    """An HTTP date (RFC 9110 IMF-fixdate) for a Unix second."""
    return email.utils.formatdate(second, usegmt=True).encode()


def etag_matches(header: bytes, etag: str) -> bool:
    """If-None-Match semantics (weak comparison): `*`, or any listed tag equals etag."""
    want = etag.encode()
    for tag in header.split(b","):
        tag = tag.strip()
        if tag == b"*" or tag.removeprefix(b"W/").strip(b'"') == want:
            return True
    return False


def parse_range(header: bytes, size: int) -> tuple[int, int] | None:
    """[start, end) for `bytes=a-b | a- | -n`; None to ignore the header (another unit,
    several ranges, bad syntax: RFC 9110 lets a server ignore them); ApiError 416 when the
    range cannot be satisfied."""
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    try:
        if not dash or (not first and not last):
            return None
        if not first:                       # suffix: the last n bytes
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                raise _unsatisfiable(size)
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end <= start):   # "5-2": bad syntax, ignored
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, size if end is None else min(end, size)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError("InvalidRange", f"range not satisfiable: the object has {size} bytes",
                    {"content-range": f"bytes */{size}"})


async def send_error(send, err: ApiError, head_only: bool = False) -> int:
    """Answer err in the one error shape; returns the status."""
    body = error_body(err.code, err.message)
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    for name, value in (err.headers or {}).items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})
    return err.status_code


async def read_body(receive, limit_size: int):
    """The whole request body, or ApiError 413 as soon as more than limit_size bytes arrive
    (a chunked upload is refused before it is read whole)."""
    msg = await receive()
    if msg["type"] == "http.disconnect":
        raise ClientDisconnect
    body = msg.get("body", b"")
    if not msg.get("more_body", False):     # the common case: one message
        if len(body) > limit_size:
            raise _too_large(limit_size)
        return body
    buf = bytearray(body)
    while True:
        if len(buf) > limit_size:
            raise _too_large(limit_size)
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientDisconnect
        buf += msg.get("body", b"")
        if not msg.get("more_body", False):
            break
    if len(buf) > limit_size:
        raise _too_large(limit_size)
    return buf


def _too_large(limit_size: int) -> ApiError:
    # connection: close -- uvicorn then drops the connection instead of reading the rest
    return ApiError("EntityTooLarge", f"request body exceeds the maximum of {limit_size} bytes",
                    {"connection": "close"})


def _info_headers(info) -> list[tuple[bytes, bytes]]:
    ct = info.content_type
    return [(b"content-type", ct.encode("latin-1", "replace") if ct else DEFAULT_CONTENT_TYPE),
            (b"etag", b'"%s"' % info.etag.encode()),
            (b"last-modified", http_date(info.last_modified // 1_000_000_000)),
            (b"accept-ranges", b"bytes")]


class ObjectHandler:
    """The semantics of /v1/objects/{key} over one open Store.

    write_pool: where writes run (None: inline on the event loop); bulk_pool: where values
    over OFFLOAD_SIZE are copied and hashed."""

    def __init__(self, store, *, write_pool: Executor | None, bulk_pool: Executor):
        self.store = store
        self.write_pool = write_pool
        self.bulk_pool = bulk_pool

    async def __call__(self, scope, receive, send) -> int:
        """Serve one request; returns the response status (for metrics)."""
        method = scope["method"]
        try:
            key = request_key(scope)
            h = dict(scope["headers"])
            if method == "GET":
                return await self._get(key, h, send, False)
            if method == "PUT":
                return await self._put(key, h, receive, send)
            if method == "DELETE":
                return await self._delete(key, h, send)
            if method == "HEAD":
                return await self._get(key, h, send, True)
            raise ApiError("MethodNotAllowed", f"{method} is not allowed on objects",
                           {"allow": "GET, HEAD, PUT, DELETE"})
        except ClientDisconnect:
            return 499
        except Exception as exc:        # every error gets the one error shape
            err = from_exception(exc)
            if err is None:
                log.exception("%s %s failed", method, scope.get("path"))
                err = ApiError("InternalError", f"internal error: {type(exc).__name__}")
            return await send_error(send, err, method == "HEAD")

    # ------------------------------------------------------------ GET / HEAD
    async def _get(self, key: bytes, h: dict, send, head_only: bool) -> int:
        st = self.store
        info = st.head(key)
        inm = h.get(b"if-none-match")
        if inm is not None and etag_matches(inm, info.etag):
            await send({"type": "http.response.start", "status": 304, "headers": _info_headers(info)[1:3]})
            await send({"type": "http.response.body", "body": b""})
            return 304
        if head_only:
            headers = _info_headers(info)
            headers.append((b"content-length", b"%d" % info.size))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return 200
        rng = h.get(b"range")
        span = parse_range(rng, info.size) if rng is not None else None
        if span is None:
            status = 200
            if info.size <= OFFLOAD_SIZE:
                value, info = st.get(key)
            else:
                value, info = await asyncio.get_running_loop().run_in_executor(self.bulk_pool, st.get, key)
            headers = _info_headers(info)
        else:
            status, (start, end) = 206, span
            if info.size - start <= OFFLOAD_SIZE:
                value, info = st.get_range(key, start, end)
            else:
                value, info = await asyncio.get_running_loop().run_in_executor(
                    self.bulk_pool, st.get_range, key, start, end)
            if not value:               # replaced meanwhile by an object shorter than start
                raise _unsatisfiable(info.size)
            headers = _info_headers(info)
            headers.append((b"content-range", b"bytes %d-%d/%d" % (start, start + len(value) - 1, info.size)))
        n = len(value)
        headers.append((b"content-length", b"%d" % n))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if n <= STREAM_CHUNK_SIZE:
            await send({"type": "http.response.body", "body": value})
            return status
        view = memoryview(value)        # slices of the one copy, not new copies
        for off in range(0, n, STREAM_CHUNK_SIZE):
            await send({"type": "http.response.body", "body": view[off:off + STREAM_CHUNK_SIZE],
                        "more_body": off + STREAM_CHUNK_SIZE < n})
        return status

    # ------------------------------------------------------------ PUT
    async def _put(self, key: bytes, h: dict, receive, send) -> int:
        limit_size = self.store.max_object_size
        cl = h.get(b"content-length")
        if cl is not None:
            if not cl.isdigit():
                raise ApiError("BadRequest", f"bad Content-Length {cl[:40]!r}")
            if int(cl) > limit_size:        # refuse before reading any of it
                raise _too_large(limit_size)
        body = await read_body(receive, limit_size)
        ctype = h.get(b"content-type")
        if ctype is not None:
            if len(ctype) > CONTENT_TYPE_MAX_SIZE:
                raise ApiError("BadRequest", f"Content-Type longer than {CONTENT_TYPE_MAX_SIZE} bytes")
            ctype = ctype.decode("latin-1")
        md5 = h.get(b"content-md5")
        if md5 is not None:
            check_content_md5(md5, body)
        if_match = h.get(b"if-match")
        if if_match is not None:
            if_match = if_match.decode("latin-1").strip()
            if "," in if_match:
                raise ApiError("BadRequest", "If-Match takes one ETag (or *)")
        inm = h.get(b"if-none-match")
        if inm is not None and inm.strip() != b"*":
            raise ApiError("BadRequest", "PUT supports only 'If-None-Match: *' (create only)")
        args = (key, body, ctype, if_match, inm is not None)
        if self.write_pool is None and len(body) <= OFFLOAD_SIZE:
            info, created = self._put_sync(*args)
        else:
            info, created = await asyncio.get_running_loop().run_in_executor(
                self.write_pool or self.bulk_pool, self._put_sync, *args)
        out = json.dumps({"key": info.key, "size": info.size, "etag": info.etag}).encode()
        await send({"type": "http.response.start", "status": 201 if created else 200, "headers": [
            _JSON, (b"content-length", b"%d" % len(out)), (b"etag", b'"%s"' % info.etag.encode())]})
        await send({"type": "http.response.body", "body": out})
        return 201 if created else 200

    def _put_sync(self, key: bytes, body, ctype: str | None, if_match: str | None, create_only: bool):
        """(ObjectInfo, created), created as decided inside the store's commit."""
        st = self.store
        if if_match == "*":                 # any current version
            try:
                st.head(key)
            except NoSuchKeyError:
                raise PreconditionFailedError(f"put {key[:64]!r}: If-Match: * but the key does not exist") from None
            if_match = None
        return st.put_created(key, body, content_type=ctype, if_match=if_match, if_none_match=create_only)

    # ------------------------------------------------------------ DELETE
    async def _delete(self, key: bytes, h: dict, send) -> int:
        if_match = h.get(b"if-match")
        if if_match is not None:
            if_match = if_match.decode("latin-1").strip()
        if self.write_pool is None:
            self._delete_sync(key, if_match)
        else:
            await asyncio.get_running_loop().run_in_executor(self.write_pool, self._delete_sync, key, if_match)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return 204

    def _delete_sync(self, key: bytes, if_match: str | None) -> None:
        st = self.store
        if if_match == "*":
            st.head(key)                    # NoSuchKey when absent; any version otherwise
            if_match = None
        st.delete(key, if_match=if_match)


def check_content_md5(header: bytes, body) -> None:
    """BadDigest unless header is the base64 MD5 of body."""
    try:
        want = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("BadDigest", "Content-MD5 is not base64") from None
    if want != hashlib.md5(body).digest():
        raise ApiError("BadDigest", "Content-MD5 does not match the body")


__all__ = ["OBJECTS_PREFIX", "ObjectHandler", "check_content_md5", "etag_matches", "parse_range",
           "read_body", "request_key", "send_error"]
