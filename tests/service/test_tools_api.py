"""``/v1/tools``: free tools answer pictures and never touch credits; AI tools are charged exactly like an edit."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, func, select

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import KontextError
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.api.problems import Unauthorized, kontext_error_handler
from kontext_studio.service.api.tools import tools_router
from kontext_studio.service.app import create_app
from kontext_studio.service.db import LedgerEntry, make_session_factory
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from kontext_studio.service.storage.signed_urls import UrlSigner

SECRET = b"test-secret-0123456789abcdef"


def photo_bytes(fmt: str = "JPEG", size: tuple[int, int] = (160, 120)) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).resize(size).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture()
def app(engine: Engine) -> Any:
    application = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.01, resolution=128)}),
                             SECRET)
    with TestClient(application):
        yield application


def client_for(app: Any, accounts: SqlAccounts, credits: int = 100, admin: bool = False) -> tuple[TestClient, int]:
    user = accounts.create_user(f"u-{uuid.uuid4().hex}@example.com", "U", is_admin=admin)
    if credits:
        accounts.grant(user.id, credits)
    key, _ = accounts.create_api_key(user.id)
    http = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    return http, user.id


def ledger_rows(engine: Engine, user_id: int) -> int:
    with make_session_factory(engine)() as s:
        mine = (f"user:{user_id}:available", f"user:{user_id}:held")
        return int(s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.account.in_(mine))) or 0)


def test_free_tool_answers_the_picture_and_never_touches_credits(app: Any, accounts: SqlAccounts,
                                                                 engine: Engine) -> None:
    http, uid = client_for(app, accounts)
    before = ledger_rows(engine, uid)
    r = http.post("/v1/tools/resize", files={"images": ("c.jpg", photo_bytes(), "image/jpeg")},
                  data={"width": "80", "format": "webp"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp" and r.headers["x-credits"] == "0"
    assert Image.open(io.BytesIO(r.content)).size == (80, 60)
    assert json.loads(r.headers["x-tool-info"]) == {"width": 80, "height": 60}
    assert ledger_rows(engine, uid) == before
    assert accounts.balance(uid).available == 100


def test_result_kept_as_a_file_goes_straight_into_an_edit(app: Any, accounts: SqlAccounts) -> None:
    http, _ = client_for(app, accounts)
    up = http.post("/v1/files", content=photo_bytes("PNG"), headers={"content-type": "image/png"})
    assert up.status_code == 201, up.text
    r = http.post("/v1/tools/color-adjust", json={"images": [up.json()["id"]], "params": {"brightness": 20},
                                                  "format": "png"}, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["credits"] == 0 and body["output"]["id"].startswith("file:")
    got = http.get(body["output"]["urls"]["get"])
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (160, 120)
    # "Use as input": the tool's output is the caller's file, usable in a prediction.
    pred = http.post("/v1/predictions", json={"model": "flux-kontext-dev", "input": {
        "prompt": "make it snowy", "input_image": body["output"]["id"], "num_inference_steps": 2}})
    assert pred.status_code == 201, pred.text
    # Someone else's file id is refused.
    other, _ = client_for(app, accounts)
    r = other.post("/v1/tools/resize", json={"images": [up.json()["id"]], "params": {"width": 10}})
    assert r.status_code == 422 and r.json()["field"] == "images[0]"


def test_info_answers_facts(app: Any, accounts: SqlAccounts) -> None:
    http, _ = client_for(app, accounts)
    r = http.post("/v1/tools/info", files={"images": ("c.jpg", photo_bytes(), "image/jpeg")}, data={"faces": "false"})
    assert r.status_code == 200 and r.json()["info"]["format"] == "jpeg" and r.json()["credits"] == 0


@pytest.mark.parametrize(("name", "files", "data", "status", "field"), [
    ("nope", {"images": ("c.jpg", b"x", "image/jpeg")}, {}, 404, "name"),
    ("upscale", {"images": ("c.jpg", "JPEG", "image/jpeg")}, {"scale": "3"}, 422, "scale"),
    ("upscale", {"images": ("c.jpg", "JPEG", "image/jpeg")}, {"zoom": "3"}, 422, "zoom"),
    ("resize", {"images": ("c.txt", b"hello, not a picture", "text/plain")}, {"width": "5"}, 422, "image"),
    ("erase", {"images": ("c.jpg", "JPEG", "image/jpeg")}, {}, 422, "mask"),
    ("upscale", {"images": ("big.png", "BIG", "image/png")}, {}, 422, "image"),
    ("resize", {"images": ("c.jpg", "JPEG", "image/jpeg")}, {"width": "5", "quality": "0"}, 422, "quality"),
    ("remove-background", {"images": ("c.jpg", "JPEG", "image/jpeg")}, {"format": "jpeg"}, 422, "format"),
])
def test_bad_input_is_a_4xx_problem(app: Any, accounts: SqlAccounts, engine: Engine, name: str,
                                    files: dict[str, Any], data: dict[str, str], status: int, field: str,
                                    tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "remove-background":  # refused for the format even when the model is missing here
        pytest.importorskip("onnxruntime")
    http, uid = client_for(app, accounts)
    fname, content, ctype = files["images"]
    if content == "JPEG":
        content = photo_bytes()
    elif content == "BIG":
        content = photo_bytes("PNG", (1400, 1000))  # over the upscaler's 1 MP
    before = ledger_rows(engine, uid)
    r = http.post(f"/v1/tools/{name}", files={"images": (fname, content, ctype)}, data=data)
    if r.status_code == 503:  # remove-background without its model on this machine: also a clear 5xx refusal
        assert "make install" in r.json()["detail"]
        return
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field and r.json()["detail"]
    assert ledger_rows(engine, uid) == before


def test_visitors_need_the_administrators_switch(app: Any, accounts: SqlAccounts) -> None:
    visitor = TestClient(app)
    files = {"images": ("c.jpg", photo_bytes(), "image/jpeg")}
    r = visitor.post("/v1/tools/resize", files=files, data={"width": "40"}, headers={"Origin": "https://evil.test"})
    assert r.status_code == 401
    assert visitor.get("/v1/tools").json()["open_to_visitors"] is False
    user, _ = client_for(app, accounts)
    assert user.put("/v1/tools/settings", json={"open_to_visitors": True}).status_code == 403
    admin, _ = client_for(app, accounts, admin=True)
    assert admin.put("/v1/tools/settings", json={"open_to_visitors": True}).json() == {"open_to_visitors": True}
    r = visitor.post("/v1/tools/resize", files=files, data={"width": "40"}, headers={"Origin": "https://evil.test"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).width == 40
    # A wrong key is still refused rather than treated as a visitor.
    bad = TestClient(app, headers={"Authorization": "Bearer ks_nope"})
    assert bad.post("/v1/tools/resize", files=files, data={"width": "40"}).status_code == 401
    # Visitors get no AI tools.
    assert visitor.post("/v1/tools/colorize", json={"input_image": data_url(photo_bytes())}).status_code == 401
    admin.put("/v1/tools/settings", json={"open_to_visitors": False})


def test_ai_tool_is_charged_exactly_like_an_edit(app: Any, accounts: SqlAccounts, engine: Engine) -> None:
    http, uid = client_for(app, accounts)
    listing = http.get("/v1/tools").json()
    colorize = next(t for t in listing["ai"] if t["name"] == "colorize")
    assert colorize["credits"]["flux-kontext-dev"] == 5 and colorize["free"] is False
    image = data_url(photo_bytes("PNG"))
    r = http.post("/v1/tools/colorize", json={"input_image": image, "model": "flux-kontext-dev",
                                              "params": {"hint": "a red cup"}, "seed": 4})
    assert r.status_code == 201, r.text
    tool_job = r.json()
    assert tool_job["input"]["prompt"].startswith("Colorize this black-and-white photograph")
    plain = http.post("/v1/predictions", json={"model": "flux-kontext-dev", "input": {
        "prompt": "make it snowy", "input_image": image, "seed": 4}})
    assert plain.status_code == 201

    a, b = wait_for(http, tool_job["id"]), wait_for(http, plain.json()["id"])
    assert a["status"] == b["status"] == "succeeded" and a["cost"] == b["cost"] == 5
    assert accounts.balance(uid).available == 90

    with make_session_factory(engine)() as s:
        def moves(job_id: str) -> list[tuple[str, int]]:
            rows = s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)).all()
            return [(e.kind, e.amount) for e in rows]

        assert moves(a["id"]) == moves(b["id"]) and moves(a["id"])
    bad = http.post("/v1/tools/remove-object-by-name", json={"input_image": image})
    assert bad.status_code == 422 and bad.json()["field"] == "object"
    assert http.post("/v1/tools/relight", json={"input_image": image, "model": "flux-kontext-huge"}).status_code == 422


class NoSettings:
    """No administrator has touched the settings: the router's defaults apply."""

    def get(self, name: str) -> str | None:
        return None

    def put(self, name: str, value: str, by: int | None) -> None:
        raise AssertionError("not changed in this test")


