"""``/v1/sessions``: edit sessions, a tree of predictions each editing its parent's output."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from kontext_studio.service.api.deps import Svc, User, base_of
from kontext_studio.service.container import Services

router = APIRouter(prefix="/v1", tags=["sessions"])


class SessionIn(BaseModel):
    prediction: str = Field(description="the first prediction of the session (its first input is the origin)")


class TurnIn(BaseModel):
    prediction: str = Field(description="the prediction that edited the parent turn's output")
    parent: str = Field(description="the turn it continues from (a prediction id already in the session)")


def session_view(svc: Services, base: str, user_id: int, session_id: str) -> dict[str, Any]:
    """A session as the API shows it (blocking: reads the database and, for drift, stored pictures)."""
    view = svc.edit_sessions.read(user_id, session_id)
    out = []
    for t in view.turns:
        job = svc.predictions.get(user_id, t.job_id)
        env = svc.predictions.envelope(base, job)
        out.append({"prediction": t.job_id, "parent": t.parent_job_id, "turn": t.turn, "branch": t.branch,
                    "status": job.status, "prompt": job.input.get("prompt"), "output": env["output"],
                    # drift itself (0 = unchanged, 1 = nothing of the origin left) beside the similarity
                    "drift": None if t.drift is None else {
                        "value": None if t.drift[0] is None else round(min(1.0, max(0.0, 1.0 - t.drift[0])), 4),
                        "similarity": t.drift[0], "method": t.drift[1]}})
    return {"id": view.id, "origin": f"file:{view.origin_key}",
            "origin_url": svc.predictions.file_url(base, view.origin_key), "turns": out}


@router.post("/sessions", status_code=201)
async def create_session(request: Request, body: SessionIn, svc: Svc, me: User) -> dict[str, Any]:
    """Start an edit session from a prediction: its first input is the origin, it is turn 1."""
    session_id = await asyncio.to_thread(svc.edit_sessions.create, me.id, body.prediction)
    return await asyncio.to_thread(session_view, svc, base_of(request), me.id, session_id)


@router.post("/sessions/{session_id}/turns", status_code=201)
async def add_turn(request: Request, session_id: str, body: TurnIn, svc: Svc, me: User) -> dict[str, Any]:
    """Add a prediction that edited ``parent``'s output; a second child of one parent is a branch."""
    await asyncio.to_thread(svc.edit_sessions.add_turn, me.id, session_id, body.prediction, body.parent)
    return await asyncio.to_thread(session_view, svc, base_of(request), me.id, session_id)


@router.get("/sessions/{session_id}")
def get_session(request: Request, session_id: str, svc: Svc, me: User) -> dict[str, Any]:
    """The session's turns in order, each with its parent, output, and drift from the origin."""
    return session_view(svc, base_of(request), me.id, session_id)
