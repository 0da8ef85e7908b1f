"""Engines and sessions that behave the same on SQLite (file or memory) and PostgreSQL.

SQLite needs help to act like a real transactional database:

* the ``sqlite3`` driver's own transaction handling is switched off and SQLAlchemy emits ``BEGIN
  IMMEDIATE`` itself, so SAVEPOINTs work, DDL is transactional and a transaction takes the write lock up
  front: concurrent writers queue on the busy timeout instead of failing with "database is locked" when a
  read-then-write transaction finds its snapshot stale. The price is that transactions are serialised, so
  keep them short; long read-only work can opt out with
  ``engine.execution_options(sqlite_begin="DEFERRED")`` (WAL readers then run alongside the writer);
* every connection turns foreign keys on; file databases also use WAL (readers never block the writer) and
  a busy timeout so a writer waits for the lock instead of failing;
* an in-memory database lives on one shared connection (``StaticPool``) so every session sees the same
  data. That connection is not safe for concurrent use: in-memory databases are for single-threaded tests.

PostgreSQL URLs may be written ``postgresql://`` or ``postgres://``; both use the psycopg 3 driver.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from kontext_studio.core.errors import InvalidRequest

DEFAULT_BUSY_TIMEOUT_MS = 10_000
_SQLITE_BEGIN_MODES = ("IMMEDIATE", "DEFERRED", "EXCLUSIVE")


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pick this project's driver for PostgreSQL.

    Args:
        url: e.g. ``sqlite:///data/kontext.db``, ``sqlite://`` (memory) or ``postgresql://user@host/db``.

    Returns:
        The parsed URL; ``postgresql``/``postgres`` without a driver become ``postgresql+psycopg``.

    Raises:
        InvalidRequest: the URL cannot be parsed or names a backend other than SQLite or PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise InvalidRequest(f"database URL could not be parsed: {exc}", field="database_url") from None
    if parsed.get_backend_name() == "postgres":  # Heroku-style alias
        parsed = parsed.set(drivername=parsed.drivername.replace("postgres", "postgresql", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidRequest(
            f"database URL must be sqlite:// or postgresql://, got {parsed.render_as_string(hide_password=True)!r}",
            field="database_url",
        )
    return parsed


def is_sqlite_memory(url: URL) -> bool:
    """Whether ``url`` names an in-memory SQLite database."""
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def make_engine(url: str | URL, *, echo: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """Create an engine configured for this service's transaction semantics.

    Args:
        url: the database URL (see :func:`normalize_url`).
        echo: log every statement (debugging).
        busy_timeout_ms: SQLite only: how long a writer waits for the database lock before failing.

    Returns:
        The engine. Nothing is connected until first use.

    Raises:
        InvalidRequest: the URL is malformed or names an unsupported backend.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, echo=echo, pool_pre_ping=True)

    memory = is_sqlite_memory(parsed)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(parsed, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy issues BEGIN itself (see below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode not in _SQLITE_BEGIN_MODES:
            raise InvalidRequest(f"sqlite_begin must be one of {_SQLITE_BEGIN_MODES}, got {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory for ``engine``; objects stay readable after commit (``expire_on_commit=False``).

    Args:
        engine: from :func:`make_engine`.

    Returns:
        The factory; use ``with factory.begin() as session:`` for one transaction.
    """
    return sessionmaker(engine, expire_on_commit=False)
