"""Celery dispatch end to end: real Redis, real PostgreSQL, real worker processes running the fake backend.

Each test namespaces its broker keys with a random prefix (deleted afterwards) and works in its own
throwaway PostgreSQL database, so runs on a shared Redis/PostgreSQL never see each other. Redis is found at
``KONTEXT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); when it or PostgreSQL is unreachable the
tests are skipped, or fail when ``CI`` is set. Worker processes are stopped in fixture teardown, also when
a test fails, and exit on their own if the test process dies.
"""

from __future__ import annotations

import importlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks.chaos_soak import EDITOR_FACTORY, WorkerPool, delete_keys, png
from sqlalchemy import Engine, func, select

from kontext_studio.core.registry import TIERS
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.db import (
    TERMINAL_JOB_STATUSES,
    Job,
    LedgerEntry,
    make_engine,
    make_session_factory,
    upgrade,
)
from kontext_studio.service.inputs import data_url, normalize_input
from kontext_studio.service.jobs.dispatch_base import Dispatcher
from kontext_studio.service.jobs.dispatch_celery import (
    DEFAULT_VISIBILITY_TIMEOUT,
    TASK_NAME,
    CeleryDispatcher,
    make_celery,
)
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.reaper import Reaper, reap_once
from kontext_studio.service.storage.storage_local import LocalStorage
from tests.conftest import require_redis
from tests.service.conftest import DatabaseFactory


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis, or a skip (a failure when ``CI`` is set) naming why it is unusable."""
    return require_redis("the Celery tests")


@pytest.fixture()
def pg_url(databases: DatabaseFactory) -> str:
    """A fresh migrated PostgreSQL database for this test (skips or fails like the other PostgreSQL tests)."""
    url = databases.create("postgresql")
    upgrade(url)
    return url


class Cluster:
    """The parts of a multi-machine deployment, in one test: store, dispatcher, worker processes, storage."""

    def __init__(self, database_url: str, redis_url: str, root: Path, **options: Any):
        self.prefix = f"ks-test-{uuid.uuid4().hex[:10]}:"
        self.redis_url = redis_url
        self.storage_dir = root / "storage"
        self.storage = LocalStorage(self.storage_dir)
        self.config: dict[str, Any] = {
            "broker_url": redis_url, "database_url": database_url, "storage_root": str(self.storage_dir),
            "editor_factory": EDITOR_FACTORY, "key_prefix": self.prefix, "worker_enable_remote_control": False,
            **options}
        self.engine: Engine = make_engine(database_url)
        self.sessions = make_session_factory(self.engine)
        self.accounts = SqlAccounts(self.sessions)
        self.store = JobStore(self.sessions, self.accounts)
        self.app = make_celery(**self.config)
        self.dispatcher = CeleryDispatcher(self.app)
        self.pool = WorkerPool(self.config, root / "logs")

    def user(self, credits: int) -> int:
        uid = self.accounts.create_user(f"celery-{uuid.uuid4().hex}@example.com", "C").id
        self.accounts.grant(uid, credits)
        return uid

    def submit(self, user_id: int, tier: str = "dev", prompt: str = "make it snowy", steps: int = 4) -> str:
        body = normalize_input({"prompt": prompt, "input_image": data_url(png()), "num_inference_steps": steps},
                               tier, self.storage)
        job_id, created = self.store.submit(user_id, tier, f"flux-kontext-{tier}", body, TIERS[tier].price_credits)
        assert created
        return job_id

    def wait(self, ids: list[str], timeout: float) -> dict[str, Job]:
        end = time.monotonic() + timeout
        while True:
            jobs = {i: self.store.get(None, i) for i in ids}
            if all(j.status in TERMINAL_JOB_STATUSES for j in jobs.values()):
                return jobs
            if time.monotonic() > end:
                open_ = {i: (j.status, j.attempt) for i, j in jobs.items() if j.status not in TERMINAL_JOB_STATUSES}
                raise AssertionError(f"jobs not finished after {timeout} s: {open_}\n{self.pool.log_tails()}")
            time.sleep(0.1)

    def output_files(self, job_id: str) -> list[str]:
        return sorted(p.name for p in (self.storage_dir / "outputs" / job_id).glob("*") if not p.name.startswith("."))

    def settlement_legs(self, job_id: str) -> Counter[str]:
        with self.sessions() as s:
            return Counter(s.scalars(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)))

    def close(self) -> None:
        self.pool.stop()
        delete_keys(self.redis_url, self.prefix)
        self.engine.dispose()


@pytest.fixture()
def cluster(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        made.append(Cluster(pg_url, redis_url, tmp_path / f"c{len(made)}", **options))
        return made[-1]

    yield make
    for c in made:
        c.close()
    leftovers = [w.pid for c in made for w in c.pool.workers if w.proc.poll() is None]
    assert leftovers == [], f"worker processes left running: {leftovers}"


# -- configuration ---------------------------------------------------------------------------------------
def test_make_celery_configures_at_least_once_delivery(tmp_path: Path) -> None:
    app = make_celery("redis://127.0.0.1:6379/0", "sqlite:///x.db", storage_root=tmp_path, lease_seconds=3,
                      key_prefix="p:")
    conf = app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.broker_transport_options == {"visibility_timeout": DEFAULT_VISIBILITY_TIMEOUT,
                                             "global_keyprefix": "p:"}
    assert DEFAULT_VISIBILITY_TIMEOUT >= 2 * 3600
    assert conf.kontext_lease_seconds == 3 and TASK_NAME in app.tasks
    task = app.tasks[TASK_NAME]
    assert task.acks_late and task.reject_on_worker_lost
    assert isinstance(CeleryDispatcher(app), Dispatcher)
    assert make_celery("redis://x", "sqlite://", storage_root=tmp_path,
                       visibility_timeout=5 * 3600).conf.broker_transport_options["visibility_timeout"] == 5 * 3600
    with pytest.raises(ValueError, match="storage"):
        make_celery("redis://x", "sqlite://")
    with pytest.raises(ValueError, match="lease_seconds"):
        make_celery("redis://x", "sqlite://", storage_root=tmp_path, lease_seconds=0)


def test_celery_cli_entry_reads_its_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("KONTEXT_DATABASE_URL", "postgresql://db/kontext")
    monkeypatch.setenv("KONTEXT_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("KONTEXT_LEASE_SECONDS", "7")
    monkeypatch.setenv("KONTEXT_VISIBILITY_TIMEOUT", "9000")
    monkeypatch.setenv("KONTEXT_BROKER_PREFIX", "k:")
    name = "kontext_studio.service.jobs.celery_app"  # reads the environment at import (for `celery -A`)
    entry = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    conf = entry.app.conf
    assert conf.kontext_database_url == "postgresql://db/kontext" and conf.kontext_lease_seconds == 7
    assert conf.broker_transport_options == {"visibility_timeout": 9000, "global_keyprefix": "k:"}
    with pytest.raises(RuntimeError, match="KONTEXT_DATABASE_URL"):
        entry.config_from_env({"KONTEXT_STORAGE_DIR": "/x"})


# -- real workers ----------------------------------------------------------------------------------------
def test_two_workers_run_every_job_exactly_once_and_capture_once(cluster: Callable[..., Cluster]) -> None:
    c = cluster(editor_options={"step_min": 0.01, "step_max": 0.03})
    users = [c.user(200), c.user(200)]
    tiers = list(TIERS)
    ids = [c.submit(users[i % 2], tiers[i % len(tiers)], prompt=f"edit {i}") for i in range(12)]
    assert c.dispatcher.queued() == 0
    for job_id in ids:
        c.dispatcher.enqueue(job_id)
        c.dispatcher.enqueue(job_id)  # a duplicate delivery must not run the job again
    assert c.dispatcher.queued() == 24  # the messages wait in Redis until a worker comes
    c.pool.start(2, modes=["cli", "python"])  # one through `celery -A ...celery_app`, one through make_celery
    jobs = c.wait(ids, timeout=60)

    assert Counter(j.status for j in jobs.values()) == {"succeeded": 12}
    assert {j.attempt for j in jobs.values()} == {1}  # claimed once each, the duplicates were no-ops
    assert len({j.worker_id.split("/")[0] for j in jobs.values() if j.worker_id}) == 2  # both workers worked
    for job_id, job in jobs.items():
        assert (job.output or {}).get("files") == [f"outputs/{job_id}/1.png"]
        assert c.output_files(job_id) == ["1.png"]
        assert c.settlement_legs(job_id) == {"hold": 2, "capture": 2}
    for u in users:
        spent = sum(j.cost for j in jobs.values() if j.user_id == u)
        bal = c.accounts.balance(u)
        assert (bal.available, bal.held) == (200 - spent, 0)
    assert c.accounts.audit() == []

    # A message lost between commit and publish (or in a Redis restart): the reaper sends it again.
    lost = [c.submit(users[0], "fast", prompt="lost message")]
    report = reap_once(c.store, c.dispatcher, stale_after=0.0)
    assert lost[0] in report.resent
    assert c.wait(lost, timeout=30)[lost[0]].status == "succeeded"


def test_the_reaper_counts_messages_waiting_in_every_model_queue(cluster: Callable[..., Cluster]) -> None:
    """A klein job waits in its model's queue: the reaper counts it there and sends no duplicate."""
    c = cluster()
    uid = c.user(50)
    body = normalize_input({"prompt": "as an oil painting", "input_image": data_url(png()),
                            "num_inference_steps": 2}, "klein-4b", c.storage)
    job_id, _ = c.store.submit(uid, "klein-4b", "flux-2-klein-4b", body, 2)
    c.dispatcher.enqueue(job_id)
    assert c.dispatcher.queued() == 1  # in kontext.klein-4b, which no base-queue worker takes
    report = reap_once(c.store, c.dispatcher, stale_after=0.0)
    assert report.missing == 0 and report.resent == []
    assert c.dispatcher.queued() == 1