def test_rate_limited_per_user_and_per_address(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    someone = UserRecord(id=10_000_000 + uuid.uuid4().int % 1000, email="x@example.com", name="x", is_admin=False,
                         created_at=datetime.now(UTC))

    def auth(request: Any, authorization: str | None = None, x_key: str | None = None) -> UserRecord:
        if authorization:
            return someone
        raise Unauthorized("no key")

    def build(per_user: int, per_address: int, open_: bool) -> TestClient:
        application = FastAPI()
        application.add_exception_handler(KontextError, kontext_error_handler)
        application.include_router(tools_router(
            storage=MemoryStorage(), sessions=sessions, settings_store=NoSettings(), user=auth,
            signer=UrlSigner(SECRET),
            submit=lambda *a: "", get_job=lambda *a: None, envelope_for=lambda *a: {},
            per_user_limit=per_user, per_address_limit=per_address, open_to_visitors=open_))
        return TestClient(application)

    files = {"images": ("c.jpg", photo_bytes(size=(40, 30)), "image/jpeg")}
    http = build(per_user=2, per_address=100, open_=False)
    key = {"Authorization": "Bearer k"}
    codes = [http.post("/v1/tools/resize", files=files, data={"width": "8"}, headers=key).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    http = build(per_user=100, per_address=2, open_=True)
    codes = [http.post("/v1/tools/resize", files=files, data={"width": "8"}).status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    r = http.post("/v1/tools/resize", files=files, data={"width": "8"})
    assert int(r.headers["retry-after"]) >= 1
    assert "more than 2 free tool runs in 60 s" in r.text  # the words of this endpoint, not "predictions"


def test_erase_over_http_with_a_mask(app: Any, accounts: SqlAccounts) -> None:
    http, _ = client_for(app, accounts)
    mask = Image.new("L", (160, 120), 0)
    mask.paste(255, (70, 50, 90, 70))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    src = photo_bytes("PNG")
    r = http.post("/v1/tools/erase", files=[("images", ("c.png", src, "image/png")),
                                            ("mask", ("m.png", buf.getvalue(), "image/png"))],
                  data={"method": "fast"})
    assert r.status_code == 200, r.text
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
    before = np.asarray(Image.open(io.BytesIO(src)).convert("RGB"), dtype=np.int16)
    assert np.abs(out - before)[:30].max() == 0 and np.abs(out - before)[50:70, 70:90].mean() > 0.5


def wait_for(http: TestClient, pid: str) -> dict[str, Any]:
    import time

    for _ in range(400):
        body = http.get(f"/v1/predictions/{pid}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.05)
    raise AssertionError(body)


def test_ai_tool_runs_on_any_catalogue_model_that_edits_at_the_servers_price(engine: Engine,
                                                                             accounts: SqlAccounts) -> None:
    # The server's own price for klein 4B (KONTEXT_PRICES): listed and charged for the tool as for an edit.
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.01, resolution=128)}),
                     SECRET, prices=(("klein-4b", 7),))
    with TestClient(app):
        http, uid = client_for(app, accounts, credits=30)
        listing = http.get("/v1/tools").json()
        relight = next(t for t in listing["ai"] if t["name"] == "relight")
        # The Kontext keys existing clients read are still there, next to every other model that edits.
        assert relight["credits"]["flux-kontext-dev"] == 5 and relight["credits"]["flux-kontext-max"] > 0
        assert relight["credits"]["flux-2-klein-4b"] == 7 and relight["credits"]["qwen-image-edit-2511"] == 6
        assert relight["credits"]["flux-2-pro"] == 6
        models = {m["name"]: m for m in listing["models"]}
        assert models["flux-2-klein-4b"]["full_name"] == "black-forest-labs/flux-2-klein-4b"
        assert models["flux-2-klein-4b"]["configured"] is True and models["flux-2-klein-4b"]["credits"] == 7

        image = data_url(photo_bytes("PNG"))
        ids = []
        for name in ("black-forest-labs/flux-2-klein-4b", "klein-4b"):  # named as predictions name it
            r = http.post("/v1/tools/relight", json={"input_image": image, "model": name, "seed": 3})
            assert r.status_code == 201, r.text
            assert r.json()["model"] == "flux-2-klein-4b" and r.json()["tool"] == "relight"
            ids.append(r.json()["id"])
        plain = http.post("/v1/predictions", json={"model": "flux-2-klein-4b", "input": {
            "prompt": "make it snowy", "input_image": image, "seed": 3}})
        assert plain.status_code == 201
        done = [wait_for(http, pid) for pid in (*ids, plain.json()["id"])]
        assert {d["status"] for d in done} == {"succeeded"} and [d["cost"] for d in done] == [7, 7, 7]
        assert {d["model"] for d in done} == {"flux-2-klein-4b"}
        assert accounts.balance(uid).available == 30 - 3 * 7
        with make_session_factory(engine)() as s:
            def moves(job_id: str) -> list[tuple[str, int]]:
                rows = s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job_id)
                                 .order_by(LedgerEntry.id)).all()
                return [(e.kind, e.amount) for e in rows]

            assert moves(ids[0]) == moves(plain.json()["id"]) and moves(ids[0])


