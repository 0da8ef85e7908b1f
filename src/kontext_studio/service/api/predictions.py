"""``/v1/predictions``: create (also by model route and idempotent PUT), read, stream, search, cancel, and the
studio's extras (queue position, recipe, promote)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from kontext_studio.core.catalogue import get_model
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.api.deps import Svc, User, base_of
from kontext_studio.service.db import TERMINAL_JOB_STATUSES
from kontext_studio.service.jobs.predictions import Submission, model_name, prefer_wait, tier_of

router = APIRouter(prefix="/v1", tags=["predictions"])
INPUT_DESCRIPTION = (
    "BFL's field names plus ours: prompt; input_image, input_image_2 ... input_image_8 (data URL, base64 or an "
    "uploaded file:... id); seed; aspect_ratio or width and height; output_format (png, jpeg, webp); "
    "num_inference_steps; guidance; num_outputs (1-4, each charged); strategy; roles; geometry; identity_guard; "
    "candidates; pixel_lock or lock_mask; loras; safety_tolerance and prompt_upsampling (hosted models); "
    "acceleration (stock, lossless or fast; null: the model's own) and draft (true: half the steps, softer) for "
    "the models this server runs (hosted models refuse both). Unknown fields are refused (422).")


class PredictionIn(BaseModel):
    model: str | None = Field(default=None, max_length=200)
    version: str | None = Field(default=None, max_length=200)
    input: dict[str, Any] = Field(description=INPUT_DESCRIPTION)
    webhook: str | None = Field(default=None, max_length=2000)
    webhook_events_filter: list[str] | None = Field(default=None, max_length=4)

    def submission(self) -> Submission:
        return Submission(input=self.input, model=self.model, webhook=self.webhook,
                          webhook_events_filter=self.webhook_events_filter)


class PromoteIn(BaseModel):
    tier: str = Field(default="pro", description="the tier to render the same recipe at")


async def create(request: Request, svc: Svc, user: Any, tier: str, body: Submission, *, prefer: str | None = None,
                 idem: str | None = None, cancel_after: str | None = None, job_id: str | None = None) -> JSONResponse:
    """Submit off the event loop, wait if asked, answer the envelope (201 new, 200 replay)."""
    new, existing_id = await asyncio.to_thread(svc.predictions.submit_job, user, tier, body, idempotency_key=idem,
                                               cancel_after=cancel_after, job_id=job_id)
    prediction_id = new.id if new is not None else str(existing_id)
    wait = prefer_wait(prefer)
    if wait:
        job = await svc.predictions.wait(user.id, prediction_id, wait)
    elif new is not None:
        job = new  # as committed: no read back
    else:  # a replay answers the prediction as it is now
        job = await asyncio.to_thread(svc.predictions.get, user.id, prediction_id)
    return JSONResponse(svc.predictions.envelope(base_of(request), job), status_code=201 if new is not None else 200)


@router.post("/predictions", status_code=201)
async def create_prediction(request: Request, body: PredictionIn, svc: Svc, user: User,
                            prefer: Annotated[str | None, Header()] = None,
                            idempotency_key: Annotated[str | None, Header()] = None,
                            cancel_after: Annotated[str | None, Header()] = None) -> JSONResponse:
    return await create(request, svc, user, tier_of(body.model), body.submission(), prefer=prefer,
                        idem=idempotency_key, cancel_after=cancel_after)


@router.post("/models/{owner}/{name}/predictions", status_code=201)
async def create_model_prediction(request: Request, owner: str, name: str, body: PredictionIn, svc: Svc, user: User,
                                  prefer: Annotated[str | None, Header()] = None,
                                  idempotency_key: Annotated[str | None, Header()] = None,
                                  cancel_after: Annotated[str | None, Header()] = None) -> JSONResponse:
    return await create(request, svc, user, tier_of(f"{owner}/{name}"), body.submission(), prefer=prefer,
                        idem=idempotency_key, cancel_after=cancel_after)


@router.put("/predictions/{prediction_id}")
async def put_prediction(request: Request, prediction_id: str, body: PredictionIn, svc: Svc, user: User,
                         prefer: Annotated[str | None, Header()] = None) -> JSONResponse:
    if not 8 <= len(prediction_id) <= 32 or not (prediction_id.isascii() and prediction_id.isalnum()):
        raise InvalidRequest("prediction id must be 8-32 letters or digits", field="id")
    return await create(request, svc, user, tier_of(body.model), body.submission(), prefer=prefer,
                        job_id=prediction_id.lower())


# The most frequent request (clients poll it): the envelope is JSON already, so it is sent as it is rather
# than validated and re-encoded against the declared dict (a second worker-thread hop per poll).
@router.get("/predictions/{prediction_id}", name="get_prediction", response_model=dict[str, Any])
def get_prediction(request: Request, prediction_id: str, svc: Svc, user: User) -> JSONResponse:
    return JSONResponse(svc.predictions.envelope(base_of(request), svc.predictions.get(user.id, prediction_id)))


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get("/predictions/{prediction_id}/stream")
async def stream_prediction(request: Request, prediction_id: str, svc: Svc, user: User) -> StreamingResponse:
    """Server-sent events: ``start``, ``progress``, ``output``, ``completed``."""
    await asyncio.to_thread(svc.predictions.get, user.id, prediction_id)  # 404 before the stream opens

    async def events() -> AsyncIterator[str]:
        last: tuple[str, float] | None = None
        while True:
            job = await asyncio.to_thread(svc.predictions.get, user.id, prediction_id)
            state = (job.status, round(job.progress, 3))
            if state != last:
                if last is None or (last[0] == "starting" and job.status != "starting"):
                    yield _sse("start", {"id": job.id, "status": job.status})
                yield _sse("progress", {"id": job.id, "status": job.status, "progress": job.progress})
                last = state
            if job.status in TERMINAL_JOB_STATUSES:
                env = svc.predictions.envelope(base_of(request), job)
                if env["output"]:
                    yield _sse("output", {"output": env["output"]})
                yield _sse("completed", env)
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.1)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/predictions")
def list_predictions(request: Request, svc: Svc, user: User, limit: int = 50, q: str | None = None,
                     tier: str | None = None, status: str | None = None) -> dict[str, Any]:
    """The caller's predictions, newest first; ``q`` matches words in the prompt, ``tier`` and ``status``
    filter."""
    items = svc.predictions.search(user.id, q=q, tier=tier, status=status, limit=limit)
    return {"results": [svc.predictions.envelope(base_of(request), j) for j in items], "next": None}


@router.post("/predictions/{prediction_id}/cancel", name="cancel_prediction")
def cancel_prediction(request: Request, prediction_id: str, svc: Svc, user: User) -> dict[str, Any]:
    return svc.predictions.envelope(base_of(request), svc.predictions.cancel(user.id, prediction_id))


@router.get("/predictions/{prediction_id}/queue")
def prediction_queue(prediction_id: str, svc: Svc, user: User) -> dict[str, Any]:
    """Where a waiting prediction stands: ``ahead`` predictions are waiting or running before it."""
    job = svc.predictions.get(user.id, prediction_id)
    return {"id": job.id, "status": job.status, "ahead": svc.predictions.queue_position(job)}


@router.get("/predictions/{prediction_id}/recipe")
def prediction_recipe(request: Request, prediction_id: str, svc: Svc, user: User) -> dict[str, Any]:
    """The prediction's input as it can be submitted again (images as file ids), and the seed it used."""
    job = svc.predictions.get(user.id, prediction_id)
    recipe = svc.predictions.recipe_of(job)
    recipe["image_urls"] = [svc.predictions.file_url(base_of(request), k) for k in job.input.get("images", [])]
    return recipe


@router.post("/predictions/{prediction_id}/promote", status_code=201)
async def promote(request: Request, prediction_id: str, body: PromoteIn, svc: Svc, user: User) -> JSONResponse:
    """Submit the same recipe (images, prompt, seed, settings) at another tier, e.g. a Fast draft at Pro."""
    job = await asyncio.to_thread(svc.predictions.get, user.id, prediction_id)
    recipe = svc.predictions.recipe_of(job)
    tier = tier_of(body.tier)
    again = dict(recipe["input"])
    if not get_model(tier, "tier").local:
        # A local run's speed profile and draft have no meaning on BFL's servers (a submit naming them is
        # refused there): the hosted model renders the same recipe at its own speed.
        again.pop("acceleration", None)
        again.pop("draft", None)
    response = await create(request, svc, user, tier, Submission(input=again, model=model_name(tier)))
    response.status_code = 201
    return response
