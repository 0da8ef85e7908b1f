"""Server settings an administrator enters in the studio (created by migration 0008). Secret values are
stored encrypted under a key derived from the server secret and never sent back to a browser."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from kontext_studio.service.db.base import Base, UTCDateTime, utcnow


class ServerSetting(Base):
    """One named setting; ``value`` is AES-GCM ciphertext (nonce first)."""

    __tablename__ = "server_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
