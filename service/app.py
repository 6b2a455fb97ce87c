"""The REST service: `create_app(settings)` builds the FastAPI app over one object store.

The store is opened once, in the lifespan (recovery runs there; a second server on the
same heap fails with the store's HeapLockedError), and closed cleanly at shutdown
(uvicorn turns SIGTERM into the lifespan's shutdown). A raw ASGI front door sits ahead
of FastAPI: it checks the bearer token for /v1, records metrics, and serves
/v1/objects/{key} (service/objects.py) without the framework's per-request cost. Those
object routes are still declared to FastAPI so the OpenAPI document describes them; they
delegate to the same handler. Errors have one shape (service/errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from allocator.errors import PmstoreError
from service.errors import ApiError, error_body, from_exception
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.metrics import Metrics
from service.objects import OBJECTS_PREFIX, ObjectHandler, send_error
from service.settings import Settings
from store import Store
from store.store import encode_key

API_VERSION = "1"
OBJECT_ROUTE = "/v1/objects/{key}"
LIST_LIMIT_MAX = 10_000
BATCH_OP_MAX = 1_000
AUTO_WRITE_THREAD_COUNT = 16    # enough concurrent writers for group commit to fill its groups
BULK_THREAD_COUNT = 4           # copies and hashes of values over OFFLOAD_SIZE
_OBJECT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_MEMORY_FILE_SYSTEMS = {"tmpfs", "ramfs"}
log = logging.getLogger("pmstore.service")


# ---------------------------------------------------------------- schemas
class ErrorDetail(BaseModel):
    code: str = Field(description="NoSuchKey, InvalidKey, EntityTooLarge, PreconditionFailed, BadDigest, "
                                  "InvalidRange, InsufficientStorage, Unauthorized, BadRequest, CorruptObject, ...")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ObjectWritten(BaseModel):
    key: str
    size: int = Field(description="bytes")
    etag: str = Field(description="hex MD5 of the value")


class ObjectEntry(BaseModel):
    key: str
    size: int = Field(description="bytes")
    etag: str
    content_type: str | None
    last_modified: str = Field(description="RFC 3339, UTC")


class ObjectList(BaseModel):
    objects: list[ObjectEntry]
    next: str | None = Field(description="opaque token: pass it as `after` for the next page; null on the last")


class PutOp(BaseModel):
    op: Literal["put"]
    key: str
    value_b64: str = Field(description="the value, base64")
    content_type: str | None = None
    if_match: str | None = Field(None, description="ETag the current object must have")
    if_none_match: bool = Field(False, description="create only: fail if the key exists")


class DeleteOp(BaseModel):
    op: Literal["delete"]
    key: str
    if_match: str | None = Field(None, description="ETag the current object must have; without it an "
                                                   "absent key is a no-op")


class BatchRequest(BaseModel):
    ops: list[Annotated[PutOp | DeleteOp, Field(discriminator="op")]] = Field(max_length=BATCH_OP_MAX)


class BatchResult(BaseModel):
    key: str
    op: Literal["put", "delete"]
    result: Literal["created", "replaced", "deleted", "absent"]
    etag: str | None = None
    size: int | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult]


class Status(BaseModel):
    status: str


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorBody, "description": "error"} for s in statuses}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_KEY_DOC = "1..1024 bytes of UTF-8 without control characters; may contain '/' (percent-encoded or not)"


# ---------------------------------------------------------------- the service
def _fs_type(path: Path) -> str:
    """The file system holding path ("ext4", "tmpfs", ...), from /proc/mounts."""
    path_s, best, kind = os.path.realpath(path), "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and (path_s == parts[1] or path_s.startswith(parts[1].rstrip("/") + "/")) \
                    and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    return kind


class Service:
    """What one app serves: settings, the open store, thread pools, metrics."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: Store | None = None
        self.objects: ObjectHandler | None = None
        self.write_pool: ThreadPoolExecutor | None = None
        self.bulk_pool: ThreadPoolExecutor | None = None
        self.write_thread_count = 0
        self.ready = False
        self.metrics = Metrics(self)
        token = settings.api_token.get_secret_value().encode() if settings.api_token else None
        self._token = token

    def open(self) -> None:
        s = self.settings
        self.store = st = Store.open(s.heap_path, initial_size=s.heap_initial_size, max_size=s.heap_max_size,
                                     durability=s.durability, verify_reads=s.verify_reads,
                                     max_object_size=s.max_object_size, backend=s.store_backend)
        n = s.write_thread_count
        if n is None:   # threads only where a commit waits for a device: then writers share commits
            slow = st.durability == "sync" and st.heap.mapping.backend == "msync" \
                and _fs_type(s.heap_path) not in _MEMORY_FILE_SYSTEMS
            n = AUTO_WRITE_THREAD_COUNT if slow else 0
        self.write_thread_count = n
        self.write_pool = ThreadPoolExecutor(n, "pmstore-write") if n else None
        self.bulk_pool = ThreadPoolExecutor(BULK_THREAD_COUNT, "pmstore-bulk")
        self.objects = ObjectHandler(st, write_pool=self.write_pool, bulk_pool=self.bulk_pool)
        self.ready = True
        log.info("pmstore: serving %s (%d objects, durability %s, backend %s, write threads %d)",
                 s.heap_path, len(st), st.durability, st.heap.mapping.backend, n)

    def close(self) -> None:
        self.ready = False
        self.objects = None
        for pool in (self.write_pool, self.bulk_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()      # clean shutdown recorded in the heap header

    def authorized(self, scope) -> bool:
        """True without a token; else the request must carry `Authorization: Bearer <token>`."""
        if self._token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                # compare_digest: the time taken does not reveal how much of the token matched
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)
        return False

    async def run(self, fn, *args):
        """fn(*args) in the write pool, or inline when writes run on the event loop."""
        if self.write_pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.write_pool, fn, *args)

    def live_store(self) -> Store:
        if self.store is None or not self.ready:
            raise ApiError("NotReady", "the store is not open (starting or shutting down)")
        return self.store

    @property
    def batch_body_limit_size(self) -> int:
        """Bytes a batch request may carry: its values in base64 plus room for keys and JSON."""
        return self.settings.max_object_size * 4 // 3 + BATCH_OP_MAX * 4096 + 4096


