"""Speed settings in a prediction's input on SQLite and PostgreSQL: ``acceleration`` (stock, lossless, fast) and
``draft`` reach the engine and the recipe; bad values and hosted models are refused at submit with nothing held;
one real run on the tiny model records the profile and half the steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, png, user_client
from tests.service.test_studio_api import upload


@pytest.fixture()
def service(engine: Engine, accounts: SqlAccounts) -> Iterator[tuple[Any, FakeBackend]]:
    backend = FakeBackend(step_seconds=0.002, resolution=128)
    app = create_app(engine, MemoryStorage(), Editor({"fake": backend}), SECRET, rate_limit=0,
                     max_active_per_user=50)
    with TestClient(app):
        yield app, backend


def test_lossless_draft_runs_with_half_the_steps_and_says_so(service: Any, accounts: SqlAccounts) -> None:
    app, backend = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "put it on a beach", "input_image": upload(client, png()), "seed": 4, "num_inference_steps": 8,
        "acceleration": "Lossless", "draft": True}})
    assert r.status_code == 201, r.text
    assert r.json()["input"]["acceleration"] == "lossless" and r.json()["input"]["draft"] is True
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded", done
    recipe = done["result"]["recipe"]
    assert recipe["draft"] is True and recipe["steps"] == 4
    assert backend.last_plan is not None and backend.last_plan.acceleration == "lossless"
    assert recipe["acceleration"]["profile"] == "lossless"
    assert done["cost"] == 4  # a draft costs what the model costs

    # Reuse: the recipe endpoint gives the settings back as they can be submitted again.
    again = client.get(f"/v1/predictions/{done['id']}/recipe").json()["input"]
    assert again["acceleration"] == "lossless" and again["draft"] is True


def test_no_speed_settings_keep_the_model_default(service: Any, accounts: SqlAccounts) -> None:
    app, backend = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "x", "input_image": upload(client, png()), "num_inference_steps": 6, "acceleration": None,
        "draft": False}})
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["result"]["recipe"]["steps"] == 6
    assert done["result"]["recipe"]["draft"] is False
    assert backend.last_plan is not None and backend.last_plan.acceleration == "fast"  # the fast tier's profile


def test_the_schema_lists_them(service: Any) -> None:
    app, _ = service
    schema = TestClient(app).get("/openapi.json").json()
    words = schema["components"]["schemas"]["PredictionIn"]["properties"]["input"]["description"]
    assert "acceleration (stock, lossless or fast" in words and "draft (true: half the steps" in words


def test_the_bfl_shim_takes_them_too(service: Any, accounts: SqlAccounts) -> None:
    app, backend = service
    client, _ = user_client(app, accounts)
    r = client.http.post("/v1/flux-kontext-dev", json={"prompt": "x", "input_image": data_url(png()),
                                                       "num_inference_steps": 6, "acceleration": "stock",
                                                       "draft": True},
                         headers={"x-key": client.headers["Authorization"][7:]})
    assert r.status_code == 200, r.text
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["result"]["recipe"]["steps"] == 3
    assert backend.last_plan is not None and backend.last_plan.acceleration == "stock"


@pytest.mark.parametrize(("field", "value", "words"), [
    ("acceleration", "warp", "one of stock, lossless, fast"),
    ("acceleration", 1, "one of stock, lossless, fast"),  # refused, never turned into "1"
    ("acceleration", ["fast"], "one of stock, lossless, fast"),
    ("acceleration", "", "one of stock, lossless, fast"),
    ("draft", "yes", "true or false"),
    ("draft", 1, "true or false"),
])
def test_bad_speed_settings_are_refused_before_anything_is_held(service: Any, accounts: SqlAccounts, field: str,
                                                                 value: Any, words: str) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "x", "input_image": upload(client, png()), field: value}})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["field"] == field and words in problem["detail"] and repr(value) in problem["detail"]
    assert client.get("/v1/account").json()["credits"] == {"available": 100, "held": 0}
    assert client.get("/v1/predictions").json()["results"] == []


@pytest.mark.parametrize("model", ["flux-kontext-pro", "flux-kontext-max", "black-forest-labs/flux-2-pro"])
@pytest.mark.parametrize(("field", "value"), [("acceleration", "lossless"), ("draft", True)])
def test_hosted_models_refuse_speed_settings(service: Any, accounts: SqlAccounts, model: str, field: str,
                                             value: Any) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": model, "input": {
        "prompt": "x", "input_image": upload(client, png()), field: value}})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field and "Black Forest Labs' servers" in problem["detail"]
    assert "local model" in problem["detail"] and "--" not in problem["detail"]
    assert client.get("/v1/account").json()["credits"] == {"available": 100, "held": 0}
    # Null and false are what a hosted model does anyway: accepted.
    ok = client.post("/v1/predictions", {"model": model, "input": {
        "prompt": "x", "input_image": upload(client, png()), "acceleration": None, "draft": False}})
    assert ok.status_code == 201, ok.text


def test_promoting_a_local_draft_to_a_hosted_model_drops_the_speed_settings(service: Any,
                                                                            accounts: SqlAccounts) -> None:
    app, _ = service
    client, _ = user_client(app, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "x", "input_image": upload(client, png()), "acceleration": "fast", "draft": True}})
    draft = client.wait(r.json()["id"])
    pro = client.post(f"/v1/predictions/{draft['id']}/promote", {"tier": "pro"})
    assert pro.status_code == 201, pro.text
    assert "acceleration" not in pro.json()["input"] and "draft" not in pro.json()["input"]
    dev = client.post(f"/v1/predictions/{draft['id']}/promote", {"tier": "dev"})  # local: kept
    assert dev.json()["input"]["acceleration"] == "fast" and dev.json()["input"]["draft"] is True
    for pid in (pro.json()["id"], dev.json()["id"]):
        assert client.wait(pid)["status"] == "succeeded"


def test_lossless_draft_on_the_tiny_model_is_in_the_recipe(engine: Engine, accounts: SqlAccounts,
                                                           backend: Any) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET)
    with TestClient(app):
        client, _ = user_client(app, accounts)
        r = client.post("/v1/predictions", {"model": "flux-kontext-dev", "input": {
            "prompt": "put her on a beach", "input_image": data_url(png(96, 64)), "seed": 5,
            "num_inference_steps": 4, "acceleration": "lossless", "draft": True}})
        assert r.status_code == 201, r.text
        done = client.wait(r.json()["id"], timeout=120)
        assert done["status"] == "succeeded", done
        recipe = done["result"]["recipe"]
        assert recipe["draft"] is True and recipe["steps"] == 2
        assert recipe["acceleration"]["profile"] == "lossless"
        time.sleep(0.05)
        assert client.get("/v1/account").json()["credits"] == {"available": 95, "held": 0}
