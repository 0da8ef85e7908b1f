"""Studio sign-in sessions, kept server-side (migration 0009) so they can be ended: signing out revokes
one, and revoking the API key a session was opened with ends it too."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from kontext_studio.service.db.base import Base, UTCDateTime, utcnow


class StudioSessionRow(Base):
    """One studio sign-in: its id is the random nonce its signed cookie carries."""

    __tablename__ = "studio_sessions"
    __table_args__ = (Index("ix_studio_sessions_api_key_id", "api_key_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))  # None: single-user sign-in
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
