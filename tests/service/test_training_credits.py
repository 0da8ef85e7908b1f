"""LoRA training runs pay in credits like predictions, on SQLite and PostgreSQL: the price is held at submit
(402 and nothing created when the balance is short), captured when the run succeeds and released when it
fails or is canceled, exactly once, with the ledger balanced throughout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db.models import Job, LedgerEntry
from kontext_studio.service.db.models_training import TrainingRun
from kontext_studio.service.storage.fake import MemoryStorage
from kontext_studio.training.synthetic import make_pairs
from tests.service.test_api import SECRET, user_client
from tests.service.test_training_api import submit, zip_folder

PRICE = 30


def make_app(engine: Engine, backend: Any, storage: MemoryStorage | None = None, **options: Any) -> Any:
    return create_app(engine, storage or MemoryStorage(), Editor({"diffusers": backend}), SECRET,
                      start_worker=False, training_price=PRICE, **options)


def dataset(tmp_path: Path) -> bytes:
    return zip_folder(make_pairs(tmp_path / "ds", 3, size=(128, 128)))


def ledger_of(sessions: sessionmaker[Session], run_id: str) -> list[tuple[str, str, int]]:
    with sessions() as s:
        rows = s.execute(select(LedgerEntry.kind, LedgerEntry.account, LedgerEntry.amount)
                         .where(LedgerEntry.job_id == run_id).order_by(LedgerEntry.id)).all()
        return [(k, a, n) for k, a, n in rows]


def test_a_run_holds_its_price_and_is_charged_once_when_it_succeeds(
        engine: Engine, backend: Any, accounts: SqlAccounts, sessions: sessionmaker[Session],
        tmp_path: Path) -> None:
    app = make_app(engine, backend)
    client, user_id = user_client(app, accounts, credits=100)
    res = submit(client, dataset(tmp_path))
    assert res.status_code == 201, res.text
    run_id = res.json()["id"]
    balance = accounts.balance(user_id)
    assert (balance.available, balance.held) == (100 - PRICE, PRICE)
    assert accounts.get_hold(run_id).amount == PRICE

    # The run's ledger anchor is no prediction: the worker's queue and the prediction API never see it.
    assert client.get("/v1/predictions").json()["results"] == []
    assert client.get(f"/v1/predictions/{run_id}").status_code == 404
    assert app.state.services.jobs.claim_job(run_id, "w1") is None

    assert app.state.training_runner.run_once()
    assert client.get(f"/v1/trainings/{run_id}").json()["status"] == "succeeded"
    balance = accounts.balance(user_id)
    assert (balance.available, balance.held) == (100 - PRICE, 0)
    assert accounts.get_settlement(run_id).kind == "capture"
    kinds = [k for k, _, _ in ledger_of(sessions, run_id)]
    assert kinds == ["hold", "hold", "capture", "capture"]
    app.state.training_runner.store.finish(run_id, "canceled")  # a late second ending charges nothing more
    assert accounts.get_settlement(run_id).kind == "capture"
    assert len(ledger_of(sessions, run_id)) == 4
    assert accounts.audit() == []


def test_a_canceled_queued_run_gets_its_credits_back_once(engine: Engine, backend: Any, accounts: SqlAccounts,
                                                          sessions: sessionmaker[Session], tmp_path: Path) -> None:
    app = make_app(engine, backend)
    client, user_id = user_client(app, accounts, credits=100)
    run_id = submit(client, dataset(tmp_path)).json()["id"]
    assert accounts.balance(user_id).available == 100 - PRICE
    assert client.post(f"/v1/trainings/{run_id}/cancel").json()["status"] == "canceled"
    assert client.post(f"/v1/trainings/{run_id}/cancel").json()["status"] == "canceled"
    balance = accounts.balance(user_id)
    assert (balance.available, balance.held) == (100, 0)
    assert accounts.get_settlement(run_id).kind == "release"
    assert [k for k, _, _ in ledger_of(sessions, run_id)] == ["hold", "hold", "release", "release"]
    assert not app.state.training_runner.run_once()  # nothing left to train
    assert accounts.audit() == []


def test_a_failed_run_gets_its_credits_back(engine: Engine, backend: Any, accounts: SqlAccounts,
                                            tmp_path: Path) -> None:
    storage = MemoryStorage()
    app = make_app(engine, backend, storage)
    client, user_id = user_client(app, accounts, credits=100)
    run_id = submit(client, dataset(tmp_path)).json()["id"]
    with app.state.training_runner.store.sessions() as s:
        key = s.scalar(select(TrainingRun.dataset_key).where(TrainingRun.id == run_id))
    storage.delete(key)  # the dataset is gone by the time the run starts: it cannot train
    assert app.state.training_runner.run_once()
    run = client.get(f"/v1/trainings/{run_id}").json()
    assert run["status"] == "failed" and run["error"]
    balance = accounts.balance(user_id)
    assert (balance.available, balance.held) == (100, 0)
    assert accounts.get_settlement(run_id).kind == "release"
    assert accounts.audit() == []


def test_a_short_balance_is_402_and_creates_nothing(engine: Engine, backend: Any, accounts: SqlAccounts,
                                                    sessions: sessionmaker[Session], tmp_path: Path) -> None:
    storage = MemoryStorage()
    app = make_app(engine, backend, storage)
    client, user_id = user_client(app, accounts, credits=PRICE - 1)
    res = submit(client, dataset(tmp_path))
    assert res.status_code == 402, res.text
    assert res.json()["code"] == "insufficient_credits"
    assert client.get("/v1/trainings").json()["results"] == []
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(TrainingRun).where(TrainingRun.user_id == user_id)) == 0
        assert s.scalar(select(func.count()).select_from(Job).where(Job.user_id == user_id)) == 0
    assert storage.blobs == {}  # refused before the dataset was stored
    balance = accounts.balance(user_id)
    assert (balance.available, balance.held) == (PRICE - 1, 0)
    assert accounts.audit() == []


def test_the_price_is_a_setting_and_free_installs_hold_nothing(engine: Engine, backend: Any,
                                                               accounts: SqlAccounts, tmp_path: Path) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET, start_worker=False,
                     training_price=7)
    client, user_id = user_client(app, accounts, credits=10)
    res = submit(client, dataset(tmp_path))
    assert res.status_code == 201, res.text
    assert accounts.balance(user_id).held == 7
    client.post(f"/v1/trainings/{res.json()['id']}/cancel")  # leave no queued run for other tests' runners
    assert accounts.balance(user_id).available == 10

    free = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET, start_worker=False,
                      free=True)
    client, user_id = user_client(free, accounts, credits=0)
    res = submit(client, dataset(tmp_path / "again"))
    assert res.status_code == 201, res.text
    balance = accounts.balance(user_id)
    assert (balance.available, balance.held) == (0, 0)
    assert accounts.get_hold(res.json()["id"]).amount == 0
    client.post(f"/v1/trainings/{res.json()['id']}/cancel")
    assert accounts.audit() == []
