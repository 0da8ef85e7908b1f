"""Alembic environment, configured in code by ``kontext_studio.service.db.migrate``.

The caller puts a SQLAlchemy ``Engine`` or ``Connection`` in ``config.attributes["connection"]``; no URL
or ini file is read here. On SQLite, migrations use batch mode (table rebuilds) with foreign keys switched
off for the run and checked afterwards, as the SQLite documentation prescribes for schema changes.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine, text

from kontext_studio.service.db import models  # noqa: F401  (registers every table on Base.metadata)
from kontext_studio.service.db.base import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite and not connection.in_transaction():
        # PRAGMA foreign_keys is ignored inside a transaction, so set it on the raw connection first.
        connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                problems = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
                if problems:
                    raise RuntimeError(f"migration left rows violating foreign keys: {problems[:5]}")
    finally:
        if sqlite and not connection.in_transaction():
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def run_migrations_online() -> None:
    target = context.config.attributes.get("connection")
    if isinstance(target, Connection):
        _run(target)
    elif isinstance(target, Engine):
        with target.connect() as connection:
            _run(connection)
            connection.commit()
    else:
        raise RuntimeError(
            "no database given: run migrations through kontext_studio.service.db.migrate.upgrade(url_or_engine)"
        )


def _offline() -> bool | None:
    """Alembic's offline flag, or None when this file is imported outside an Alembic command."""
    try:
        return context.is_offline_mode()
    except NameError:  # the proxy is only populated while an Alembic command runs this file
        return None


_mode = _offline()
if _mode:  # pragma: no cover - offline SQL generation is not supported
    raise RuntimeError("offline (--sql) migrations are not supported; give a database to migrate")
if _mode is not None:  # importing this module elsewhere (docs, import walkers) does nothing
    run_migrations_online()
