"""``/v1/loras``: the LoRAs your training runs made, usable in predictions through the ``loras`` input."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kontext_studio.service.api.deps import Svc, User
from kontext_studio.service.training.runs_sql import iso

router = APIRouter(prefix="/v1", tags=["training"])


@router.get("/loras")
def list_loras(svc: Svc, me: User) -> dict[str, Any]:
    """Your LoRAs; use one in a prediction with ``"loras": [{"id": ..., "weight": 0.8}]``."""
    return {"results": [{"id": lo.id, "name": lo.name, "rank": lo.rank, "alpha": lo.alpha, "sha256": lo.sha256,
                         "run_id": lo.run_id, "created_at": iso(lo.created_at)}
                        for lo in svc.training.store.loras(me.id)]}
