"""Database fixtures: every database-facing test runs on SQLite and on PostgreSQL.

PostgreSQL is found at ``KONTEXT_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/
postgres``, a maintenance database on a server where we may CREATE DATABASE). Each test session works in
throwaway databases named ``ks_test_<random>`` that are dropped at the end, so parallel runs never clash.
If the server is unreachable the PostgreSQL cases are skipped, or fail when ``CI`` is set.

Fixtures:
    db_url: a migrated database, one per backend for the whole session (tests use fresh users and jobs).
    empty_db_url: a new, never-migrated database for each test.
    engine, sessions, accounts: built on ``db_url``.
    new_user, new_job: factories for rows owned by the current test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.registry import TIERS
from kontext_studio.service.accounts import SqlAccounts, UserRecord
from kontext_studio.service.db import Job, JobStatus, make_engine, make_session_factory, upgrade, utcnow

BACKENDS = ("sqlite", "postgresql")
PG_SERVER_URL = os.environ.get("KONTEXT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _server_error(url: URL) -> str | None:
    engine = create_engine(url, connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the PostgreSQL server's maintenance database (for CREATE/DROP DATABASE)."""
    url = make_url(PG_SERVER_URL)
    error = _server_error(url)
    if error is not None:
        message = (
            f"PostgreSQL is not reachable at {url.render_as_string(hide_password=True)} ({error}). "
            "Start it or point KONTEXT_TEST_POSTGRES_URL at a server where the user may CREATE DATABASE."
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message} CI is set, so the PostgreSQL tests must run.", pytrace=False)
        pytest.skip(message)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


class DatabaseFactory:
    """Creates empty databases of either backend and removes them at the end of the session."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self._request = request
        self._tmp = tmp
        self._pg_names: list[str] = []
        self._server: Engine | None = None

    def create(self, backend: str) -> str:
        name = f"ks_test_{uuid.uuid4().hex[:16]}"
        if backend == "sqlite":
            return f"sqlite:///{self._tmp / name}.db"
        if self._server is None:
            self._server = self._request.getfixturevalue("postgres_server")
        server = self._server
        with server.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self._pg_names.append(name)
        return server.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if self._server is None or not self._pg_names:
            return
        with self._server.connect() as connection:
            for name in self._pg_names:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._server.dispose()


@pytest.fixture(scope="session")
def databases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(request, tmp_path_factory.mktemp("db"))
    yield factory
    factory.drop_all()


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, databases: DatabaseFactory) -> str:
    """A new empty database (SQLite file or PostgreSQL database) for this test."""
    return databases.create(request.param)


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request: pytest.FixtureRequest, databases: DatabaseFactory) -> str:
    """A database migrated to head, shared by the session's tests on that backend."""
    url = databases.create(request.param)
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture()
def accounts(sessions: sessionmaker[Session]) -> SqlAccounts:
    return SqlAccounts(sessions)


@pytest.fixture()
def new_user(accounts: SqlAccounts) -> Callable[..., UserRecord]:
    """Make a user with a unique email (the database is shared within the session)."""

    def make(name: str = "Test User", **kwargs: bool) -> UserRecord:
        return accounts.create_user(f"user-{uuid.uuid4().hex}@example.com", name, **kwargs)

    return make


def insert_job(sessions: sessionmaker[Session], user_id: int, tier: str = "dev") -> str:
    """Insert a queued job for ``user_id`` the way the API will, and return its id."""
    with sessions.begin() as session:
        job = Job(
            user_id=user_id,
            model=f"flux-kontext-{tier}",
            tier=tier,
            input={"prompt": "make it snowy"},
            cost=TIERS[tier].price_credits,
        )
        session.add(job)
        session.flush()
        return job.id


def retire_jobs(sessions: sessionmaker[Session], job_ids: Iterable[str]) -> None:
    """Take a test's leftover jobs out of the queue: cancel what still waits or runs, releasing its hold.

    The session database is shared, so a job left ``starting`` (some ledger tests make jobs that never get
    a hold, which the API would not) would be claimed by a later test's worker or reaper.
    """
    ids = list(job_ids)
    if not ids:
        return
    with sessions.begin() as session:
        accounts = SqlAccounts(sessions).using(session)
        open_jobs = session.scalars(
            select(Job.id).where(Job.id.in_(ids), Job.status.in_([JobStatus.STARTING, JobStatus.PROCESSING]))
        ).all()
        for job_id in open_jobs:
            if accounts.get_hold(job_id) is not None:
                accounts.release(job_id)  # a no-op returning the first outcome if it was settled
        session.execute(
            update(Job)
            .where(Job.id.in_(open_jobs))
            .values(status=JobStatus.CANCELED, completed_at=utcnow(), worker_id=None, lease_expires_at=None)
        )


@pytest.fixture()
def new_job(sessions: sessionmaker[Session]) -> Iterator[Callable[..., str]]:
    """Make queued jobs; those still waiting or running when the test ends are canceled (holds released)."""
    made: list[str] = []

    def make(user_id: int, tier: str = "dev") -> str:
        made.append(insert_job(sessions, user_id, tier))
        return made[-1]

    yield make
    retire_jobs(sessions, made)
