"""Pro and Max through the service's API on SQLite and PostgreSQL: against the fake BFL server, and end to end
against a real Kontext Studio server (tiny model) through its BFL-compatible routes."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, select

from kontext_studio.analysis.fake import FakeFidelity
from kontext_studio.core.backends.bfl_api import BflApiBackend, BflConfig
from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import Job, LedgerEntry, make_engine, make_session_factory, upgrade
from kontext_studio.service.inputs import data_url
from kontext_studio.service.storage.fake import MemoryStorage
from kontext_studio.testing.fake_bfl import FakeBflServer, Scenario
from tests.service.test_api import SECRET, png, user_client

KEY = "fake-bfl-key"


def hosted_editor(url: str, key: str = KEY, **config: Any) -> Editor:
    """pro and max on the BFL backend; the local tiers on the named fake backend (for comparison)."""
    cfg = {"poll_initial": 0.02, "poll_max": 0.1, **config}
    return Editor({"bfl_api": BflApiBackend(BflConfig(api_key=key, base_url=url, **cfg)),
                   "fake": FakeBackend(resolution=256)}, fidelity=FakeFidelity())


@pytest.fixture()
def fake_bfl() -> Iterator[FakeBflServer]:
    with FakeBflServer(KEY, Scenario(pending_polls=2)) as server:
        yield server


@pytest.fixture()
def hosted(engine: Engine, fake_bfl: FakeBflServer) -> Iterator[Any]:
    app = create_app(engine, MemoryStorage(), hosted_editor(fake_bfl.url), SECRET)
    with TestClient(app):
        yield app


def ledger(engine: Engine, job_id: str) -> list[tuple[str, int]]:
    with make_session_factory(engine)() as s:
        rows = s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job_id)).all()
        return sorted((e.kind, e.amount) for e in rows if e.amount > 0)


def stored_job(engine: Engine, job_id: str) -> Job:
    with make_session_factory(engine)() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_pro_through_the_api_like_a_local_edit(hosted: Any, fake_bfl: FakeBflServer, accounts: SqlAccounts,
                                               engine: Engine) -> None:
    client, uid = user_client(hosted, accounts)
    body = {"prompt": "put her on a beach", "input_image": data_url(png(120, 90)), "seed": 4,
            "aspect_ratio": "16:9", "safety_tolerance": 3}
    pro = client.post("/v1/predictions", {"model": "flux-kontext-pro", "input": body}).json()
    local = client.post("/v1/predictions", {"model": "flux-kontext-dev", "input": body}).json()
    done = client.wait(pro["id"])
    assert done["status"] == "succeeded" and done["cost"] == 8, done
    out = Image.open(io.BytesIO(client.http.get(done["output"]).content))
    assert out.size[0] * 9 == out.size[1] * 16  # exactly the ratio asked for, whatever size BFL returned
    recipe = done["result"]["recipe"]
    assert recipe["tier"] == "pro" and recipe["hosted"]["task_id"] == "fake-task-1" and recipe["hosted"]["cost"] == 4.0
    assert done["result"]["identity"]["similarity"] is not None and "kontext:recipe" in out.info
    assert len(fake_bfl.submissions) == 1 and fake_bfl.submissions[0]["safety_tolerance"] == 3
    job = stored_job(engine, pro["id"])
    assert job.bfl_task_id == "fake-task-1" and job.bfl_polling_url and "fake-task-1" in job.bfl_polling_url
    assert ledger(engine, pro["id"]) == [("capture", 8), ("hold", 8)]
    dev = client.wait(local["id"])
    assert dev["status"] == "succeeded" and set(dev["result"]) == set(done["result"])
    assert set(dev["result"]["recipe"]) == set(recipe) and set(dev["result"]["identity"]) == set(
        done["result"]["identity"])
    assert accounts.balance(uid).available == 100 - 8 - 5


def test_max_through_the_api_sends_every_reference(hosted: Any, fake_bfl: FakeBflServer,
                                                   accounts: SqlAccounts) -> None:
    client, _ = user_client(hosted, accounts)
    images = {f: data_url(png(80 + 8 * i, 64, seed=i)) for i, f in
              enumerate(("input_image", "input_image_2", "input_image_3", "input_image_4"))}
    r = client.post("/v1/models/black-forest-labs/flux-kontext-max/predictions",
                    {"input": {"prompt": "she wears the jacket", **images,
                               "roles": ["subject", "garment", "background", "style"]}})
    done = client.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["cost"] == 15
    body = fake_bfl.submissions[0]
    assert all(body.get(f) for f in images) and body["prompt"].startswith("Image 1 is the subject; image 2 is")


def test_pro_with_two_references_is_422_and_holds_nothing(hosted: Any, fake_bfl: FakeBflServer,
                                                          accounts: SqlAccounts) -> None:
    client, uid = user_client(hosted, accounts)
    r = client.post("/v1/predictions", {"model": "flux-kontext-pro", "input": {
        "prompt": "x", "input_image": data_url(png()), "input_image_2": data_url(png(seed=2))}})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "tier pro takes at most 1" in r.json()["detail"]
    assert accounts.balance(uid).held == 0 and fake_bfl.submit_attempts == []


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
def test_moderation_is_reported_and_releases_the_credits(engine: Engine, accounts: SqlAccounts, status: str) -> None:
    with FakeBflServer(KEY, Scenario(final_status=status)) as fake:
        app = create_app(engine, MemoryStorage(), hosted_editor(fake.url), SECRET)
        with TestClient(app):
            client, uid = user_client(app, accounts)
            pid = client.post("/v1/predictions", {"model": "flux-kontext-pro", "input": {
                "prompt": "x", "input_image": data_url(png())}}).json()["id"]
            done = client.wait(pid)
            shim = client.get(f"/v1/get_result?id={pid}").json()
    assert done["status"] == "failed" and "moderation" in done["error"] and "fake-task-1" in done["error"]
    assert done["error_code"] == status.lower().replace(" ", "_")
    assert shim["status"] == status  # BFL clients of our shim see BFL's own moderation status
    assert accounts.balance(uid).available == 100 and accounts.balance(uid).held == 0
    assert ledger(engine, pid) == [("hold", 8), ("release", 8)]


def test_a_restarted_worker_resumes_the_same_bfl_task(engine: Engine, accounts: SqlAccounts) -> None:
    scenario = Scenario(pending_polls=10**6)
    with FakeBflServer(KEY, scenario) as fake:
        app = create_app(engine, MemoryStorage(), hosted_editor(fake.url), SECRET, start_worker=False)
        client, uid = user_client(app, accounts)
        pid = client.post("/v1/predictions", {"model": "flux-kontext-pro", "input": {
            "prompt": "x", "input_image": data_url(png()), "seed": 1}}).json()["id"]
        jobs, worker = app.state.services.jobs, app.state.worker
        first = jobs.claim_job(pid, "worker-a")
        assert first is not None
        running = threading.Thread(target=worker.run, args=(first,))
        running.start()
        end = time.monotonic() + 20
        while not stored_job(engine, pid).bfl_task_id and time.monotonic() < end:
            time.sleep(0.02)
        assert stored_job(engine, pid).bfl_task_id == "fake-task-1"
        # The machine restarts: its jobs go back to the queue and the old attempt is fenced off.
        assert pid in jobs.requeue_interrupted()
        running.join(20)
        assert not running.is_alive()
        scenario.pending_polls = 0  # meanwhile BFL finished the task
        second = jobs.claim_job(pid, "worker-b")
        assert second is not None and second.attempt == 2
        worker.run(second)
        done = client.wait(pid)
    assert done["status"] == "succeeded", done
    assert len(fake.submit_attempts) == 1 and len(fake.submissions) == 1  # resumed, never re-sent
    assert done["result"]["recipe"]["hosted"]["resumed"] is True
    assert ledger(engine, pid) == [("capture", 8), ("hold", 8)]
    assert accounts.balance(uid).available == 92


def test_a_slow_hosted_job_does_not_hold_up_local_jobs(engine: Engine, accounts: SqlAccounts) -> None:
    scenario = Scenario(pending_polls=10**6)
    with FakeBflServer(KEY, scenario) as fake:
        app = create_app(engine, MemoryStorage(), hosted_editor(fake.url), SECRET)
        with TestClient(app):
            client, _ = user_client(app, accounts)
            image = data_url(png())
            pro = client.post("/v1/predictions", {"model": "flux-kontext-pro", "input": {
                "prompt": "x", "input_image": image}}).json()["id"]
            end = time.monotonic() + 20
            while not fake.polls and time.monotonic() < end:
                time.sleep(0.02)
            dev = client.post("/v1/predictions", {"model": "flux-kontext-dev", "input": {
                "prompt": "x", "input_image": image, "num_inference_steps": 2}}).json()["id"]
            assert client.wait(dev)["status"] == "succeeded"
            assert client.get(f"/v1/predictions/{pro}").json()["status"] == "processing"  # still waiting on BFL
            scenario.pending_polls = 0
            assert client.wait(pro)["status"] == "succeeded"
    assert len(fake.submissions) == 1


def test_cancel_stops_waiting_on_bfl_and_releases_the_credits(engine: Engine, accounts: SqlAccounts) -> None:
    with FakeBflServer(KEY, Scenario(pending_polls=10**6)) as fake:
        app = create_app(engine, MemoryStorage(), hosted_editor(fake.url), SECRET)
        with TestClient(app):
            client, uid = user_client(app, accounts)
            pid = client.post("/v1/predictions", {"model": "flux-kontext-max", "input": {
                "prompt": "x", "input_image": data_url(png())}}).json()["id"]
            end = time.monotonic() + 20
            while len(fake.polls) < 2 and time.monotonic() < end:
                time.sleep(0.02)
            assert client.post(f"/v1/predictions/{pid}/cancel").json()["status"] == "canceled"
            time.sleep(0.5)  # the next poll notices the cancel
            polls = len(fake.polls)
            time.sleep(0.5)
            assert len(fake.polls) <= polls + 1  # no longer polling
    assert accounts.balance(uid).available == 100 and accounts.balance(uid).held == 0
    assert len(fake.submissions) == 1 and ledger(engine, pid) == [("hold", 15), ("release", 15)]


def test_models_say_whether_pro_and_max_are_configured(engine: Engine, tmp_path: Path) -> None:
    from kontext_studio.bootstrap import build_editor
    from kontext_studio.settings import Settings

    for key, configured in ((None, False), ("k", True)):
        editor = build_editor(Settings(home=tmp_path, bfl_api_key=key))
        app = create_app(engine, MemoryStorage(), editor, SECRET, start_worker=False)
        models = {m["tier"]: m for m in TestClient(app).get("/v1/models").json()["results"]}
        for tier in ("pro", "max"):
            assert models[tier]["configured"] is configured and models[tier]["backend"] == "bfl_api"
            assert (models[tier]["missing"] is None) is configured
            if not configured:
                assert "BFL_API_KEY" in models[tier]["missing"]


# -- end to end: our backend against our own BFL-compatible routes -------------------------------------------
class Upstream:
    """A real Kontext Studio server (uvicorn, its own SQLite database) whose tiers run on the tiny model."""

    def __init__(self, tmp: Path, backend: Any):
        import uvicorn

        url = f"sqlite:///{tmp / 'upstream.db'}"
        upgrade(url)
        self.engine = make_engine(url)
        self.accounts = SqlAccounts(make_session_factory(self.engine))
        # The upstream runs every tier, pro included, on its local model.
        editor = Editor({"diffusers": backend, "bfl_api": backend})
        self.app = create_app(self.engine, MemoryStorage(), editor, SECRET)
        user = self.accounts.create_user("upstream@example.com", "Upstream client")
        self.accounts.grant(user.id, 100)
        self.user_id = user.id
        self.key, _ = self.accounts.create_api_key(user.id)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        self.engine.dispose()


def test_end_to_end_against_a_kontext_studio_server_on_the_tiny_model(engine: Engine, accounts: SqlAccounts,
                                                                      backend: Any, tmp_path: Path) -> None:
    with Upstream(tmp_path, backend) as upstream:
        app = create_app(engine, MemoryStorage(), hosted_editor(upstream.url, upstream.key, poll_max=0.2), SECRET)
        with TestClient(app):
            client, uid = user_client(app, accounts)
            pid = client.post("/v1/predictions", {"model": "flux-kontext-pro", "input": {
                "prompt": "put her on a beach", "input_image": data_url(png(150, 100)), "seed": 6}}).json()["id"]
            done = client.wait(pid, timeout=120)
            assert done["status"] == "succeeded", done
            out = Image.open(io.BytesIO(client.http.get(done["output"]).content))
        task_id = done["result"]["recipe"]["hosted"]["task_id"]
        upstream_job = stored_job(upstream.engine, task_id)  # the task id is the upstream's prediction id
    assert out.size == (150, 100)
    assert upstream_job.status == "succeeded" and upstream_job.tier == "pro" and upstream_job.attempt == 1
    assert upstream_job.output["recipe"]["model"]["random_weights"] is True  # the tiny model made it
    assert upstream_job.output["seed"] == 6 and upstream_job.input["aspect_ratio"] == "3:2"
    assert upstream.accounts.balance(upstream.user_id).available == 92  # the upstream charged once
    assert accounts.balance(uid).available == 92 and done["result"]["identity"] is not None
