"""The persistence layer: migrations match the models on SQLite and PostgreSQL, and both backends behave
the same (foreign keys, CHECK constraints, UTC timestamps, JSON, savepoints)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.accounts import UserRecord
from kontext_studio.service.db import (
    Balance,
    Base,
    Job,
    JobStatus,
    WebhookDelivery,
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    normalize_url,
    upgrade,
)
from kontext_studio.service.db.migrate import downgrade

TABLES = {
    "users",
    "studio_sessions",
    "api_keys",
    "jobs",
    "ledger_entries",
    "balances",
    "holds",
    "settlements",
    "idempotency_keys",
    "files",
    "webhook_deliveries",
    # the studio's edit sessions and series (0003), LoRA training (0004)
    "edit_sessions",
    "edit_turns",
    "series",
    "training_runs",
    "user_loras",
    # the library's favourites and share links (0007), settings entered in the studio (0008)
    "library_marks",
    "share_links",
    "server_settings",
}


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


# --- migrations -----------------------------------------------------------------------------------------


def test_migrations_produce_exactly_the_models(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert current_revision(engine) is None
        upgrade(empty_db_url)  # by URL: its own engine, made and disposed
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        assert schema_diff(engine) == []

        upgrade(engine)  # already at head: nothing to do
        downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(engine)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_schema_comparison_is_not_vacuous(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        upgrade(engine)
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_jobs_status_created_at"))
        diff = schema_diff(engine)
        assert [d[0] for d in diff] == ["add_index"]
        assert diff[0][1].name == "ix_jobs_status_created_at"
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_migrated_through_its_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini, no migrations folder here: the package finds its own
    engine = make_engine("sqlite://")
    upgrade(engine)
    assert schema_diff(engine) == []
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        session.execute(
            text("INSERT INTO users (email, name, is_admin, created_at) VALUES ('a@b.c', '', 0, '2026-01-01')")
        )
    with sessions() as session:  # a second session sees the same in-memory database
        assert session.scalar(text("SELECT count(*) FROM users")) == 1
    assert list(tmp_path.iterdir()) == []
    engine.dispose()


# --- engine configuration ---------------------------------------------------------------------------------


def test_sqlite_file_engine_uses_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}", busy_timeout_ms=1234)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
    memory = make_engine("sqlite:///:memory:")
    with memory.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
    memory.dispose()


def test_sqlite_savepoints_roll_back_only_the_inner_work() -> None:
    engine = make_engine("sqlite://")
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
        session.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(RuntimeError), session.begin_nested():
            session.execute(text("INSERT INTO t VALUES (2)"))
            raise RuntimeError("inner failure")
    with sessions() as session:
        assert session.scalars(text("SELECT x FROM t")).all() == [1]
    engine.dispose()


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
        ("sqlite://", "sqlite"),
    ],
)
def test_normalize_url_picks_psycopg(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "not a url"])
def test_normalize_url_refuses_other_backends(bad: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        normalize_url(bad)
    assert err.value.field == "database_url"


# --- behaviour shared by both backends ----------------------------------------------------------------------


def test_foreign_keys_are_enforced(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(Job(user_id=987654321, model="m", tier="dev", input={}))


def test_check_constraints_are_enforced(
    sessions: sessionmaker[Session], new_user: Callable[..., UserRecord], new_job: Callable[..., str]
) -> None:
    user = new_user()
    job_id = new_job(user.id)
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="exploded"))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.execute(update(Balance).where(Balance.user_id == user.id).values(available=Balance.available - 1))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(WebhookDelivery(job_id=job_id, event="finished"))


def test_timestamps_are_utc_aware_on_every_backend(
    sessions: sessionmaker[Session], new_user: Callable[..., UserRecord], new_job: Callable[..., str]
) -> None:
    job_id = new_job(new_user().id)
    local = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(deadline_at=local))
    with sessions() as session:
        stored = session.scalar(select(Job.deadline_at).where(Job.id == job_id))
        assert stored == local and stored is not None
        assert stored.tzinfo == UTC and stored.hour == 10
        # Comparisons happen in UTC too, so lease and deadline queries work on SQLite's text timestamps.
        earlier = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
        assert session.scalar(select(Job.id).where(Job.id == job_id, Job.deadline_at > earlier)) == job_id
    with pytest.raises(StatementError, match="naive datetime"), sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(deadline_at=datetime(2026, 1, 1)))


def test_job_defaults_json_and_ids(
    sessions: sessionmaker[Session], new_user: Callable[..., UserRecord], new_job: Callable[..., str]
) -> None:
    job_id = new_job(new_user().id)
    assert len(job_id) == 26 and job_id.isalnum() and job_id == job_id.lower()
    with sessions.begin() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.attempt, job.progress, job.logs, job.output) == (JobStatus.STARTING, 0, 0.0, "", None)
        assert job.created_at.tzinfo == UTC
        assert job.input == {"prompt": "make it snowy"}
        job.webhook_events_filter = ["start", "completed"]
    with sessions() as session:
        # output=None is SQL NULL (not JSON 'null'), so "no output yet" queries work.
        assert session.scalar(select(Job.id).where(Job.id == job_id, Job.output.is_(None))) == job_id
        assert session.scalar(select(Job.webhook_events_filter).where(Job.id == job_id)) == ["start", "completed"]


def test_webhook_delivery_ids_are_stable_and_unique(
    sessions: sessionmaker[Session], new_user: Callable[..., UserRecord], new_job: Callable[..., str]
) -> None:
    job_id = new_job(new_user().id)
    with sessions.begin() as session:
        first = WebhookDelivery(job_id=job_id, event="completed")
        session.add(first)
        session.flush()
        webhook_id = first.webhook_id
        assert webhook_id.startswith("msg_")
        first.attempts += 1  # a retry keeps the id
    with sessions() as session:
        assert session.get_one(WebhookDelivery, first.id).webhook_id == webhook_id
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(WebhookDelivery(job_id=job_id, event="completed", webhook_id=webhook_id))