def test_a_job_whose_worker_is_killed_is_reaped_and_finished_by_another(cluster: Callable[..., Cluster]) -> None:
    c = cluster(editor_options={"step_min": 0.1, "step_max": 0.1}, lease_seconds=2)
    c.pool.start(2)
    uid = c.user(50)
    job_id = c.submit(uid, "dev", steps=40)  # about 4 s
    c.dispatcher.enqueue(job_id)
    end = time.monotonic() + 30
    while (job := c.store.get(None, job_id)).progress < 0.1:
        assert time.monotonic() < end, c.pool.log_tails()
        time.sleep(0.05)
    owner = str(job.worker_id).split("/")[0]
    victim = next(w for w in c.pool.alive() if w.name == owner)
    c.pool.kill(victim)  # kill -9 mid-job: the message stays unacknowledged, the lease runs out

    reaper = Reaper(c.store, c.dispatcher, interval=0.3, stale_after=3600)
    reaper.start()
    try:
        done = c.wait([job_id], timeout=40)[job_id]
    finally:
        reaper.stop()
    assert job_id in reaper.total.reaped
    assert done.status == "succeeded" and done.attempt == 2 and str(done.worker_id).split("/")[0] != owner
    assert (done.output or {}).get("files") == [f"outputs/{job_id}/2.png"]
    assert c.settlement_legs(job_id) == {"hold": 2, "capture": 2}
    bal = c.accounts.balance(uid)
    assert (bal.available, bal.held) == (50 - TIERS["dev"].price_credits, 0)
    with c.sessions() as s:
        assert s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))) == 0


