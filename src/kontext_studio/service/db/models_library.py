"""Library tables: what the owner marked on a prediction (favourite, removed from the library) and share
links (a public, revocable URL for one result); created by migration 0007."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from kontext_studio.service.db.base import Base, UTCDateTime, new_id, utcnow


class LibraryMark(Base):
    """The owner's marks on one prediction; a prediction without a row is an unmarked library item."""

    __tablename__ = "library_marks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    favourite: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ShareLink(Base):
    """A public link to one result. The URL's token is the id plus an HMAC of it under the server secret, so
    the table alone (a backup, a leak) does not give the links away; ``revoked_at`` ends it."""

    __tablename__ = "share_links"
    __table_args__ = (Index("ix_share_links_job_id", "job_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    show_prompt: Mapped[bool] = mapped_column(Boolean, default=False)
    show_model: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
