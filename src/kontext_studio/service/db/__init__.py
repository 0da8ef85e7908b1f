"""Persistence: typed models, engines and sessions for SQLite and PostgreSQL, and the migrations runner.

Typical use::

    engine = make_engine(settings.database_url)
    upgrade(engine)                      # numbered Alembic migrations to head
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        ...
"""

from kontext_studio.service.db.base import Base, UTCDateTime, new_id, utcnow
from kontext_studio.service.db.engine import make_engine, make_session_factory, normalize_url
from kontext_studio.service.db.migrate import current_revision, head_revision, upgrade
from kontext_studio.service.db.models import (
    IDEMPOTENCY_TTL,
    SETTLEMENT_KINDS,
    TERMINAL_JOB_STATUSES,
    TRAINING_TIER,
    WEBHOOK_EVENTS,
    ApiKey,
    Balance,
    File,
    Hold,
    IdempotencyKey,
    Job,
    JobStatus,
    LedgerEntry,
    LedgerKind,
    Settlement,
    User,
    WebhookDelivery,
    new_webhook_id,
)

__all__ = [
    "IDEMPOTENCY_TTL",
    "SETTLEMENT_KINDS",
    "TERMINAL_JOB_STATUSES",
    "TRAINING_TIER",
    "WEBHOOK_EVENTS",
    "ApiKey",
    "Balance",
    "Base",
    "File",
    "Hold",
    "IdempotencyKey",
    "Job",
    "JobStatus",
    "LedgerEntry",
    "LedgerKind",
    "Settlement",
    "UTCDateTime",
    "User",
    "WebhookDelivery",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "new_id",
    "new_webhook_id",
    "normalize_url",
    "upgrade",
    "utcnow",
]
