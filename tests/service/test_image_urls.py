"""Image URLs in prediction inputs: refused unless switched on, then fetched only through the SSRF guard."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.inputs import MAX_IMAGE_BYTES
from kontext_studio.service.security.remote_images import ImageFetcher
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, png, user_client


class ImageServer(http.server.BaseHTTPRequestHandler):
    """Serves /img.png, /huge.png (over the cap), /missing (404) and /hop?to=URL (302); counts every hit."""

    hits: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        self.hits.append((self.server.server_address[0], self.path))  # type: ignore[index]
        if self.path == "/img.png":
            body = png()
        elif self.path == "/huge.png":
            body = b"\x89PNG" + b"\0" * (MAX_IMAGE_BYTES + 1024)
        elif self.path.startswith("/hop?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def _serve(host: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer((host, 0), ImageServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


@pytest.fixture()
def servers() -> Iterator[tuple[str, str]]:
    """An allowed image host on 127.0.0.1 and a 'private' sentinel on 127.0.0.2."""
    ImageServer.hits = []
    allowed, allowed_url = _serve("127.0.0.1")
    sentinel, sentinel_url = _serve("127.0.0.2")
    yield allowed_url, sentinel_url
    for s in (allowed, sentinel):
        s.shutdown()
        s.server_close()


def only_127_0_0_1(ip: Any) -> bool:
    return ipaddress.ip_address(ip) == ipaddress.ip_address("127.0.0.1")


@pytest.fixture()
def make_app(engine: Engine) -> Iterator[Callable[[ImageFetcher | None], Any]]:
    clients: list[TestClient] = []

    def make(fetcher: ImageFetcher | None) -> Any:
        app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.01)}), SECRET,
                         image_urls=fetcher)
        clients.append(TestClient(app))
        clients[-1].__enter__()
        return app

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _submit(app: Any, accounts: SqlAccounts, url: str) -> tuple[Any, Any]:
    client, _ = user_client(app, accounts)
    return client, client.post("/v1/predictions", {"input": {"prompt": "make it snowy", "input_image": url,
                                                             "num_inference_steps": 1}})


def test_urls_are_refused_by_default_and_nothing_is_fetched(make_app: Any, accounts: SqlAccounts,
                                                            servers: tuple[str, str]) -> None:
    allowed, _ = servers
    client, resp = _submit(make_app(None), accounts, f"{allowed}/img.png")
    assert resp.status_code == 422 and "switched off" in resp.json()["detail"]
    assert ImageServer.hits == []
    assert client.get("/v1/account").json()["credits"]["held"] == 0


def test_the_default_policy_refuses_loopback_without_a_request(make_app: Any, accounts: SqlAccounts,
                                                               servers: tuple[str, str]) -> None:
    allowed, _ = servers
    _, resp = _submit(make_app(ImageFetcher(MAX_IMAGE_BYTES, allow_http=True)), accounts, f"{allowed}/img.png")
    assert resp.status_code == 422 and resp.json()["code"] == "unsafe_url"
    assert ImageServer.hits == []


def test_an_allowed_url_is_fetched_once_and_edited(make_app: Any, accounts: SqlAccounts,
                                                   servers: tuple[str, str]) -> None:
    allowed, _ = servers
    app = make_app(ImageFetcher(MAX_IMAGE_BYTES, allow_http=True, policy=only_127_0_0_1))
    client, resp = _submit(app, accounts, f"{allowed}/img.png")
    assert resp.status_code == 201, resp.text
    assert client.wait(resp.json()["id"])["status"] == "succeeded"
    assert ImageServer.hits == [("127.0.0.1", "/img.png")]


def test_redirects_to_a_forbidden_address_oversize_and_errors_are_4xx(make_app: Any, accounts: SqlAccounts,
                                                                      servers: tuple[str, str]) -> None:
    allowed, sentinel = servers
    app = make_app(ImageFetcher(MAX_IMAGE_BYTES, allow_http=True, policy=only_127_0_0_1))
    client, hop = _submit(app, accounts, f"{allowed}/hop?to={sentinel}/img.png")
    assert hop.status_code == 422 and hop.json()["code"] == "unsafe_url"
    assert ("127.0.0.2", "/img.png") not in ImageServer.hits  # the sentinel was never reached
    _, huge = _submit(app, accounts, f"{allowed}/huge.png")
    assert huge.status_code == 413
    _, missing = _submit(app, accounts, f"{allowed}/missing")
    assert missing.status_code == 422 and "HTTP 404" in missing.json()["detail"]
    _, scheme = _submit(app, accounts, "file:///etc/passwd")
    assert scheme.status_code == 422
    assert client.get("/v1/account").json()["credits"]["held"] == 0
