"""HTTP errors: the one place where domain errors become statuses and the one error body.

Every error response, from the object fast path or from FastAPI, is
`{"error": {"code": ..., "message": ...}}`. The store's exceptions map to codes here
(not found 404, too large 413, precondition 412, heap full 507, corruption 503);
routes raise `ApiError` for protocol errors (bad range, bad digest, bad token).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

from allocator.errors import CorruptHeapError, HeapFullError
from store.errors import (
    CorruptObjectError,
    InvalidKeyError,
    NoSuchKeyError,
    ObjectTooLargeError,
    PreconditionFailedError,
)

# code -> HTTP status: the API's error vocabulary (README "Error codes")
CODES = {
    "BadRequest": 400, "InvalidKey": 400, "BadDigest": 400, "Unauthorized": 401, "NoSuchKey": 404,
    "NotFound": 404, "MethodNotAllowed": 405, "PreconditionFailed": 412, "EntityTooLarge": 413,
    "InvalidRange": 416, "InternalError": 500, "CorruptObject": 503, "NotReady": 503,
    "InsufficientStorage": 507,
}
# store exception -> code; looked up along the exception's MRO (the most specific wins)
_STORE_CODES = {
    NoSuchKeyError: "NoSuchKey", InvalidKeyError: "InvalidKey", ObjectTooLargeError: "EntityTooLarge",
    PreconditionFailedError: "PreconditionFailed", HeapFullError: "InsufficientStorage",
    CorruptObjectError: "CorruptObject", CorruptHeapError: "CorruptObject",
}
# framework statuses without a more specific code
_STATUS_CODES = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
                 413: "EntityTooLarge", 416: "InvalidRange", 422: "BadRequest"}


class ApiError(HTTPException):
    """An error response: `code` is one of CODES; the status follows from it."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        self.code = code
        self.message = message
        super().__init__(CODES[code], message, headers)


def from_exception(exc: BaseException) -> ApiError | None:
    """The ApiError for a store or HTTP exception, or None (a bug: the caller answers 500)."""
    if isinstance(exc, ApiError):
        return exc
    for cls in type(exc).__mro__:
        code = _STORE_CODES.get(cls)
        if code is not None:
            return ApiError(code, str(exc))
    if isinstance(exc, HTTPException):
        code = _STATUS_CODES.get(exc.status_code, "BadRequest" if exc.status_code < 500 else "InternalError")
        err = ApiError(code, str(exc.detail), dict(exc.headers or {}))
        err.status_code = exc.status_code     # keep a framework status without its own code (e.g. 406)
        return err
    return None


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


__all__ = ["CODES", "ApiError", "error_body", "from_exception"]
