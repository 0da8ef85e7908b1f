"""``/v1/series``: one reference set, one prediction per scene, and a contact sheet of the results."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from kontext_studio.service.api.deps import Svc, User, base_of
from kontext_studio.service.container import Services
from kontext_studio.service.jobs.series import SeriesRequest

router = APIRouter(prefix="/v1", tags=["series"])


class SeriesIn(BaseModel):
    model: str | None = Field(default=None, max_length=200)
    input: dict[str, Any] = Field(description="the prediction input shared by every scene (no prompt)")
    scenes: list[str] = Field(description="one instruction per scene, 1-12", max_length=100)


def series_view(svc: Services, base: str, user_id: int, series_id: str) -> dict[str, Any]:
    """A series as the API shows it (blocking)."""
    items = []
    for job_id in svc.series.job_ids(user_id, series_id):
        env = svc.predictions.envelope(base, svc.predictions.get(user_id, job_id))
        identity = (env.get("result") or {}).get("identity") or {}
        items.append({"prediction": job_id, "prompt": env["input"].get("prompt"), "status": env["status"],
                      "progress": env["progress"], "output": env["output"],
                      "similarity": identity.get("similarity"), "seed": (env.get("result") or {}).get("seed")})
    done = all(i["status"] in ("succeeded", "failed", "canceled", "aborted") for i in items)
    return {"id": series_id, "items": items, "done": done,
            "urls": {"contact_sheet": f"{base}/v1/series/{series_id}/contact-sheet"}}


@router.post("/series", status_code=201)
async def create_series(request: Request, body: SeriesIn, svc: Svc, me: User) -> dict[str, Any]:
    """One reference set, one prediction per scene, all with the same seed (scenes differ only by their
    instruction). The whole series' price must be available before anything is queued."""
    series_id = await asyncio.to_thread(svc.series.create, me, SeriesRequest(body.model, body.input, body.scenes))
    return await asyncio.to_thread(series_view, svc, base_of(request), me.id, series_id)


@router.get("/series/{series_id}")
def get_series(request: Request, series_id: str, svc: Svc, me: User) -> dict[str, Any]:
    """The series' predictions in scene order, with their status, output and identity score."""
    return series_view(svc, base_of(request), me.id, series_id)


@router.get("/series/{series_id}/contact-sheet", responses={200: {"content": {"image/png": {}}}})
def series_contact_sheet(series_id: str, svc: Svc, me: User) -> Response:
    """A PNG grid of the finished scenes, each labelled with its instruction, seed and identity score."""
    return Response(svc.series.contact_sheet(me.id, series_id), media_type="image/png",
                    headers={"Content-Disposition": f'attachment; filename="series-{series_id}.png"'})
