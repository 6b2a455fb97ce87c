"""HTTP clients for the REST API: `Client` (blocking) and `AsyncClient`, both over httpx.

    with Client("http://127.0.0.1:8080", token=...) as c:
        c.put("photos/cat.jpg", data, content_type="image/jpeg")
        value = c.get("photos/cat.jpg")

Error responses raise the store's own exceptions (NoSuchKeyError, InvalidKeyError,
ObjectTooLargeError, PreconditionFailedError, HeapFullError, CorruptObjectError), or a
client-side RemoteError subclass for the HTTP-only codes; every one carries `.status`
and `.code`. Requests are built and answers parsed by shared functions, so the two
clients differ only in how they send.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
from typing import NamedTuple
from urllib.parse import quote

import httpx

from allocator.errors import PmstoreError
from store.errors import (
    CorruptObjectError,
    HeapFullError,
    InvalidKeyError,
    NoSuchKeyError,
    ObjectTooLargeError,
    PreconditionFailedError,
)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0



def iter_pages(list_page, prefix: str, page_size: int):
    """Every object of a paged listing: list_page(prefix, after=, limit=) -> Page, followed by its tokens."""
    after = None
    while True:
        page = list_page(prefix, after=after, limit=page_size)
        yield from page.objects
        if page.next is None:
            return
        after = page.next

class RemoteError(PmstoreError):
    """An error answer without a store equivalent; `.status` and `.code` say which."""


class BadRequestError(RemoteError):
    pass


class BadDigestError(RemoteError):
    pass


class InvalidRangeError(RemoteError):
    pass


class UnauthorizedError(RemoteError):
    pass


class NotReadyError(RemoteError):
    pass


_ERRORS = {
    "NoSuchKey": NoSuchKeyError, "InvalidKey": InvalidKeyError, "EntityTooLarge": ObjectTooLargeError,
    "PreconditionFailed": PreconditionFailedError, "InsufficientStorage": HeapFullError,
    "CorruptObject": CorruptObjectError, "BadDigest": BadDigestError, "InvalidRange": InvalidRangeError,
    "Unauthorized": UnauthorizedError, "BadRequest": BadRequestError, "NotReady": NotReadyError,
}

# for answers without an error body (HEAD)
_STATUS_CODES = {400: "BadRequest", 401: "Unauthorized", 404: "NoSuchKey", 412: "PreconditionFailed",
                 413: "EntityTooLarge", 416: "InvalidRange", 503: "CorruptObject", 507: "InsufficientStorage"}


class ObjectMeta(NamedTuple):
    key: str
    size: int                   # bytes
    etag: str                   # hex MD5
    content_type: str | None
    last_modified: str          # HTTP date (HEAD) or RFC 3339 (list)


class Page(NamedTuple):
    objects: list[ObjectMeta]
    next: str | None            # pass as `after` for the next page


def object_path(key: str) -> str:
    """/v1/objects/<key>, every reserved byte percent-encoded ('/' too), and '.'/'..' escaped
    so that no client or proxy removes them as dot segments."""
    q = quote(key, safe="")
    return "/v1/objects/" + (q.replace(".", "%2E") if q in (".", "..") else q)


def raise_for_error(resp: httpx.Response) -> None:
    """Raise the exception for an error answer (>= 400); 304 is not an error."""
    if resp.status_code < 400:
        return
    code, message = f"HTTP{resp.status_code}", resp.reason_phrase
    try:
        err = resp.json()["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):     # HEAD answers carry no body: go by the status
        code = _STATUS_CODES.get(resp.status_code, code)
    exc = _ERRORS.get(code, RemoteError)(message)
    exc.status, exc.code = resp.status_code, code
    raise exc


# ------------------------------------------------------------------ requests and answers
def _put_req(key, data, content_type, if_match, if_none_match, content_md5):
    headers = {"content-type": content_type or "application/octet-stream"}
    if if_match is not None:
        headers["if-match"] = f'"{if_match.strip(chr(34))}"' if if_match != "*" else "*"
    if if_none_match:
        headers["if-none-match"] = "*"
    if content_md5:
        headers["content-md5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
    return "PUT", object_path(key), {"content": data, "headers": headers}


def _get_req(key, start, end, if_none_match):
    headers = {}
    if start is not None or end is not None:
        # [start, end): end exclusive, like Store.get_range; start None: the last `end` bytes
        headers["range"] = (f"bytes=-{end}" if start is None else
                            f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}")
    if if_none_match is not None:
        headers["if-none-match"] = f'"{if_none_match.strip(chr(34))}"'
    return "GET", object_path(key), {"headers": headers}


def _meta_from_headers(key: str, resp: httpx.Response) -> ObjectMeta:
    h = resp.headers
    size = int(h["content-range"].rpartition("/")[2]) if "content-range" in h else int(h["content-length"])
    return ObjectMeta(key, size, h["etag"].strip('"'), h.get("content-type"), h.get("last-modified", ""))


def _list_req(prefix, after, limit):
    params = {"prefix": prefix, "limit": limit}
    if after:
        params["after"] = after
    return "GET", "/v1/objects", {"params": params}


def _page(resp: httpx.Response) -> Page:
    body = resp.json()
    return Page([ObjectMeta(o["key"], o["size"], o["etag"], o["content_type"], o["last_modified"])
                 for o in body["objects"]], body["next"])


def _batch_req(ops):
    out = []
    for op in ops:
        op = dict(op)
        if op.get("op") == "put" and "value" in op:
            op["value_b64"] = base64.b64encode(op.pop("value")).decode()
        out.append(op)
    return "POST", "/v1/batch", {"json": {"ops": out}}


def put_op(key: str, value: bytes, content_type: str | None = None, if_match: str | None = None,
           if_none_match: bool = False) -> dict:
    """A batch put (see `batch`)."""
    return {"op": "put", "key": key, "value": value, "content_type": content_type, "if_match": if_match,
            "if_none_match": if_none_match}


def delete_op(key: str, if_match: str | None = None) -> dict:
    """A batch delete (see `batch`)."""
    return {"op": "delete", "key": key, "if_match": if_match}


def _http_client_args(url, token, timeout_s, transport, kw) -> dict:
    headers = dict(kw.pop("headers", {}) or {})
    if token:
        headers["authorization"] = f"Bearer {token}"
    args = {"base_url": url, "headers": headers, "timeout": timeout_s, **kw}
    if transport is not None:
        args["transport"] = transport
    return args


class Client:
    """Blocking client; a context manager (closes its connections)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None, **httpx_args):
        self.http = httpx.Client(**_http_client_args(url, token, timeout_s, transport, httpx_args))

    def _call(self, method, path, kw) -> httpx.Response:
        resp = self.http.request(method, path, **kw)
        raise_for_error(resp)
        return resp

    def put(self, key: str, data: bytes, *, content_type: str | None = None, if_match: str | None = None,
            if_none_match: bool = False, content_md5: bool = False) -> dict:
        """{"key", "size", "etag", "created"}; durable on return when the server runs durability=sync."""
        resp = self._call(*_put_req(key, data, content_type, if_match, if_none_match, content_md5))
        return {**resp.json(), "created": resp.status_code == 201}

    def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """The value, or its bytes [start, end) (a Range request)."""
        return self._call(*_get_req(key, start, end, None)).content

    def get_with_meta(self, key: str, *, if_none_match: str | None = None) -> tuple[bytes | None, ObjectMeta]:
        """(value, meta); value None when if_none_match matched (304, not modified)."""
        resp = self._call(*_get_req(key, None, None, if_none_match))
        if resp.status_code == 304:
            return None, ObjectMeta(key, -1, resp.headers["etag"].strip('"'), None, resp.headers.get("last-modified", ""))
        return resp.content, _meta_from_headers(key, resp)

    def head(self, key: str) -> ObjectMeta:
        return _meta_from_headers(key, self._call("HEAD", object_path(key), {}))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except NoSuchKeyError:
            return False

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        headers = {"if-match": f'"{if_match.strip(chr(34))}"'} if if_match else {}
        self._call("DELETE", object_path(key), {"headers": headers})

    def list(self, prefix: str = "", *, after: str | None = None, limit: int = 1000) -> Page:
        return _page(self._call(*_list_req(prefix, after, limit)))

    def iter(self, prefix: str = "", *, page_size: int = 1000):
        """Every object under prefix, page by page."""
        return iter_pages(self.list, prefix, page_size)

    def batch(self, ops: list[dict]) -> list[dict]:
        """Apply put_op(...)/delete_op(...) atomically; one result per op."""
        return self._call(*_batch_req(ops)).json()["results"]

    def stats(self) -> dict:
        return self._call("GET", "/v1/stats", {}).json()

    def healthy(self) -> bool:
        return self.http.get("/healthz").status_code == 200

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200

    def metrics(self) -> str:
        return self._call("GET", "/metrics", {}).text

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same API as Client, for asyncio (`await c.put(...)`)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None, **httpx_args):
        self.http = httpx.AsyncClient(**_http_client_args(url, token, timeout_s, transport, httpx_args))

    async def _call(self, method, path, kw) -> httpx.Response:
        resp = await self.http.request(method, path, **kw)
        raise_for_error(resp)
        return resp

    async def put(self, key: str, data: bytes, *, content_type: str | None = None, if_match: str | None = None,
                  if_none_match: bool = False, content_md5: bool = False) -> dict:
        resp = await self._call(*_put_req(key, data, content_type, if_match, if_none_match, content_md5))
        return {**resp.json(), "created": resp.status_code == 201}

    async def get(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        return (await self._call(*_get_req(key, start, end, None))).content

    async def get_with_meta(self, key: str, *, if_none_match: str | None = None):
        resp = await self._call(*_get_req(key, None, None, if_none_match))
        if resp.status_code == 304:
            return None, ObjectMeta(key, -1, resp.headers["etag"].strip('"'), None, resp.headers.get("last-modified", ""))
        return resp.content, _meta_from_headers(key, resp)

    async def head(self, key: str) -> ObjectMeta:
        return _meta_from_headers(key, await self._call("HEAD", object_path(key), {}))

    async def exists(self, key: str) -> bool:
        try:
            await self.head(key)
            return True
        except NoSuchKeyError:
            return False

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        headers = {"if-match": f'"{if_match.strip(chr(34))}"'} if if_match else {}
        await self._call("DELETE", object_path(key), {"headers": headers})

    async def list(self, prefix: str = "", *, after: str | None = None, limit: int = 1000) -> Page:
        return _page(await self._call(*_list_req(prefix, after, limit)))

    async def iter(self, prefix: str = "", *, page_size: int = 1000):
        after = None
        while True:
            page = await self.list(prefix, after=after, limit=page_size)
            for o in page.objects:
                yield o
            if page.next is None:
                return
            after = page.next

    async def batch(self, ops: list[dict]) -> list[dict]:
        return (await self._call(*_batch_req(ops))).json()["results"]

    async def stats(self) -> dict:
        return (await self._call("GET", "/v1/stats", {})).json()

    async def healthy(self) -> bool:
        return (await self.http.get("/healthz")).status_code == 200

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200

    async def metrics(self) -> str:
        return (await self._call("GET", "/metrics", {})).text

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def http_date_ns(text: str) -> int:
    """ns since the epoch for an HTTP date (Last-Modified)."""
    return int(email.utils.parsedate_to_datetime(text).timestamp()) * 1_000_000_000


__all__ = ["AsyncClient", "BadDigestError", "BadRequestError", "Client", "InvalidRangeError", "NotReadyError",
           "ObjectMeta", "Page", "RemoteError", "UnauthorizedError", "delete_op", "object_path", "put_op",
           "raise_for_error"]
