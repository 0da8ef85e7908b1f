"""Errors as ``application/problem+json`` (RFC 9457), from one table mapping domain errors to statuses."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kontext_studio.core.errors import Canceled, InvalidRequest, KontextError, TierNotConfigured, WeightsNotFound
from kontext_studio.service.accounts.accounts_common import Conflict, InsufficientCredits, NotFound
from kontext_studio.service.jobs.jobs_common import IdempotencyConflict, JobNotFound, StaleAttempt
from kontext_studio.service.storage.signed_urls import SignatureError

logger = logging.getLogger("kontext_studio.service")

EXCEPTION_STATUS: dict[type[Exception], int] = {
    InvalidRequest: 422,
    IdempotencyConflict: 422,
    InsufficientCredits: 402,
    JobNotFound: 404,
    NotFound: 404,
    Conflict: 409,
    StaleAttempt: 409,
    TierNotConfigured: 501,
    WeightsNotFound: 503,
    Canceled: 409,
    SignatureError: 403,
}


class Unauthorized(KontextError):
    code = "unauthorized"


EXCEPTION_STATUS[Unauthorized] = 401


def status_for(exc: Exception) -> int:
    explicit = getattr(exc, "http_status", None)
    if isinstance(explicit, int):
        return explicit
    for cls in type(exc).__mro__:
        if cls in EXCEPTION_STATUS:
            return EXCEPTION_STATUS[cls]
    return 500


def problem(status: int, title: str, detail: str, code: str, **extra: object) -> JSONResponse:
    body = {"type": f"https://kontext.studio/problems/{code}", "title": title, "status": status,
            "detail": detail, "code": code, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


async def kontext_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    code = getattr(exc, "code", "error")
    extra: dict[str, object] = {}
    if field := getattr(exc, "field", None):
        extra["field"] = field
    if retry := getattr(exc, "retry_after", None):
        extra["retry_after"] = retry
    return problem(status, type(exc).__name__, str(exc), code, **extra)


async def storage_refused_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database refused to store (out of range, unencodable): the client's input, never a 500."""
    logger.warning("database refused a value: %s", str(exc).splitlines()[0][:200])
    return problem(422, "InvalidRequest", "a value in the request cannot be stored (out of range or not plain "
                   "text); check the numbers and text you sent", "invalid_request")


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered as a problem that reveals nothing of the server."""
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "InternalError", "the server failed on this request; it has been logged", "internal_error")


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return problem(422, "InvalidRequest", f"{where}: {first.get('msg', 'invalid request')}", "invalid_request",
                   field=where or None)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


async def http_error_handler(_request: Request, exc: Exception) -> Response:
    """Errors raised by the framework itself (no route matched, wrong method) as problems like every other."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code < 400:  # a redirect or the like: not an error
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else "request failed"
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route; see /docs for the API"
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    response = problem(exc.status_code, code.replace("_", " ").capitalize(), detail, code)
    response.headers.update(exc.headers or {})
    return response
