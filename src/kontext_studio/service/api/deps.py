"""What every router depends on: the services container, the authenticated user, the request's base URL.

    from kontext_studio.service.api.deps import Svc, User, base_of

    @router.get("/v1/things")
    def list_things(svc: Svc, me: User) -> dict: ...
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.requests import HTTPConnection

from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.api.problems import Unauthorized
from kontext_studio.service.container import Services

LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
# Starlette's TestClient talks to the app in-process, never over a socket: its peer and Host are fixed names.
TEST_PEER, TEST_HOST = "testclient", "testserver"


def services(request: Request) -> Services:
    """The container ``create_app`` put on the app."""
    svc: Services = request.app.state.services
    return svc


async def _services_dependency(request: Request) -> Services:
    # A coroutine, so FastAPI runs it on the event loop: a plain function dependency costs a worker-thread
    # hop on every request.
    return services(request)


Svc = Annotated[Services, Depends(_services_dependency)]


def base_of(request: Request) -> str:
    """The URL clients reached this server at (links in answers are built on it)."""
    return str(request.base_url).rstrip("/")


def _host_and_port(host_header: str) -> tuple[str, int | None]:
    text = host_header.strip().lower()
    if text.startswith("["):  # [::1]:8000
        name, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = text.partition(":")
    try:
        return name.rstrip("."), int(port) if port else None
    except ValueError:
        return name, -1


def is_local_request(conn: HTTPConnection, port: int | None) -> bool:
    """Whether a request may act as the single-user mode's local admin: it comes from a loopback address,
    names this machine by a loopback host name on the bound port (a DNS-rebound ``evil.example`` does not),
    and no other site's page started it.

    Args:
        conn: the request.
        port: the port the server is bound to (None: any).
    """
    from kontext_studio.web.auth import is_cross_site

    peer = conn.client.host if conn.client else ""
    name, sent_port = _host_and_port(conn.headers.get("host", ""))
    if peer == TEST_PEER:
        if name not in (*LOCAL_HOST_NAMES, TEST_HOST):
            return False
    else:
        try:
            if not ipaddress.ip_address(peer).is_loopback:
                return False
        except ValueError:
            return False
        if name not in LOCAL_HOST_NAMES:
            return False
        if port is not None and (sent_port or 80) != port:
            return False
    return not is_cross_site(conn)


def current_user(request: Request, authorization: Annotated[str | None, Header()] = None,
                 x_key: Annotated[str | None, Header()] = None) -> UserRecord:
    """The caller: an API key (``Authorization: Bearer`` or BFL's ``x-key``), else the studio's session
    cookie (CSRF-checked on writes), else, in single-user mode, a local request.

    Also callable directly as ``current_user(request, authorization, x_key)`` (routers built by factories).

    Raises:
        Unauthorized: none of these.
    """
    svc = services(request)
    token = x_key or (authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer "
                      else None)
    if token:
        user = svc.accounts.authenticate(token)
        if user is None:
            raise Unauthorized("the API key is unknown or revoked")
        return user
    studio_user = svc.studio_auth.user_id(request)
    if studio_user is not None:
        return svc.accounts.get_user(studio_user)
    if svc.local_user_id is not None and is_local_request(request, svc.options.local_port):
        return svc.accounts.get_user(svc.local_user_id)
    raise Unauthorized("send an API key: Authorization: Bearer ks_... (or x-key for the BFL routes)")


User = Annotated[UserRecord, Depends(current_user)]
