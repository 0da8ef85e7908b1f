"""The BFL-compatible shim: ``POST /v1/flux-kontext-{tier}`` (and ``/v1/<model>`` for every other catalogue model,
e.g. ``/v1/flux-2-klein-4b``) with ``x-key`` → ``{id, polling_url}``, and
``GET /v1/get_result?id=`` with BFL's status strings, so BFL clients work unchanged."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from kontext_studio.core.catalogue import CATALOGUE
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.api.deps import Svc, User, base_of
from kontext_studio.service.api.predictions import create
from kontext_studio.service.jobs.predictions import Submission, model_name, tier_of
from kontext_studio.service.security.text import MAX_DEPTH

router = APIRouter(prefix="/v1", tags=["bfl"])
BFL_STATUS = {"starting": "Pending", "processing": "Pending", "succeeded": "Ready", "failed": "Error",
              "canceled": "Error", "aborted": "Error"}
# A moderated edit answers with BFL's own statuses, so BFL clients (ours included) report it as moderation.
BFL_MODERATION = {"request_moderated": "Request Moderated", "content_moderated": "Content Moderated"}


def _depth(text: str) -> int:
    """The deepest bracket nesting in a JSON text (counted before parsing: a deep body never reaches the
    recursive parser)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_body(raw_bytes: bytes) -> dict[str, Any]:
    """A BFL request body as a JSON object.

    Raises:
        InvalidRequest: not JSON, not an object, or nested deeper than the service accepts.
    """
    try:
        text = raw_bytes.decode("utf-8") if raw_bytes else "null"
    except UnicodeDecodeError:
        raise InvalidRequest("the body must be UTF-8 JSON", field="body") from None
    if _depth(text) > MAX_DEPTH:
        raise InvalidRequest(f"the body is nested deeper than {MAX_DEPTH} levels", field="body")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    return raw


@router.post("/flux-kontext-{tier}")
async def bfl_submit(request: Request, tier: str, svc: Svc, user: User) -> dict[str, Any]:
    return await submit_as_bfl(request, svc, user, f"flux-kontext-{tier}")


def _model_route(name: str) -> Any:
    async def bfl_submit_model(request: Request, svc: Svc, user: User) -> dict[str, Any]:
        return await submit_as_bfl(request, svc, user, name)

    return bfl_submit_model


for _entry in CATALOGUE:  # the routes BFL documents for FLUX.2, served by whichever backend runs the model here
    if not _entry.short_name.startswith("flux-kontext-"):
        router.add_api_route(f"/{_entry.short_name}", _model_route(_entry.short_name), methods=["POST"],
                             name=f"bfl_submit_{_entry.key}", summary=f"BFL-style submit: {_entry.title}")


async def submit_as_bfl(request: Request, svc: Any, user: Any, model: str) -> dict[str, Any]:
    """Submit a BFL-style body (``input_image``..``input_image_8``, ``width``/``height``...) for ``model``."""
    raw = parse_body(await request.body())
    webhook = raw.get("webhook_url")
    if webhook is not None and not isinstance(webhook, str):
        raise InvalidRequest(f"webhook_url must be a URL string; got {webhook!r}"[:200], field="webhook_url")
    fields = {k: v for k, v in raw.items() if k not in ("webhook_url", "webhook_secret")}
    resolved = tier_of(model)
    response = await create(request, svc, user, resolved, Submission(input=fields, model=model_name(resolved),
                                                                      webhook=webhook))
    pid = json.loads(bytes(response.body))["id"]
    return {"id": pid, "polling_url": str(request.url_for("bfl_get_result").include_query_params(id=pid))}


@router.get("/get_result", name="bfl_get_result")
def bfl_get_result(request: Request, id: str, svc: Svc, user: User) -> dict[str, Any]:
    try:
        job = svc.predictions.get(user.id, id)
    except KontextError:
        return {"id": id, "status": "Task not found", "result": None, "progress": None}
    env = svc.predictions.envelope(base_of(request), job)
    result = {"sample": env["output"], "seed": (job.output or {}).get("seed")} if job.status == "succeeded" else None
    status = BFL_MODERATION.get(job.error_code or "", BFL_STATUS[job.status])
    return {"id": id, "status": status, "result": result, "progress": job.progress, "error": job.error}
