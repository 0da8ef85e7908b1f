"""``/v1/tools/check-reference`` and ``/v1/tools/coach``: the reference checker and the prompt coach."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kontext_studio.service.api.deps import Svc, User
from kontext_studio.service.api.files import bounded
from kontext_studio.service.inputs import _decode_image
from kontext_studio.service.jobs.edit_sessions import AnalysisUnavailable

router = APIRouter(prefix="/v1", tags=["tools"])
ROLES = ("subject", "garment", "style", "background", "object")
# dlib's HOG face detector in the reference checker is shared and not thread-safe: two uploads checked at
# once crash the process, so checks run one at a time.
_CHECK_LOCK = threading.Lock()


class ReferenceCheckIn(BaseModel):
    image: str = Field(description="an uploaded file id (file:uploads/...), a data URL or base64 image")
    expect_face: bool = Field(default=False, description="the picture should show a person")


class CoachIn(BaseModel):
    prompt: str = Field(max_length=4000)
    references: int = Field(default=1, ge=0, le=4)
    roles: list[str | None] | None = Field(default=None, max_length=4)


@router.post("/tools/check-reference")
async def check_reference(body: ReferenceCheckIn, svc: Svc, me: User) -> dict[str, Any]:
    """Run the reference checker on one picture: resolution, blur, exposure, faces, compression."""
    key = await asyncio.to_thread(bounded, _decode_image, body.image, "image", svc.storage,
                                  lambda k: svc.predictions.files.owns(me.id, k))
    try:
        from kontext_studio.analysis.reference_check import check_reference as run_check
    except ImportError:
        raise AnalysisUnavailable("the reference checker needs the analysis extra "
                                  "(pip install 'kontext-studio[analysis]')") from None
    data = await asyncio.to_thread(svc.storage.get, key)

    def run_locked() -> Any:
        with _CHECK_LOCK:
            return run_check(data, expect_face=body.expect_face)

    report = await asyncio.to_thread(bounded, run_locked)
    return {"image": f"file:{key}", **report.as_dict()}


@router.post("/tools/coach")
def coach_prompt(body: CoachIn, _me: User) -> dict[str, Any]:
    """Lint an editing instruction: what Kontext will misread, with spans, fixes and one rewrite."""
    from kontext_studio.analysis.prompt_coach import coach

    roles = [r if r in ROLES else None for r in (body.roles or [])]
    return coach(body.prompt, references=body.references, roles=roles).as_dict()  # type: ignore[arg-type]
