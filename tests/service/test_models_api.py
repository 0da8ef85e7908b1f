"""The service names every catalogue model: the ``model`` field, BFL-style routes, ``/v1/models``, the job's
recorded model, alternating Kontext and klein jobs on real tiny pipelines, and bad input refused with nothing
held."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, select

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.core.warm import WarmPool
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import Job, make_session_factory
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, png, user_client


@pytest.fixture()
def fake_service(engine: Engine) -> Iterator[Any]:
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(resolution=128)}), SECRET)
    with TestClient(app):
        yield app


@pytest.fixture(scope="module")
def two_models(tiny_family_dirs: dict[str, Path]) -> Editor:
    """Kontext [dev] and klein 4B on their tiny pipelines, with room for one warm model at a time."""
    from kontext_studio.bootstrap import build_editor
    from kontext_studio.settings import Settings

    editor = build_editor(Settings(model=str(tiny_family_dirs["kontext"]), allow_download=False,
                                   weights=(("klein-4b", str(tiny_family_dirs["klein"])),), warm_models=1))
    editor.fidelity = None
    return editor


def test_models_lists_the_catalogue_with_state_and_licence(fake_service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(fake_service, accounts)
    rows = {r["name"]: r for r in client.get("/v1/models").json()["results"]}
    assert {"flux-kontext-dev", "flux-2-klein-4b", "flux-2-dev", "qwen-image-edit-2511", "flux-2-max"} <= set(rows)
    klein = rows["flux-2-klein-4b"]
    assert klein["full_name"] == "black-forest-labs/flux-2-klein-4b" and klein["commercial_use"] is True
    assert klein["tasks"] == ["edit", "generate"] and klein["max_references"] == 4 and klein["credits"] == 2
    assert rows["qwen-image-edit-2511"]["owner"] == "qwen" and rows["qwen-image-edit-2511"]["tasks"] == ["edit"]
    assert rows["flux-kontext-dev"]["credits"] == 5 and rows["flux-kontext-dev"]["tier"] == "dev"
    # Local models list the profiles a prediction may ask for, with each family's step cache; hosted ones none.
    assert rows["flux-kontext-fast"]["acceleration"]["default"] == "fast"
    assert rows["flux-kontext-dev"]["acceleration"]["profiles"]["fast"]["step_cache"] == "magcache"
    assert rows["flux-2-dev"]["acceleration"]["profiles"]["fast"]["step_cache"] == "taylorseer"
    assert rows["qwen-image-edit-2511"]["acceleration"]["profiles"]["lossless"]["compile"] is True
    assert klein["local"] is True and klein["acceleration"]["default"] == "stock"
    assert rows["flux-2-max"]["local"] is False and rows["flux-2-max"]["acceleration"] is None


def test_model_field_and_bfl_route_run_klein_and_record_it(fake_service: Any, accounts: SqlAccounts,
                                                           engine: Engine) -> None:
    client, _ = user_client(fake_service, accounts)
    r = client.post("/v1/predictions", {"model": "black-forest-labs/flux-2-klein-4b",
                                        "input": {"prompt": "put her on a beach", "input_image": data_url(png()),
                                                  "input_image_2": data_url(png(seed=2)), "seed": 1}})
    assert r.status_code == 201, r.text
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["model"] == "flux-2-klein-4b" and done["cost"] == 2
    r = client.post("/v1/flux-2-klein-4b", {"prompt": "a red fox in the snow", "width": 320, "height": 192})
    assert r.status_code == 200, r.text
    fox = client.wait(r.json()["id"])
    assert fox["status"] == "succeeded"
    with make_session_factory(engine)() as s:
        job = s.scalar(select(Job).where(Job.id == r.json()["id"]))
        assert job is not None and (job.model, job.tier) == ("flux-2-klein-4b", "klein-4b")


@pytest.mark.parametrize(
    ("model", "extra", "field", "message"),
    [
        ("flux-3-ultra", {}, "model", "model must be one of black-forest-labs/flux-kontext-dev"),
        ("qwen/qwen-image-edit-2511", {"input_image": None}, "input_image", "the reference image is required"),
        ("flux-2-klein-4b", {f"input_image_{i}": "x" for i in range(2, 6)}, "input_image",
         "takes at most 4 reference images, got 5"),
        ("flux-kontext-pro", {"input_image_2": "x"}, "input_image", "tier pro takes at most 1 reference image"),
    ],
)
def test_bad_model_input_is_refused_with_nothing_held(fake_service: Any, accounts: SqlAccounts, model: str,
                                                      extra: dict[str, Any], field: str, message: str) -> None:
    client, _ = user_client(fake_service, accounts, credits=50)
    body = {"prompt": "make it snowy", "input_image": data_url(png()), **extra}
    r = client.post("/v1/predictions", {"model": model, "input": {k: v for k, v in body.items() if v is not None}})
    assert r.status_code == 422, r.text
    assert message in r.text and field in r.text
    assert client.get("/v1/account").json()["credits"] == {"available": 50, "held": 0}


def test_kontext_and_klein_jobs_alternate_on_one_server(two_models: Editor, engine: Engine,
                                                        accounts: SqlAccounts) -> None:
    app = create_app(engine, MemoryStorage(), two_models, SECRET)
    with TestClient(app):
        client, _ = user_client(app, accounts)
        outputs = []
        for model in ("flux-kontext-dev", "flux-2-klein-4b", "flux-kontext-dev", "flux-2-klein-4b"):
            r = client.post("/v1/predictions", {"model": model, "input": {
                "prompt": "put her on a beach", "input_image": data_url(png()), "seed": 4,
                "num_inference_steps": 2, "pixel_lock": "off"}})
            assert r.status_code == 201, r.text
            done = client.wait(r.json()["id"], timeout=120)
            assert done["status"] == "succeeded", done
            pixels = Image.open(io.BytesIO(client.http.get(done["output"]).content)).convert("RGB")
            outputs.append(np.asarray(pixels))
    same = np.array_equal
    assert same(outputs[0], outputs[2]) and same(outputs[1], outputs[3]) and not same(outputs[0], outputs[1])
    assert isinstance(two_models.warm, WarmPool) and two_models.warm.evictions >= 3  # one warm at a time


def test_an_ai_tool_runs_on_tiny_klein_like_an_edit(two_models: Editor, engine: Engine,
                                                    accounts: SqlAccounts) -> None:
    # The real FLUX.2 [klein] pipeline (tiny, random weights): the tool's instruction is the prompt it ran, at
    # klein's price, recorded under klein's name, with a picture the size of the photo.
    app = create_app(engine, MemoryStorage(), two_models, SECRET)
    with TestClient(app):
        client, _ = user_client(app, accounts, credits=10)
        r = client.post("/v1/tools/colorize", {"input_image": data_url(png(256, 192)), "seed": 5,
                                               "model": "black-forest-labs/flux-2-klein-4b",
                                               "num_inference_steps": 2, "params": {"hint": "a red coat"}})
        assert r.status_code == 201, r.text
        assert r.json()["instruction"].startswith("Colorize this black-and-white photograph")
        done = client.wait(r.json()["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert done["model"] == "flux-2-klein-4b" and done["cost"] == 2 and "a red coat" in done["input"]["prompt"]
        picture = Image.open(io.BytesIO(client.http.get(done["output"]).content))
        assert picture.size[0] * 192 == picture.size[1] * 256  # the photo's shape
        assert client.get("/v1/account").json()["credits"] == {"available": 8, "held": 0}


def test_celery_jobs_go_to_their_model_queue_and_workers_take_only_theirs(engine: Engine, db_url: str,
                                                                          accounts: SqlAccounts) -> None:
    from types import SimpleNamespace

    from kontext_studio.service.jobs.dispatch_celery import CeleryDispatcher, worker_argv

    # The dispatcher and the worker's arguments read only these of the Celery app (a second real app in one
    # process would re-register the shared task).
    sent: list[tuple[str, str]] = []
    app: Any = SimpleNamespace(conf=SimpleNamespace(kontext_queue="kontext", kontext_database_url=db_url),
                               send_task=lambda name, args, queue: sent.append((args[0], queue)))
    service = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(resolution=128)}), SECRET,
                         dispatcher=CeleryDispatcher(app))
    client, _ = user_client(service, accounts)
    ids = {}
    for model in ("flux-kontext-dev", "flux-2-klein-4b", "flux-kontext-fast"):
        r = client.post("/v1/predictions", {"model": model, "input": {"prompt": "make it snowy",
                                                                      "input_image": data_url(png())}})
        assert r.status_code == 201, r.text
        ids[model] = r.json()["id"]
    assert dict(sent) == {ids["flux-kontext-dev"]: "kontext", ids["flux-2-klein-4b"]: "kontext.klein-4b",
                          ids["flux-kontext-fast"]: "kontext"}
    assert "--queues=kontext.klein-4b,kontext.qwen-edit" in worker_argv(app, models=["klein-4b", "qwen-edit"])
    assert "--queues=kontext" in worker_argv(app)  # no --models: Kontext and the hosted models, as before