def test_a_model_that_cannot_run_the_tool_is_refused_with_nothing_held(engine: Engine,
                                                                       accounts: SqlAccounts) -> None:
    # Only the Kontext backend here: klein 4B is listed as not available and refused before anything is held.
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend(resolution=128)}), SECRET)
    with TestClient(app):
        http, uid = client_for(app, accounts, credits=30)
        models = {m["name"]: m for m in http.get("/v1/tools").json()["models"]}
        assert models["flux-kontext-dev"]["configured"] is True and models["flux-2-klein-4b"]["configured"] is False
        image = data_url(photo_bytes("PNG"))
        before = ledger_rows(engine, uid)
        r = http.post("/v1/tools/colorize", json={"input_image": image, "model": "flux-3-ultra"})
        assert r.status_code == 422 and r.json()["field"] == "model", r.text
        detail = r.json()["detail"]
        assert "'flux-3-ultra'" in detail and "black-forest-labs/flux-2-klein-4b" in detail and "edits" in detail
        r = http.post("/v1/tools/colorize", json={"input_image": image, "model": ["dev"]})
        assert r.status_code == 422 and r.json()["field"] == "model"
        r = http.post("/v1/tools/colorize", json={"input_image": image, "model": "flux-2-klein-4b"})
        assert r.status_code == 501 and r.json()["code"] == "tier_not_configured", r.text
        assert accounts.balance(uid).available == 30 and ledger_rows(engine, uid) == before
        assert http.get("/v1/predictions").json()["results"] == []


