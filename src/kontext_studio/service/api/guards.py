"""Request guards applied to every route, as one ASGI middleware:

- JSON bodies are capped before they are parsed: a declared ``Content-Length`` over the cap answers 413 at
  once, and a body sent without one is counted while it streams (413 as soon as it passes the cap).
  Uploads (``/v1/files``, multipart forms) have their own, larger caps where they are read.
- Text no database can store is refused before any route sees it (422): NUL and lone UTF-16 surrogates,
  whether escaped in a JSON body (``\\u0000``, ``\\ud800``) or percent-encoded in the path or query.
- HTML pages carry a Content-Security-Policy, frame protection and a strict referrer policy.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
       "frame-ancestors 'none'")
# The API docs page (Swagger UI) starts itself with an inline script; it shows no user data.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")
PAGE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
]
STREAMED_UPLOADS = ("/v1/files",)


_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.S)


def bad_json_text(body: bytes) -> str | None:
    """Why a JSON text holds text no database can store (an escaped NUL or lone surrogate), or None.

    Escapes are read left to right as JSON reads them, so an escaped backslash followed by ``u0000`` is
    plain text, not an escape."""
    if b"\\u" not in body:
        return None
    pending_high = -1  # end offset of a high surrogate escape waiting for its low half
    for m in _ESCAPE.finditer(body):
        if m.group(1) is None:
            if pending_high >= 0:
                return "a lone UTF-16 surrogate (\\ud800-\\udbff without its pair)"
            continue
        code = int(m.group(1), 16)
        if pending_high >= 0:
            if not (0xDC00 <= code <= 0xDFFF and m.start() == pending_high):
                return "a lone UTF-16 surrogate (\\ud800-\\udbff without its pair)"
            pending_high = -1
            continue
        if code == 0:
            return "a NUL character (\\u0000)"
        if 0xD800 <= code <= 0xDBFF:
            pending_high = m.end()
        elif 0xDC00 <= code <= 0xDFFF:
            return "a lone UTF-16 surrogate (\\udc00-\\udfff without its pair)"
    return "a lone UTF-16 surrogate (\\ud800-\\udbff without its pair)" if pending_high >= 0 else None


def bad_url_text(scope: Scope) -> str | None:
    """Why the path or query holds NUL or bytes that are not UTF-8 (e.g. an encoded surrogate), or None."""
    raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    for part in (raw_path, scope.get("query_string") or b""):
        data = unquote_to_bytes(part.replace(b"+", b" "))
        if b"\x00" in data:
            return "a NUL character"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes that are not UTF-8 text"
    return None


class BodyTooLarge(HTTPException):
    """Raised inside the receive channel when a streamed body passes the cap (answered as a 413 problem)."""

    def __init__(self, cap: int):
        super().__init__(413, f"the request body is over {cap // 2**20} MB; send less (images: upload them with "
                              "POST /v1/files and send the file id)")


def _problem(status: int, detail: str, code: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"type": f"https://kontext.studio/problems/{code}", "title": code.replace("_", " ").capitalize(),
                       "status": status, "detail": detail, "code": code}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]}
    return start, body


class GuardMiddleware:
    """Body cap for JSON requests and security headers for pages.

    Args:
        app: the wrapped app.
        max_json_body: the cap in bytes.
    """

    def __init__(self, app: ASGIApp, max_json_body: int):
        self.app, self.cap = app, max_json_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url_problem = bad_url_text(scope)
        if url_problem is not None:
            await self._refuse(send, 422, f"the URL holds {url_problem}; send plain UTF-8 text", "invalid_request")
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        capped = not ctype.startswith(b"multipart/") and not scope["path"].startswith(STREAMED_UPLOADS)
        if capped:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.cap):
                await self._too_large(send)
                return
            receive = self._counting(receive)
            if ctype in (b"application/json", b"") and scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
                try:
                    body = await self._read_all(receive)
                except BodyTooLarge:
                    await self._too_large(send)
                    return
                problem = bad_json_text(body)
                if problem is not None:
                    await self._refuse(send, 422, f"the body holds {problem}, which cannot be stored; send plain "
                                                  "UTF-8 text", "invalid_request")
                    return
                receive = self._replay(body, receive)
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                out = list(message.get("headers") or [])
                ctype_out = next((v for k, v in out if k.lower() == b"content-type"), b"")
                if ctype_out.startswith(b"text/html"):
                    present = {k.lower() for k, _ in out}
                    extra = PAGE_HEADERS
                    if scope["path"].startswith(DOCS_PATHS):
                        extra = [(b"content-security-policy", DOCS_CSP.encode()), *PAGE_HEADERS[1:]]
                    out += [(k, v) for k, v in extra if k not in present]
                    message = {**message, "headers": out}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await self._too_large(send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0
        cap = self.cap

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        return counted

    @staticmethod
    async def _read_all(receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, when it comes

        return replay

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str, code: str) -> None:
        start, body = _problem(status, detail, code)
        await send(start)
        await send({"type": "http.response.body", "body": body})

    async def _too_large(self, send: Send) -> None:
        start, body = _problem(413, f"the request body is over {self.cap // 2**20} MB; send less (images: upload "
                                    "them with POST /v1/files and send the file id)", "payload_too_large")
        await send(start)
        await send({"type": "http.response.body", "body": body})
