"""Webhooks, the SSE stream, uploads and single-user start-up, through the real app."""

from __future__ import annotations

import http.server
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app, webhook_secret
from kontext_studio.service.inputs import data_url
from kontext_studio.service.security.webhook_signing import verify
from kontext_studio.service.server import UnsafeBind, prepare
from kontext_studio.service.storage.fake import MemoryStorage
from kontext_studio.settings import Settings
from tests.service.test_api import SECRET, Client, png, user_client


class Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        verify(webhook_secret(SECRET), dict(self.headers), body)  # raises on a bad signature
        self.received.append({"id": self.headers["webhook-id"], "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[str]:
    Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def loopback_ok(ip: Any) -> bool:
    return ipaddress.ip_address(ip).is_loopback


@pytest.fixture()
def app(engine: Engine) -> Iterator[Any]:
    application = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.01)}), SECRET,
                             webhook_policy=loopback_ok, allow_http_webhooks=True)
    with TestClient(application):
        yield application


def test_webhooks_are_signed_filtered_and_sent_once(app: Any, accounts: SqlAccounts, receiver: str) -> None:
    client, _ = user_client(app, accounts)
    pid = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                    "num_inference_steps": 2},
                                          "webhook": receiver, "webhook_events_filter": ["completed"]}).json()["id"]
    client.wait(pid)
    end = time.monotonic() + 10
    while not Receiver.received and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    assert [r["body"]["status"] for r in Receiver.received] == ["succeeded"]
    assert Receiver.received[0]["body"]["id"] == pid and Receiver.received[0]["body"]["output"]


def test_unsafe_webhook_is_refused_before_anything_is_held(engine: Engine, accounts: SqlAccounts) -> None:
    strict = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend()}), SECRET, start_worker=False)
    client, uid = user_client(strict, accounts)
    for url in ("http://169.254.169.254/latest", "https://127.0.0.1/hook", "file:///etc/passwd"):
        r = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png())},
                                            "webhook": url})
        assert r.status_code == 422 and r.json()["field"] == "webhook", r.text
    assert accounts.balance(uid).held == 0


def test_sse_stream_reports_start_progress_and_completed(app: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(app, accounts)
    pid = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                    "num_inference_steps": 5}}).json()["id"]
    with client.http.stream("GET", f"/v1/predictions/{pid}/stream", headers=client.headers) as r:
        text = "".join(r.iter_text())
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert events[0] == "start" and "progress" in events and events[-2:] == ["output", "completed"]
    other, _ = user_client(app, accounts)
    assert other.get(f"/v1/predictions/{pid}/stream").status_code == 404


def test_upload_then_use_the_file_id(app: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(app, accounts)
    up = client.http.post("/v1/files", content=png(), headers=client.headers)
    assert up.status_code == 201 and up.json()["content_type"] == "image/png"
    pid = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": up.json()["id"],
                                                    "num_inference_steps": 1}}).json()["id"]
    assert client.wait(pid)["status"] == "succeeded"
    big = client.http.post("/v1/files", content=b"\x89PNG" + b"\0" * (21 * 2**20), headers=client.headers)
    assert big.status_code == 413
    gif = client.http.post("/v1/files", content=b"GIF89a" + b"\0" * 100, headers=client.headers)
    assert gif.status_code == 415


def test_an_uploaded_file_belongs_to_its_uploader(app: Any, accounts: SqlAccounts) -> None:
    alice, _ = user_client(app, accounts)
    bob, _ = user_client(app, accounts)
    file_id = alice.http.post("/v1/files", content=png(), headers=alice.headers).json()["id"]
    assert [f["id"] for f in alice.get("/v1/files").json()["results"]] == [file_id]
    assert bob.get("/v1/files").json()["results"] == []
    stolen = bob.post("/v1/predictions", {"input": {"prompt": "x", "input_image": file_id}})
    assert stolen.status_code == 422 and "no uploaded file" in stolen.json()["detail"]
    assert bob.get("/v1/account").json()["credits"]["held"] == 0
    via_shim = bob.http.post("/v1/flux-kontext-dev", json={"prompt": "x", "input_image": file_id},
                             headers={"x-key": bob.headers["Authorization"][7:]})
    assert via_shim.status_code == 422
    # the same bytes uploaded by Bob become Bob's too (one blob, two owners)
    again = bob.http.post("/v1/files", content=png(), headers=bob.headers).json()["id"]
    assert again == file_id
    pid = bob.post("/v1/predictions", {"input": {"prompt": "x", "input_image": again, "num_inference_steps": 1}})
    assert pid.status_code == 201


def test_a_recipe_of_an_inline_image_submits_again_for_its_owner_only(app: Any, accounts: SqlAccounts) -> None:
    alice, _ = user_client(app, accounts)
    bob, _ = user_client(app, accounts)
    pid = alice.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                   "num_inference_steps": 1}}).json()["id"]
    assert alice.wait(pid)["status"] == "succeeded"
    recipe = alice.get(f"/v1/predictions/{pid}/recipe").json()["input"]
    assert recipe["input_image"].startswith("file:uploads/")
    again = alice.post("/v1/predictions", {"input": recipe})  # reuse settings, same prompt new seed, promote
    assert again.status_code == 201, again.text
    assert bob.post("/v1/predictions", {"input": recipe}).status_code == 422


def test_single_user_mode_and_refusal_on_public_address(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    first = prepare(settings, "127.0.0.1")
    assert first.local_user_id is not None and first.new_key and first.new_key.startswith("ks_")
    again = prepare(settings, "127.0.0.1")
    assert again.local_user_id == first.local_user_id and again.new_key is None  # the key is shown once
    with pytest.raises(UnsafeBind, match=r"refusing to serve on 0\.0\.0\.0 with no accounts"):
        prepare(Settings(home=tmp_path / "other"), "0.0.0.0")
    app = create_app(first.engine, MemoryStorage(), Editor({"fake": FakeBackend()}), SECRET,
                     local_user_id=first.local_user_id, start_worker=False)
    http = TestClient(app)  # the test client counts as this machine
    assert http.get("/v1/account").json()["credits"]["available"] == 1000
    assert Client(app, first.new_key).get("/v1/account").status_code == 200
