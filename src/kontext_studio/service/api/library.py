"""``/v1/library``: the user's library (search, favourites, removal) and share links; and ``/v1/usage``: one
row per job with the credits it actually cost, and totals per day."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.db import Job, LedgerEntry, LedgerKind
from kontext_studio.service.library import LibraryItem, ShareRecord, SqlLibrary


class FavouriteIn(BaseModel):
    favourite: bool = Field(description="true to mark a favourite, false to unmark it")


class ShareIn(BaseModel):
    show_prompt: bool = Field(default=False, description="show the instruction on the public page")
    show_model: bool = Field(default=False, description="show the model on the public page")


def share_json(base: str, share: ShareRecord) -> dict[str, Any]:
    """A share link as the API answers it (``url`` is the public address)."""
    return {"id": share.id, "prediction": share.job_id, "url": f"{base}/s/{share.token}",
            "show_prompt": share.show_prompt, "show_model": share.show_model,
            "created_at": share.created_at.isoformat()}


def usage_rows(sessions: sessionmaker[Session], user_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """One row per job, newest first: what it was and the credits it cost (captured; 0 once released).

    Args:
        sessions: database sessions.
        user_id: the user.
        limit: at most this many jobs (1-500).

    Returns:
        Dicts with ``job`` (the Job), ``credits`` and ``day`` (YYYY-MM-DD, UTC).
    """
    held = f"user:{user_id}:held"
    with sessions() as s:
        jobs = list(s.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.created_at.desc())
                              .limit(max(1, min(500, limit)))).all())
        ids = [j.id for j in jobs]
        charged: dict[str, int] = {}
        for entry in s.scalars(select(LedgerEntry).where(LedgerEntry.account == held, LedgerEntry.job_id.in_(ids),
                                                         LedgerEntry.kind == LedgerKind.CAPTURE)).all():
            charged[str(entry.job_id)] = charged.get(str(entry.job_id), 0) - entry.amount
        for j in jobs:
            s.expunge(j)
    return [{"job": j, "credits": charged.get(j.id, 0), "day": j.created_at.strftime("%Y-%m-%d")} for j in jobs]


def day_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Credits and job counts per day, newest day first."""
    days: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for r in rows:
        d = days.setdefault(r["day"], {"day": r["day"], "jobs": 0, "credits": 0})
        d["jobs"] += 1
        d["credits"] += r["credits"]
    return list(days.values())


def library_router(library: SqlLibrary, sessions: sessionmaker[Session], user: Callable[..., UserRecord],
                   file_url_for: Callable[[Request, str], str]) -> APIRouter:
    """The library and usage routes.

    Args:
        library: the library store.
        sessions: database sessions (usage reads jobs and the ledger).
        user: the dependency that authenticates a request.
        file_url_for: (request, storage key) → a signed file URL.
    """
    router = APIRouter(tags=["library"])

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def item_json(request: Request, item: LibraryItem) -> dict[str, Any]:
        job = item.job
        files = (job.output or {}).get("files") or []
        images = job.input.get("images") or []
        return {"id": job.id, "kind": item.kind, "prompt": job.input.get("prompt") or "", "model": job.model,
                "status": job.status, "created_at": job.created_at.isoformat(), "favourite": item.favourite,
                "output": file_url_for(request, files[0]) if files else None,
                "input": file_url_for(request, images[0]) if images else None,
                "share": share_json(base(request), item.share) if item.share else None}

    @router.get("/v1/library")
    def list_library(request: Request, me: UserRecord = Depends(user), q: str | None = None,
                     favourites: bool = False, kind: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Your library, newest first: every edit, series scene and session turn you made (not the ones you
        removed). ``q`` matches words in the prompt; ``favourites=true``; ``kind`` = edit, series or session."""
        found = library.items(me.id, q=q, favourites=favourites, kind=kind, limit=limit)
        return {"results": [item_json(request, it) for it in found]}

    @router.put("/v1/library/{prediction_id}/favourite")
    def favourite(prediction_id: str, body: FavouriteIn, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """Mark or unmark a favourite."""
        library.set_favourite(me.id, prediction_id, body.favourite)
        return {"id": prediction_id, "favourite": body.favourite}

    @router.delete("/v1/library/{prediction_id}", status_code=204)
    def remove(prediction_id: str, me: UserRecord = Depends(user)) -> Response:
        """Remove a prediction from your library; its share link stops working. Usage and the credit ledger
        keep their record of it."""
        library.remove(me.id, prediction_id)
        return Response(status_code=204)

    @router.post("/v1/library/{prediction_id}/share", status_code=201)
    def share(request: Request, prediction_id: str, body: ShareIn, me: UserRecord = Depends(user)) -> dict[str, Any]:
        """A public link to one result (made once; sending again changes what it shows). Anyone with the URL
        sees the picture, plus the prompt and model only when you say so."""
        return share_json(base(request), library.share(me.id, prediction_id, show_prompt=body.show_prompt,
                                                       show_model=body.show_model))

    @router.delete("/v1/shares/{share_id}", status_code=204)
    def revoke(share_id: str, me: UserRecord = Depends(user)) -> Response:
        """End a share link: its URL answers 404 from now on."""
        library.revoke(me.id, share_id)
        return Response(status_code=204)

    @router.get("/v1/usage")
    def usage(request: Request, me: UserRecord = Depends(user), limit: int = 200) -> dict[str, Any]:
        """One row per job (prompt, model, status, credits it cost) and the totals per day."""
        rows = usage_rows(sessions, me.id, limit)
        out = []
        for r in rows:
            job = r["job"]
            files = (job.output or {}).get("files") or []
            out.append({"id": job.id, "prompt": job.input.get("prompt") or "", "model": job.model,
                        "status": job.status, "credits": r["credits"], "created_at": job.created_at.isoformat(),
                        "output": file_url_for(request, files[0]) if files else None})
        return {"results": out, "days": day_totals(rows)}

    return router