class FrontDoor:
    """Raw ASGI middleware ahead of FastAPI: auth for /v1, metrics, the object fast path."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        svc = self.service
        path, method = scope["path"], scope["method"]
        if path.startswith("/v1/") or path == "/v1":
            if not svc.authorized(scope):
                status = await send_error(send, ApiError("Unauthorized", "missing or wrong bearer token",
                                                         {"www-authenticate": "Bearer"}), method == "HEAD")
                svc.metrics.observe(method, "/v1", status, time.perf_counter() - t0)
                return
            handler = svc.objects
            if handler is not None and method in _OBJECT_METHODS and path.startswith(OBJECTS_PREFIX):
                status = await handler(scope, receive, send)
                svc.metrics.observe(method, OBJECT_ROUTE, status, time.perf_counter() - t0)
                return
            if method == "POST":
                receive = await self._limit_body(scope, receive, send, svc.batch_body_limit_size)
                if receive is None:
                    svc.metrics.observe(method, path, 413, time.perf_counter() - t0)
                    return
        status = 500

        async def send_status(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            svc.metrics.observe(method, getattr(route, "path", "unmatched"), status, time.perf_counter() - t0)

    @staticmethod
    async def _limit_body(scope, receive, send, limit_size: int):
        """A receive that raises 413 once more than limit_size bytes arrived; None (413 sent)
        when Content-Length already says too much."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit_size:
                await send_error(send, ApiError("EntityTooLarge", f"request body exceeds {limit_size} bytes",
                                                {"connection": "close"}))
                return None
        seen_size = 0

        async def limited():
            nonlocal seen_size
            msg = await receive()
            seen_size += len(msg.get("body", b""))
            if seen_size > limit_size:
                raise ApiError("EntityTooLarge", f"request body exceeds {limit_size} bytes", {"connection": "close"})
            return msg
        return limited


