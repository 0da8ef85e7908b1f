"""Web studio tables: edit sessions (chains of edits with branches) and series (one reference set, many
scenes); created by migration 0003.

A session is a tree of predictions: each turn edits the output of its parent turn, so undo is "continue
from the parent" and a second child of the same parent is a branch. Drift is measured once per turn,
against the picture the session started from, and stored with the turn.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kontext_studio.service.db.base import Base, UTCDateTime, new_id, utcnow


class EditSession(Base):
    """A chain of edits that started from one picture (``origin_key``: its stored upload)."""

    __tablename__ = "edit_sessions"
    __table_args__ = (Index("ix_edit_sessions_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    origin_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EditTurn(Base):
    """One prediction in a session; ``parent_job_id`` is the turn whose output it edited (None: the first)."""

    __tablename__ = "edit_turns"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("edit_sessions.id"), index=True)
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    turn: Mapped[int] = mapped_column(Integer)
    drift: Mapped[float | None] = mapped_column(Float)
    drift_method: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Series(Base):
    """A series: the same references and seed rendered once per scene; ``job_ids`` in scene order."""

    __tablename__ = "series"
    __table_args__ = (Index("ix_series_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    job_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
