"""Request guards applied to every route, as one ASGI middleware:

- JSON bodies are capped before they are parsed: a declared ``Content-Length`` over the cap answers 413 at
  once, and a body sent without one is counted while it streams (413 as soon as it passes the cap).
  Uploads (``/v1/files``, multipart forms) have their own, larger caps where they are read.
- HTML pages carry a Content-Security-Policy, frame protection and a strict referrer policy.
"""

from __future__ import annotations

import json
from typing import Any

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
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        capped = not ctype.startswith(b"multipart/") and not scope["path"].startswith(STREAMED_UPLOADS)
        if capped:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.cap):
                await self._too_large(send)
                return
            receive = self._counting(receive)
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

    async def _too_large(self, send: Send) -> None:
        start, body = _problem(413, f"the request body is over {self.cap // 2**20} MB; send less (images: upload "
                                    "them with POST /v1/files and send the file id)", "payload_too_large")
        await send(start)
        await send({"type": "http.response.body", "body": body})