def test_a_model_that_only_generates_is_not_offered_and_is_a_422(engine: Engine) -> None:
    import dataclasses

    from kontext_studio.core.catalogue import ENTRIES, Catalogue, Task
    from kontext_studio.service.models import ModelCatalogue

    # A catalogue where klein 4B only makes pictures from text (no model of the shipped catalogue does).
    entries = [dataclasses.replace(e, tasks=frozenset({Task.GENERATE})) if e.key == "klein-4b" else e
               for e in ENTRIES]
    catalogue = Catalogue(entries)
    someone = UserRecord(id=10_000_000 + uuid.uuid4().int % 1000, email="x@example.com", name="x", is_admin=False,
                         created_at=datetime.now(UTC))
    submitted: list[Any] = []
    application = FastAPI()
    application.add_exception_handler(KontextError, kontext_error_handler)
    application.include_router(tools_router(
        storage=MemoryStorage(), sessions=make_session_factory(engine), settings_store=NoSettings(),
        user=lambda *a: someone, signer=UrlSigner(SECRET), submit=lambda *a: submitted.append(a) or "p1",
        get_job=lambda *a: None, envelope_for=lambda *a: {"id": "p1"},
        models=ModelCatalogue(Editor({"fake": FakeBackend()}), False, catalogue)))
    http = TestClient(application, headers={"Authorization": "Bearer k"})
    listing = http.get("/v1/tools").json()
    assert "flux-2-klein-4b" not in {m["name"] for m in listing["models"]}
    assert "flux-2-klein-4b" not in listing["ai"][0]["credits"] and "flux-2-klein-9b" in listing["ai"][0]["credits"]
    image = data_url(photo_bytes("PNG"))
    r = http.post("/v1/tools/colorize", json={"input_image": image, "model": "black-forest-labs/flux-2-klein-4b"})
    assert r.status_code == 422 and r.json()["field"] == "model", r.text
    assert "only generates from text" in r.json()["detail"] and "flux-2-klein-9b" in r.json()["detail"]
    assert submitted == []
    r = http.post("/v1/tools/colorize", json={"input_image": image, "model": "flux-2-klein-9b"})
    assert r.status_code == 201 and submitted[0][1] == "klein-9b"