def test_http_predictions_run_on_celery_workers(cluster: Callable[..., Cluster]) -> None:
    """The API with a Celery dispatcher: no in-process worker; a real worker process runs the job."""
    from fastapi.testclient import TestClient

    from kontext_studio.core.backends.fake import FakeBackend
    from kontext_studio.core.engine import Editor
    from kontext_studio.service.app import create_app

    c = cluster(editor_options={"step_min": 0.01, "step_max": 0.02})
    uid = c.user(100)
    key, _ = c.accounts.create_api_key(uid)
    # The API's editor only answers which tiers exist; it never runs a job when a dispatcher is given.
    app = create_app(c.engine, c.storage, Editor({"fake": FakeBackend()}), b"celery-test-secret-0123456789",
                     dispatcher=c.dispatcher)
    with TestClient(app) as http:
        headers = {"Authorization": f"Bearer {key}"}
        r = http.post("/v1/predictions", headers=headers, json={"model": "flux-kontext-dev", "input": {
            "prompt": "make it snowy", "input_image": data_url(png()), "num_inference_steps": 3}})
        assert r.status_code == 201, r.text
        assert c.dispatcher.queued() == 1  # published to Redis, nothing ran in the API process
        c.pool.start(1)
        job = c.wait([r.json()["id"]], timeout=60)[r.json()["id"]]
        assert job.status == "succeeded"
        done = http.get(f"/v1/predictions/{job.id}", headers=headers).json()
        assert done["output"] and http.get(done["output"]).status_code == 200
    assert c.accounts.balance(uid).available == 95
