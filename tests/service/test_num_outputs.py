"""num_outputs on SQLite and PostgreSQL: 1-4 pictures per prediction, each charged (hold, capture and refund
scale with it) and stored; the envelope lists the outputs; bad values and hosted models are refused before
anything is held."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, png, user_client
from tests.service.test_studio_api import upload


@pytest.fixture()
def service(engine: Engine, accounts: SqlAccounts) -> Iterator[Any]:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend(step_seconds=0.002, resolution=128)}),
                     SECRET, rate_limit=0, max_active_per_user=50)
    with TestClient(app):
        yield app


def test_three_outputs_are_three_pictures_charged_three_times(service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(service, accounts)
    f = upload(client, png())
    r = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "put it on a beach", "input_image": f, "seed": 11, "num_outputs": 3}})
    assert r.status_code == 201, r.text
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["cost"] == 12 and isinstance(done["output"], list) and len(done["output"]) == 3
    pictures = [client.http.get(u).content for u in done["output"]]
    assert len(set(pictures)) == 3 and all(Image.open(io.BytesIO(p)).size for p in pictures)
    assert [o["seed"] for o in done["result"]["outputs"]] == [11, 12, 13]
    time.sleep(0.1)
    assert client.get("/v1/account").json()["credits"] == {"available": 88, "held": 0}
    ledger = [e for e in client.get("/v1/account/ledger").json()["results"] if e["job_id"] == done["id"]]
    assert sorted((e["kind"], e["account"], e["amount"]) for e in ledger) == [
        ("capture", "held", -12), ("hold", "available", -12), ("hold", "held", 12)]

    single = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "put it on a beach", "input_image": f}}).json()
    assert isinstance(client.wait(single["id"])["output"], str)  # one output stays a plain URL


@pytest.mark.parametrize(("value", "words"), [(5, "from 1 to 4"), (0, "from 1 to 4"), ("2", "from 1 to 4"),
                                              (True, "from 1 to 4")])
def test_bad_num_outputs_is_refused_before_anything_is_held(service: Any, accounts: SqlAccounts, value: Any,
                                                            words: str) -> None:
    client, _ = user_client(service, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-fast", "input": {
        "prompt": "x", "input_image": upload(client, png()), "num_outputs": value}})
    assert r.status_code == 422 and r.json()["field"] == "num_outputs" and words in r.json()["detail"]
    assert client.get("/v1/account").json()["credits"] == {"available": 100, "held": 0}
