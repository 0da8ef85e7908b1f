"""The HTTP service end to end on SQLite and PostgreSQL, with the named fake backend (and one real tiny edit)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, func, select

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import LedgerEntry, make_session_factory
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from tests.conftest import noise_image

SECRET = b"test-secret-0123456789abcdef"


def png(w: int = 96, h: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    noise_image(w, h, seed=seed).save(buf, format="PNG")
    return buf.getvalue()


class Client:
    def __init__(self, app: Any, key: str):
        self.http = TestClient(app)
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, url: str, json: Any = None, **headers: str) -> Any:
        return self.http.post(url, json=json, headers={**self.headers, **headers})

    def get(self, url: str, **headers: str) -> Any:
        return self.http.get(url, headers={**self.headers, **headers})

    def wait(self, pid: str, timeout: float = 20.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            body = self.get(f"/v1/predictions/{pid}").json()
            if body["status"] in ("succeeded", "failed", "canceled", "aborted"):
                return body
            time.sleep(0.05)
        raise AssertionError(f"prediction {pid} did not finish: {body}")


@pytest.fixture()
def service(engine: Engine, accounts: SqlAccounts) -> Iterator[tuple[Any, FakeBackend]]:
    backend = FakeBackend(step_seconds=0.01, resolution=128)
    app = create_app(engine, MemoryStorage(), Editor({"fake": backend}), SECRET)
    with TestClient(app):  # runs the startup hook: the in-process worker
        yield app, backend


def user_client(app: Any, accounts: SqlAccounts, credits: int = 100) -> tuple[Client, int]:
    import uuid

    user = accounts.create_user(f"u-{uuid.uuid4().hex}@example.com", "U")
    if credits:
        accounts.grant(user.id, credits)
    key, _ = accounts.create_api_key(user.id)
    return Client(app, key), user.id


def test_prediction_runs_and_charges_its_tier(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-dev",
                                        "input": {"prompt": "put her on a beach", "input_image": data_url(png()),
                                                  "seed": 3, "num_inference_steps": 4}})
    assert r.status_code == 201, r.text
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["cost"] == 5 and done["result"]["seed"] == 3
    image = client.http.get(done["output"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (96, 64)
    assert client.get("/v1/account").json()["credits"] == {"available": 95, "held": 0}
    tampered = done["output"].replace("sig=", "sig=x")
    assert client.http.get(tampered).status_code == 403


def test_prefer_wait_returns_the_finished_prediction(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/models/black-forest-labs/flux-kontext-fast/predictions",
                    {"input": {"prompt": "x", "input_image": data_url(png()), "num_inference_steps": 2}},
                    Prefer="wait=10")
    assert r.json()["status"] == "succeeded" and r.json()["cost"] == 4


def test_insufficient_credits_is_402_before_anything_is_queued(service: Any, accounts: SqlAccounts,
                                                               engine: Engine) -> None:
    app, _ = service
    client, uid = user_client(app, accounts, credits=3)
    r = client.post("/v1/predictions", {"model": "flux-kontext-dev",
                                        "input": {"prompt": "x", "input_image": data_url(png())}})
    assert r.status_code == 402 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "insufficient_credits"
    assert client.get("/v1/predictions").json()["results"] == []
    assert accounts.balance(uid).held == 0


@pytest.mark.parametrize(
    ("inp", "field"),
    [
        # A prompt alone generates on Kontext [dev] (text to image); a second image without the first is refused.
        ({"prompt": "x", "input_image_2": data_url(png())}, "input_image"),
        ({"prompt": "", "input_image": "PNG"}, "input_image"),
        ({"prompt": "", "input_image": None}, "instruction"),  # no image is fine on dev (it generates), no prompt not
        ({"prompt": "  ", "input_image": data_url(png())}, "instruction"),
        ({"prompt": "x", "input_image": data_url(png()), "aspect_ratio": "5:1"}, "aspect_ratio"),
        ({"prompt": "x", "input_image": data_url(png()), "seed": "seven"}, "seed"),
        ({"prompt": "x", "input_image": "https://example.com/a.png"}, "input_image"),
        ({"prompt": "x", "input_image": data_url(b"GIF89a" + b"\0" * 40, "gif")}, None),
        ({"prompt": "x", "input_image": data_url(png()), "colour": "red"}, "input"),
        ({"prompt": "x", "input_image": data_url(png()), "safety_tolerance": 9}, "safety_tolerance"),
        ({"prompt": "x", "input_image": data_url(png()), "prompt_upsampling": "yes"}, "prompt_upsampling"),
    ],
)
def test_bad_input_is_a_4xx_problem_and_holds_nothing(service: Any, accounts: SqlAccounts,
                                                      inp: dict[str, Any], field: str | None) -> None:
    app, _ = service
    client, uid = user_client(app, accounts)
    r = client.post("/v1/predictions", {"input": inp})
    assert 400 <= r.status_code < 500, r.text
    problem = r.json()
    assert problem["status"] == r.status_code and problem["detail"] and problem["code"]
    if field:
        assert problem.get("field") == field
    assert accounts.balance(uid).held == 0 and accounts.balance(uid).available == 100


def test_cancel_stops_a_running_job_mid_denoise_and_releases_credits(service: Any, accounts: SqlAccounts) -> None:
    app, backend = service
    backend.step_seconds = 0.1
    client, uid = user_client(app, accounts)
    pid = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                    "num_inference_steps": 50}}).json()["id"]
    end = time.monotonic() + 10
    while client.get(f"/v1/predictions/{pid}").json()["progress"] < 0.05 and time.monotonic() < end:
        time.sleep(0.05)
    calls_before = backend.calls
    assert client.post(f"/v1/predictions/{pid}/cancel").json()["status"] == "canceled"
    time.sleep(0.5)
    final = client.get(f"/v1/predictions/{pid}").json()
    assert final["status"] == "canceled" and final["output"] is None and final["progress"] < 0.5
    assert accounts.balance(uid).available == 100 and accounts.balance(uid).held == 0
    assert backend.calls == calls_before


def test_idempotency_same_body_same_prediction_other_body_422(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, uid = user_client(app, accounts)
    body = {"input": {"prompt": "x", "input_image": data_url(png()), "num_inference_steps": 1}}
    a = client.post("/v1/predictions", body, **{"Idempotency-Key": "k1"})
    b = client.post("/v1/predictions", body, **{"Idempotency-Key": "k1"})
    assert a.status_code == 201 and b.status_code == 200 and a.json()["id"] == b.json()["id"]
    other = {"input": {**body["input"], "prompt": "y"}}
    c = client.post("/v1/predictions", other, **{"Idempotency-Key": "k1"})
    assert c.status_code == 422 and c.json()["code"] == "idempotency_conflict"
    client.wait(a.json()["id"])
    assert accounts.balance(uid).available == 95  # charged once


def test_tenant_isolation(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    alice, _ = user_client(app, accounts)
    bob, _ = user_client(app, accounts)
    pid = alice.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                   "num_inference_steps": 1}}).json()["id"]
    assert bob.get(f"/v1/predictions/{pid}").status_code == 404
    assert bob.post(f"/v1/predictions/{pid}/cancel").status_code == 404
    assert bob.get(f"/v1/get_result?id={pid}").json()["status"] == "Task not found"
    assert alice.wait(pid)["status"] == "succeeded"


def test_unknown_or_revoked_key_is_401(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    http = TestClient(app)
    assert http.get("/v1/account").status_code == 401
    assert http.get("/v1/account", headers={"Authorization": "Bearer ks_nope"}).status_code == 401
    client, uid = user_client(app, accounts)
    assert client.get("/v1/account").status_code == 200
    key = accounts.list_api_keys(uid)[0]
    accounts.revoke_key(key.id)
    assert client.get("/v1/account").status_code == 401


def test_bfl_shim_round_trip(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    key = client.headers["Authorization"][7:]
    r = client.http.post("/v1/flux-kontext-dev", json={"prompt": "x", "input_image": data_url(png()),
                                                       "seed": 9, "output_format": "jpeg"}, headers={"x-key": key})
    assert r.status_code == 200, r.text
    polling = r.json()["polling_url"]
    assert polling.startswith("http") and r.json()["id"] in polling
    end = time.monotonic() + 20
    while True:
        res = client.http.get(polling, headers={"x-key": key}).json()
        if res["status"] != "Pending" or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert res["status"] == "Ready" and res["result"]["seed"] == 9
    sample = client.http.get(res["result"]["sample"])
    assert sample.headers["content-type"] == "image/jpeg"
    assert client.http.get("/v1/get_result?id=nope", headers={"x-key": key}).json()["status"] == "Task not found"


def test_models_lists_tiers_and_prices(service: Any) -> None:
    app, _ = service
    models = {m["tier"]: m for m in TestClient(app).get("/v1/models").json()["results"]}
    kontext = {t: m["credits"] for t, m in models.items() if m["family"] == "kontext"}
    assert kontext == {"fast": 4, "dev": 5, "pro": 8, "max": 15} and "klein-4b" in models  # the whole catalogue
    assert TestClient(app).get("/openapi.json").json()["info"]["title"] == "Kontext Studio"


def test_model_failure_releases_the_hold(service: Any, accounts: SqlAccounts, engine: Engine) -> None:
    app, _ = service
    client, uid = user_client(app, accounts)
    pid = client.post("/v1/predictions", {"input": {"prompt": "boom [fail]", "input_image": data_url(png()),
                                                    "num_inference_steps": 1}}).json()["id"]
    done = client.wait(pid)
    assert done["status"] == "failed" and done["error"]
    assert accounts.balance(uid).available == 100 and accounts.balance(uid).held == 0
    with make_session_factory(engine)() as s:
        assert s.scalar(select(func.sum(LedgerEntry.amount))) == 0


def test_rate_limit_is_429_with_retry_after_and_holds_nothing(engine: Engine, accounts: SqlAccounts) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend()}), SECRET, start_worker=False,
                     rate_limit=10)
    client, uid = user_client(app, accounts, credits=1000)
    body = {"input": {"prompt": "x", "input_image": data_url(png())}}
    codes = [client.post("/v1/predictions", body).status_code for _ in range(11)]
    assert codes == [201] * 8 + [429] * 3  # 8 active at most, then the per-minute limit
    r = client.post("/v1/predictions", body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["code"] == "rate_limited"
    assert accounts.balance(uid).held == 8 * 5


def test_cors_is_closed_by_default(service: Any) -> None:
    app, _ = service
    r = TestClient(app).get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


def test_outputs_carry_no_private_metadata_but_keep_the_recipe(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the upright picture is 64 wide, 96 tall
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # GPS latitude
    exif[0x010F] = "SecretCam"
    buf = io.BytesIO()
    noise_image(96, 64).save(buf, format="JPEG", exif=exif)
    pid = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(buf.getvalue(), "jpeg"),
                                                    "num_inference_steps": 1}}).json()["id"]
    done = client.wait(pid)
    data = client.http.get(done["output"]).content
    assert b"SecretCam" not in data and b"GPS" not in data
    out = Image.open(io.BytesIO(data))
    assert out.size == (64, 96)  # EXIF orientation applied
    assert "kontext:recipe" in out.info and not out.getexif()


def test_a_real_edit_through_http_on_the_tiny_model(engine: Engine, accounts: SqlAccounts, backend: Any) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET)
    with TestClient(app):
        client, _ = user_client(app, accounts)
        pid = client.post("/v1/predictions", {"model": "flux-kontext-dev", "input": {
            "prompt": "put her on a beach", "input_image": data_url(png(200, 150)), "seed": 5,
            "num_inference_steps": 2, "aspect_ratio": "4:3"}}).json()["id"]
        done = client.wait(pid, timeout=120)
        assert done["status"] == "succeeded", done
        out = Image.open(io.BytesIO(client.http.get(done["output"]).content))
        assert out.size[0] * 3 == out.size[1] * 4
        assert done["result"]["recipe"]["model"]["random_weights"] is True and done["result"]["seed"] == 5


def test_account_ledger_shows_hold_and_capture(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    pid = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                    "num_inference_steps": 1}}).json()["id"]
    client.wait(pid)
    time.sleep(0.1)
    entries = [e for e in client.get("/v1/account/ledger").json()["results"] if e["job_id"] == pid]
    kinds = sorted((e["kind"], e["account"], e["amount"]) for e in entries)
    assert kinds == [("capture", "held", -5), ("hold", "available", -5), ("hold", "held", 5)]


def test_submit_answers_what_a_status_read_answers_next(engine: Engine, accounts: SqlAccounts) -> None:
    """The submit's answer is built from the prediction as it was queued, not read back: it must be exactly
    what the next status read says (no worker here, so nothing changes in between), webhook fields and
    all."""
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend()}), SECRET, start_worker=False,
                     allow_http_webhooks=True, webhook_policy=lambda _address: True)
    client, _ = user_client(app, accounts)
    body = {"model": "flux-kontext-dev", "webhook": "http://127.0.0.1:9/hook",
            "webhook_events_filter": ["completed"],
            "input": {"prompt": "a lighthouse at dusk", "input_image": data_url(png()), "seed": 7,
                      "num_inference_steps": 2, "guidance": 2.5}}
    r = client.post("/v1/predictions", body, **{"Cancel-After": "30m"})
    assert r.status_code == 201, r.text
    again = client.get(f"/v1/predictions/{r.json()['id']}")
    assert again.status_code == 200 and again.json() == r.json()
    assert r.json()["status"] == "starting" and r.json()["cost"] == 5