class _ObjectResponse(Response):
    """Hands the request to the object handler (the FastAPI route is the documented path)."""

    def __init__(self, service: Service):
        super().__init__()
        self._service = service

    async def __call__(self, scope, receive, send) -> None:
        handler = self._service.objects
        if handler is None:
            await send_error(send, ApiError("NotReady", "the store is not open"))
        else:
            await handler(scope, receive, send)


def _rfc3339(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat().replace("+00:00", "Z")


def _next_token(key: str | None) -> str | None:
    return None if key is None else base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _after_key(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return encode_key(raw).decode()
    except (binascii.Error, ValueError):
        raise ApiError("BadRequest", "after: not a `next` token from a previous page") from None


# ---------------------------------------------------------------- the app
class _ReportedStartupError(logging.Filter):
    """Drops the server's traceback of a startup failure that the lifespan has already
    reported in one line (a locked, full, foreign or corrupt heap is the user's to fix,
    not a crash of ours)."""

    def __init__(self, error: BaseException):
        super().__init__()
        self.text = f"{type(error).__name__}: {error}"

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not (msg.startswith("Traceback") and self.text in msg)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The REST app over the store that `settings` names (default: from the environment)."""
    settings = settings or Settings()
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            service.open()
        except (PmstoreError, OSError, ValueError) as e:
            log.error("pmstore: cannot open the store at %s: %s", settings.heap_path, e)
            logging.getLogger("uvicorn.error").addFilter(_ReportedStartupError(e))
            raise
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="pmstore", version=API_VERSION, lifespan=lifespan,
                  description="Keyed objects in a crash-consistent persistent heap.")
    app.state.service = service
    app.add_middleware(FrontDoor, service=service)
    _add_exception_handlers(app)

    # -------------------------------------------------------- objects (served by the front door)
    obj = "/v1/objects/{key:path}"

    @app.get(obj, response_class=Response, summary="Read an object",
             responses={200: {"content": {"*/*": _BINARY}, "description": "the value"},
                        206: {"content": {"*/*": _BINARY}, "description": "the requested range"},
                        304: {"description": "If-None-Match matched"}, **_errors(400, 401, 404, 416, 503)})
    async def get_object(key: Annotated[str, PathParam(description=_KEY_DOC)], range: Annotated[str | None, Header()] = None,
                         if_none_match: Annotated[str | None, Header()] = None):
        return _ObjectResponse(service)

    @app.head(obj, response_class=Response, summary="An object's headers",
              responses={200: {"description": "the headers of GET"}, 304: {"description": "not modified"},
                         **_errors(400, 401, 404, 503)})
    async def head_object(key: str, if_none_match: Annotated[str | None, Header()] = None):
        return _ObjectResponse(service)

    @app.put(obj, response_class=Response, summary="Store an object (atomic replace)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": _BINARY}}},
             responses={200: {"model": ObjectWritten, "description": "replaced"},
                        201: {"model": ObjectWritten, "description": "created"},
                        **_errors(400, 401, 412, 413, 507)})
    async def put_object(key: str, content_md5: Annotated[str | None, Header()] = None,
                         if_match: Annotated[str | None, Header()] = None,
                         if_none_match: Annotated[str | None, Header()] = None):
        return _ObjectResponse(service)

    @app.delete(obj, response_class=Response, status_code=204, summary="Delete an object",
                responses={204: {"description": "deleted"}, **_errors(400, 401, 404, 412, 507)})
    async def delete_object(key: str, if_match: Annotated[str | None, Header()] = None):
        return _ObjectResponse(service)

    # -------------------------------------------------------- everything else
    @app.get("/v1/objects", response_model=ObjectList, summary="List objects in bytewise key order",
             responses=_errors(400, 401))
    async def list_objects(prefix: str = "", after: Annotated[str | None, Query(
                               description="the `next` token of the previous page")] = None,
                           limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 1000):
        st = service.live_store()
        infos, last = st.list(prefix=prefix, after=_after_key(after) if after else None, limit=limit)
        return {"objects": [{"key": i.key, "size": i.size, "etag": i.etag, "content_type": i.content_type,
                             "last_modified": _rfc3339(i.last_modified)} for i in infos],
                "next": _next_token(last)}

    @app.post("/v1/batch", response_model=BatchResponse, summary="Apply puts and deletes atomically",
              responses=_errors(400, 401, 412, 413, 507))
    async def batch(req: BatchRequest):
        st = service.live_store()
        ops, total_size = [], 0
        for i, op in enumerate(req.ops):
            if op.op == "put":
                try:
                    value = base64.b64decode(op.value_b64, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError("BadRequest", f"ops[{i}].value_b64 is not base64") from None
                if op.content_type is not None and len(op.content_type.encode()) > 255:
                    raise ApiError("BadRequest", f"ops[{i}].content_type is longer than 255 bytes")
                total_size += len(value)
                ops.append((op, value))
            else:
                ops.append((op, None))
        if total_size > st.max_object_size:
            raise ApiError("EntityTooLarge", f"batch values total {total_size} bytes; the maximum is "
                                             f"{st.max_object_size}")
        results = await service.run(_apply_batch, st, ops)
        return {"results": results}

    @app.get("/v1/stats", summary="Heap and store statistics and the last recovery report",
             responses=_errors(401))
    async def stats() -> dict:
        st = service.live_store()
        return {**st.stats(), "service": {
            "heap_path": str(settings.heap_path), "durability": st.durability,
            "backend": st.heap.mapping.backend, "group_commit": st._group is not None,
            "write_thread_count": service.write_thread_count, "max_object_size": st.max_object_size,
            "verify_reads": st.verify_reads}}

    @app.get("/healthz", response_model=Status, summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, summary="Recovery is done and the store is open",
             responses=_errors(503))
    async def readyz():
        service.live_store()
        return {"status": "ready"}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"}})
    async def metrics():
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return app


def _apply_batch(st: Store, ops: list) -> list[dict]:
    """One atomic commit of every op; per-op results in request order."""
    import hashlib
    b = st.batch()
    for op, value in ops:
        if op.op == "put":
            b.put(op.key, value, content_type=op.content_type, if_match=op.if_match,
                  if_none_match=op.if_none_match)
        else:
            b.delete(op.key, if_match=op.if_match)
    done = b.commit()
    out = []
    for op, value in ops:
        row = {"key": op.key, "op": op.op, "result": done[encode_key(op.key).decode()]}
        if value is not None:
            row.update(etag=hashlib.md5(value).hexdigest(), size=len(value))
        out.append(row)
    return out


def _add_exception_handlers(app: FastAPI) -> None:
    """Every error, the framework's included, in the one shape of service/errors.py."""

    def respond(err: ApiError) -> Response:
        return Response(error_body(err.code, err.message), status_code=err.status_code,
                        media_type="application/json", headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return respond(from_exception(exc))

    @app.exception_handler(PmstoreError)
    async def store_error(request: Request, exc: PmstoreError):
        err = from_exception(exc)
        if err is None:
            log.error("%s %s: %s", request.method, request.url.path, exc)
            err = ApiError("InternalError", f"{type(exc).__name__}: {exc}")
        return respond(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return respond(ApiError("BadRequest", "; ".join(parts) or "invalid request"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return respond(ApiError("InternalError", f"internal error: {type(exc).__name__}"))


__all__ = ["FrontDoor", "Service", "create_app"]
