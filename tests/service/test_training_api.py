"""LoRA training as a service job, over HTTP on SQLite and PostgreSQL with the tiny model: submit a dataset
zip, follow progress and validation images, cancel, and use the resulting LoRA in a prediction."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine

from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from kontext_studio.training.synthetic import make_pairs
from tests.service.test_api import SECRET, png, user_client
from tests.training.test_dataset import broken_dataset

CONFIG = {"steps": 20, "rank": 4, "learning_rate": 3e-3, "resolution": 128, "validate_every": 10,
          "validation_pairs": 1, "validation_steps": 2, "checkpoint_every": 0, "max_sequence_length": 32}


def zip_folder(folder: Path, top: str = "pairs") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, f"{top}/{p.relative_to(folder)}")
    return buf.getvalue()


def submit(client: Any, data: bytes, config: dict[str, Any] | None = None, **form: str) -> Any:
    return client.http.post("/v1/trainings", headers=client.headers,
                            files={"dataset": ("pairs.zip", data, "application/zip")},
                            data={"name": "inverted", "config": json.dumps(config or CONFIG), "min_side": "64",
                                  **form})


def wait_run(client: Any, run_id: str, timeout: float = 120) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = client.get(f"/v1/trainings/{run_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"training {run_id} did not finish: {body}")


@pytest.fixture()
def app_with_runner(engine: Engine, backend: Any) -> Iterator[Any]:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET)
    with TestClient(app):  # starts the in-process worker and the training runner
        yield app


@pytest.fixture()
def app_by_hand(engine: Engine, backend: Any) -> Any:
    return create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET, start_worker=False)


def test_a_run_trains_reports_progress_and_its_lora_edits(app_with_runner: Any, accounts: SqlAccounts,
                                                          tmp_path: Path) -> None:
    client, _ = user_client(app_with_runner, accounts)
    data = zip_folder(make_pairs(tmp_path / "ds", 4, rule="invert", size=(128, 128)))
    res = submit(client, data)
    assert res.status_code == 201, res.text
    run = res.json()
    assert run["status"] in ("queued", "running") and run["pairs"] == 4 and run["total_steps"] == 20
    done = wait_run(client, run["id"])
    assert done["status"] == "succeeded", done
    assert (done["step"], done["progress"]) == (20, 1.0) and done["loss"] > 0
    assert [v["step"] for v in done["validations"]] == [0, 10, 20]
    sheet = client.http.get(done["validations"][-1]["image"])
    assert sheet.status_code == 200 and Image.open(io.BytesIO(sheet.content)).format == "PNG"
    lora = done["lora"]
    assert lora["rank"] == 4 and lora["alpha"] == 4.0
    assert [lo["id"] for lo in client.get("/v1/loras").json()["results"]] == [lora["id"]]

    pid = client.post("/v1/predictions", {"model": "flux-kontext-dev", "input": {
        "prompt": "invert the colours", "input_image": data_url(png(128, 128)), "seed": 5,
        "num_inference_steps": 2, "loras": [{"id": lora["id"], "weight": 0.8}]}}).json()["id"]
    edit = client.wait(pid, timeout=120)
    assert edit["status"] == "succeeded", edit
    used = edit["result"]["recipe"]["loras"]
    assert used[0]["weight"] == 0.8 and used[0]["alpha"] == 4.0 and used[0]["format"] == "diffusers"

    other, _ = user_client(app_with_runner, accounts)
    assert other.get(f"/v1/trainings/{run['id']}").status_code == 404
    assert other.get("/v1/loras").json()["results"] == []
    stolen = other.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png(128, 128)),
                                                      "loras": [lora["id"]]}})
    assert stolen.status_code == 422 and stolen.json()["field"] == "loras"


def test_a_broken_dataset_is_refused_with_its_report(app_by_hand: Any, accounts: SqlAccounts, tmp_path: Path) -> None:
    client, _ = user_client(app_by_hand, accounts)
    res = submit(client, zip_folder(broken_dataset(tmp_path / "ds")))
    assert res.status_code == 422 and res.headers["content-type"] == "application/problem+json"
    body = res.json()
    assert body["code"] == "invalid_dataset" and body["field"] == "dataset"
    for expected in ("10 pair(s) found, 4 usable, 6 error(s)", "missing_partner (2)", "orphan.png",
                     "aspect_mismatch (1)", "wide (source 96x96, target 160x96)", "skip_bad_pairs"):
        assert expected in body["detail"]
    assert client.get("/v1/trainings").json()["results"] == []


@pytest.mark.parametrize(("member", "why"), [("../evil.png", "outside"), ("pairs/run.sh", "only pictures")])
def test_unsafe_zip_members_are_refused(app_by_hand: Any, accounts: SqlAccounts, member: str, why: str) -> None:
    client, _ = user_client(app_by_hand, accounts)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(member, b"x")
    res = submit(client, buf.getvalue())
    assert res.status_code == 422 and why in res.json()["detail"]
    res = submit(client, b"not a zip")
    assert res.status_code == 422 and "not a zip" in res.json()["detail"]


def test_bad_hyper_parameters_are_422_naming_the_field(app_by_hand: Any, accounts: SqlAccounts,
                                                       tmp_path: Path) -> None:
    client, _ = user_client(app_by_hand, accounts)
    data = zip_folder(make_pairs(tmp_path / "ds", 2, size=(128, 128)))
    res = submit(client, data, CONFIG | {"rank": 0})
    assert res.status_code == 422 and res.json()["field"] == "rank"
    res = submit(client, data, CONFIG | {"lerning_rate": 1})
    assert res.status_code == 422 and "lerning_rate" in res.json()["detail"]


def test_cancel_a_queued_and_a_running_run(app_by_hand: Any, accounts: SqlAccounts, tmp_path: Path) -> None:
    client, _ = user_client(app_by_hand, accounts)
    data = zip_folder(make_pairs(tmp_path / "ds", 3, size=(128, 128)))
    queued = submit(client, data).json()
    assert client.post(f"/v1/trainings/{queued['id']}/cancel").json()["status"] == "canceled"

    long_run = submit(client, data, CONFIG | {"steps": 100000, "validate_every": 0}).json()
    runner = app_by_hand.state.training_runner
    worker = threading.Thread(target=runner.run_once)
    worker.start()
    end = time.monotonic() + 60
    while client.get(f"/v1/trainings/{long_run['id']}").json()["step"] < 3 and time.monotonic() < end:
        time.sleep(0.1)
    running = client.post(f"/v1/trainings/{long_run['id']}/cancel").json()
    assert running["status"] == "running" and running["eta_seconds"] > 0
    worker.join(60)
    done = client.get(f"/v1/trainings/{long_run['id']}").json()
    assert done["status"] == "canceled" and 3 <= done["step"] < 100000 and done["lora"] is None


def test_predictions_refuse_an_unknown_lora(app_by_hand: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(app_by_hand, accounts)
    res = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                    "loras": [{"id": "abcdefghijklmnop", "weight": 1}]}})
    assert res.status_code == 422 and res.json()["field"] == "loras" and "GET /v1/loras" in res.json()["detail"]
    res = client.post("/v1/predictions", {"input": {"prompt": "x", "input_image": data_url(png()),
                                                    "loras": "not-a-list"}})
    assert res.status_code == 422 and res.json()["field"] == "loras"


def test_a_run_interrupted_by_a_server_stop_resumes_where_it_stopped(app_by_hand: Any, accounts: SqlAccounts,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = user_client(app_by_hand, accounts)
    data = zip_folder(make_pairs(tmp_path / "ds", 3, size=(128, 128)))
    run = submit(client, data, CONFIG | {"steps": 40, "validate_every": 0}).json()
    runner = app_by_hand.state.training_runner
    report_progress = runner.store.progress

    def progress_then_stop(run_id: str, **values: Any) -> None:
        # Stop as soon as the run has reported progress, whatever the machine's speed (the tiny model can
        # finish 40 steps between two polls on a fast machine).
        report_progress(run_id, **values)
        runner._stop.set()  # what stopping the server does to a run in progress

    monkeypatch.setattr(runner.store, "progress", progress_then_stop)
    worker = threading.Thread(target=runner.run_once)
    worker.start()
    worker.join(60)
    stopped = client.get(f"/v1/trainings/{run['id']}").json()
    assert stopped["status"] == "running" and stopped["step"] < 40  # left for the next start

    monkeypatch.setattr(runner.store, "progress", report_progress)
    runner._stop.clear()
    assert runner.store.requeue_interrupted() >= 1  # the next start
    assert runner.run_once()
    done = client.get(f"/v1/trainings/{run['id']}").json()
    assert done["status"] == "succeeded" and done["step"] == 40
    steps = [int(line.split(",")[0]) for line in
             (runner.work_dir / run["id"] / "out" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 41))  # continued from the checkpoint written at the stop, nothing redone


def test_a_server_with_celery_workers_refuses_training_instead_of_queueing_it(engine: Engine,
                                                                              accounts: SqlAccounts,
                                                                              tmp_path: Path) -> None:
    from tests.service.test_fencing import RecordingDispatcher

    app = create_app(engine, MemoryStorage(), Editor({}), SECRET, start_worker=False,
                     dispatcher=RecordingDispatcher())
    client, _ = user_client(app, accounts)
    res = submit(client, zip_folder(make_pairs(tmp_path / "ds", 4, size=(64, 64))))
    assert res.status_code == 503 and res.json()["code"] == "training_unavailable"
    assert "kontext train-lora run" in res.json()["detail"]
    assert client.get("/v1/trainings").json()["results"] == []
