"""The library on SQL: items are the user's predictions, joined with the owner's marks and share links."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.accounts.accounts_common import NotFound
from kontext_studio.service.db import Job, JobStatus, utcnow
from kontext_studio.service.db.models_library import LibraryMark, ShareLink
from kontext_studio.service.db.models_studio import EditTurn, Series

KINDS = ("edit", "series", "session")
MAX_ITEMS = 200


@dataclass(frozen=True)
class ShareRecord:
    """A share link as its owner sees it (``token`` makes the public URL /s/<token>)."""

    id: str
    job_id: str
    token: str
    show_prompt: bool
    show_model: bool
    created_at: datetime


@dataclass(frozen=True)
class LibraryItem:
    """One prediction in the library, with what kind of work made it and the owner's marks."""

    job: Job
    kind: str
    favourite: bool
    share: ShareRecord | None


@dataclass(frozen=True)
class SharedView:
    """What a shared link shows to anyone: the output, and the prompt and model only when the owner chose."""

    output_key: str
    prompt: str | None
    model: str | None
    created_at: datetime


class SqlLibrary:
    """Library operations for one server.

    Args:
        sessions: the database session factory.
        secret: the server secret (share tokens are signed with a key derived from it).
    """

    def __init__(self, sessions: sessionmaker[Session], secret: bytes):
        self._sessions = sessions
        self._key = hmac.new(secret, b"kontext-studio share links", hashlib.sha256).digest()

    # -- tokens --------------------------------------------------------------------------------------
    def _token(self, link_id: str) -> str:
        sig = hmac.new(self._key, link_id.encode(), hashlib.sha256).digest()[:18]
        return f"{link_id}-{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"

    def _record(self, link: ShareLink) -> ShareRecord:
        return ShareRecord(link.id, link.job_id, self._token(link.id), link.show_prompt, link.show_model,
                           link.created_at)

    # -- reading -------------------------------------------------------------------------------------
    def items(self, user_id: int, *, q: str | None = None, favourites: bool = False, kind: str | None = None,
              limit: int = 100) -> list[LibraryItem]:
        """The user's library, newest first.

        Args:
            user_id: the owner.
            q: words that must all appear in the prompt.
            favourites: only favourites.
            kind: ``edit``, ``series`` or ``session`` (None: all).
            limit: at most this many items (1-200).

        Returns:
            Items without the ones the owner removed.

        Raises:
            InvalidRequest: an unknown kind.
        """
        if kind and kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}; got {kind!r}", field="kind")
        stmt = select(Job, LibraryMark).outerjoin(LibraryMark, LibraryMark.job_id == Job.id).where(
            Job.user_id == user_id, LibraryMark.removed_at.is_(None))
        if favourites:
            stmt = stmt.where(LibraryMark.favourite.is_(True))
        for word in (q or "").split()[:8]:
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(Job.input["prompt"].as_string().ilike(f"%{escaped}%", escape="\\"))
        stmt = stmt.order_by(Job.created_at.desc()).limit(max(1, min(MAX_ITEMS, limit)) * (3 if kind else 1))
        with self._sessions() as s:
            rows = s.execute(stmt).all()
            ids = [job.id for job, _ in rows]
            in_series = {jid for jobs in s.scalars(select(Series.job_ids).where(Series.user_id == user_id))
                         for jid in jobs or []}
            in_session = set(s.scalars(select(EditTurn.job_id).where(EditTurn.job_id.in_(ids))).all())
            links = {link.job_id: link for link in s.scalars(select(ShareLink).where(
                ShareLink.job_id.in_(ids), ShareLink.revoked_at.is_(None))).all()}
            out = []
            for job, mark in rows:
                what = "series" if job.id in in_series else "session" if job.id in in_session else "edit"
                if kind and what != kind:
                    continue
                link = links.get(job.id)
                s.expunge(job)
                share = self._record(link) if link is not None else None
                out.append(LibraryItem(job, what, bool(mark and mark.favourite), share))
            return out[:max(1, min(MAX_ITEMS, limit))]

    def _own_job(self, s: Session, user_id: int, job_id: str) -> Job:
        job = s.get(Job, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound(f"prediction {job_id} is not in your library")
        return job

    def _mark(self, s: Session, user_id: int, job_id: str) -> LibraryMark:
        mark = s.get(LibraryMark, job_id)
        if mark is None:
            mark = LibraryMark(job_id=job_id, user_id=user_id, favourite=False)
            s.add(mark)
        return mark

    # -- changing --------------------------------------------------------------------------------------
    def set_favourite(self, user_id: int, job_id: str, favourite: bool) -> None:
        """Mark or unmark a favourite.

        Raises:
            NotFound: not the user's prediction.
        """
        with self._sessions.begin() as s:
            self._own_job(s, user_id, job_id)
            mark = self._mark(s, user_id, job_id)
            mark.favourite, mark.updated_at = favourite, utcnow()

    def remove(self, user_id: int, job_id: str) -> None:
        """Take a prediction out of the library; its share links stop working. (The usage record and the
        credit ledger keep it: what was charged stays accounted for.)

        Raises:
            NotFound: not the user's prediction.
        """
        with self._sessions.begin() as s:
            self._own_job(s, user_id, job_id)
            mark = self._mark(s, user_id, job_id)
            mark.removed_at = mark.updated_at = utcnow()
            for link in s.scalars(select(ShareLink).where(ShareLink.job_id == job_id,
                                                          ShareLink.revoked_at.is_(None))).all():
                link.revoked_at = utcnow()

    def share(self, user_id: int, job_id: str, *, show_prompt: bool, show_model: bool) -> ShareRecord:
        """The share link of a result, made now or updated with what it shows.

        Raises:
            NotFound: not the user's prediction, or removed from the library.
            InvalidRequest: the prediction has no picture to share (it did not succeed).
        """
        with self._sessions.begin() as s:
            job = self._own_job(s, user_id, job_id)
            mark = s.get(LibraryMark, job_id)
            if mark is not None and mark.removed_at is not None:
                raise NotFound(f"prediction {job_id} was removed from your library")
            if job.status != JobStatus.SUCCEEDED or not (job.output or {}).get("files"):
                raise InvalidRequest(f"prediction {job_id} has no picture to share (it is {job.status}); share a "
                                     "finished result", field="prediction")
            link = s.scalars(select(ShareLink).where(ShareLink.job_id == job_id,
                                                     ShareLink.revoked_at.is_(None))).first()
            if link is None:
                link = ShareLink(user_id=user_id, job_id=job_id, created_at=utcnow())
                s.add(link)
            link.show_prompt, link.show_model = show_prompt, show_model
            s.flush()
            return self._record(link)

    def revoke(self, user_id: int, link_id: str) -> None:
        """End a share link (its URL answers 404 from now on).

        Raises:
            NotFound: no such link of this user.
        """
        with self._sessions.begin() as s:
            link = s.get(ShareLink, link_id)
            if link is None or link.user_id != user_id:
                raise NotFound(f"share link {link_id} is not one of yours")
            if link.revoked_at is None:
                link.revoked_at = utcnow()

    def shared(self, token: str) -> SharedView | None:
        """What a public share URL shows, or None when the token is forged, revoked or its result removed."""
        link_id, _, _ = token.partition("-")
        if not link_id or not hmac.compare_digest(token, self._token(link_id)):
            return None
        with self._sessions() as s:
            link = s.get(ShareLink, link_id)
            if link is None or link.revoked_at is not None:
                return None
            job = s.get(Job, link.job_id)
            files = (job.output or {}).get("files") if job is not None else None
            if job is None or not files:
                return None
            return SharedView(files[0], job.input.get("prompt") if link.show_prompt else None,
                              job.model if link.show_model else None, job.created_at)
