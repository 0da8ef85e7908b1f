"""The prediction API's ``lock_mask``: a painted mask reaches the engine's pixel lock, and a mask that cannot
be used is refused at submit with nothing held (SQLite and PostgreSQL, fake backend)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from sqlalchemy import Engine

from kontext_studio.analysis.fidelity import AnalysisFidelity
from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, png, user_client


@pytest.fixture()
def service(engine: Engine, accounts: SqlAccounts) -> Iterator[tuple[Any, FakeBackend]]:
    backend = FakeBackend(step_seconds=0.01, resolution=128)
    # The real analysis toolkit, so the result reports what the pixel lock did with the mask.
    app = create_app(engine, MemoryStorage(), Editor({"fake": backend}, fidelity=AnalysisFidelity()), SECRET)
    with TestClient(app):  # runs the startup hook: the in-process worker
        yield app, backend


def mask_png(w: int = 96, h: int = 64) -> bytes:
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).rectangle((w // 4, h // 4, w // 2, h // 2), fill=255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_masked_edit_runs_with_the_mask_lock(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, uid = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-dev",
                                        "input": {"prompt": "make the box red", "input_image": data_url(png()),
                                                  "lock_mask": data_url(mask_png()), "num_inference_steps": 2}})
    assert r.status_code == 201, r.text
    # Stored as a key, like input_image: the worker rebuilds the request (mask included) from it.
    assert r.json()["input"]["lock_mask"].startswith("uploads/")
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["recipe"]["pixel_lock"] == "mask"
    assert done["result"]["pixel_lock"]["mode"] == "mask"
    assert accounts.balance(uid).held == 0


def test_uploaded_mask_file_is_accepted(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    up = client.http.post("/v1/files", content=mask_png(), headers={**client.headers, "Content-Type": "image/png"})
    assert up.status_code == 201, up.text
    r = client.post("/v1/predictions", {"model": "flux-kontext-dev",
                                        "input": {"prompt": "x", "input_image": data_url(png()),
                                                  "lock_mask": up.json()["id"], "num_inference_steps": 2}})
    assert r.status_code == 201, r.text
    assert client.wait(r.json()["id"])["result"]["recipe"]["pixel_lock"] == "mask"


def test_wrong_size_mask_is_a_422_naming_both_sizes(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, uid = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-dev",
                                        "input": {"prompt": "x", "input_image": data_url(png(96, 64)),
                                                  "lock_mask": data_url(mask_png(48, 32))}})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == "lock_mask"
    assert "48×32" in problem["detail"] and "96×64" in problem["detail"] and "white" in problem["detail"]
    assert client.get("/v1/predictions").json()["results"] == []
    assert accounts.balance(uid).held == 0 and accounts.balance(uid).available == 100


def test_not_an_image_mask_is_a_422(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    client, uid = user_client(app, accounts)
    r = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                  "lock_mask": "not base64!"}})
    assert r.status_code == 422 and r.json()["field"] == "lock_mask"
    assert accounts.balance(uid).held == 0


def test_another_users_file_as_mask_is_refused(service: Any, accounts: SqlAccounts) -> None:
    app, _ = service
    owner, _ = user_client(app, accounts)
    other, uid = user_client(app, accounts)
    up = owner.http.post("/v1/files", content=mask_png(), headers={**owner.headers, "Content-Type": "image/png"})
    assert up.status_code == 201, up.text
    r = other.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                 "lock_mask": up.json()["id"]}})
    assert r.status_code == 422 and r.json()["field"] == "lock_mask", r.text
    assert "no uploaded file" in r.json()["detail"]
    assert other.get("/v1/predictions").json()["results"] == []
    assert accounts.balance(uid).held == 0
