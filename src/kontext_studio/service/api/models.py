"""``/v1/models``: the models this server offers and whether each can run here now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kontext_studio.service.api.deps import Svc

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(svc: Svc) -> dict[str, Any]:
    """Every model with its price, defaults and state (``ready``, ``starting``, ``lazy``, ``failed``,
    ``absent``); ``configured`` is true when predictions on it are accepted."""
    return {"results": [{"name": m.name, "owner": "black-forest-labs", "tier": m.spec.name, "title": m.spec.title,
                         "credits": m.price, "max_references": m.spec.max_references,
                         "default_steps": m.spec.steps, "description": m.spec.description,
                         "trades": m.spec.trades, "backend": m.spec.backend, "configured": m.configured,
                         "state": m.state, "missing": m.missing} for m in svc.models.list()]}
