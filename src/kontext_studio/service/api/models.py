"""``/v1/models``: the models this server offers and whether each can run here now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kontext_studio.service.api.deps import Svc

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(svc: Svc) -> dict[str, Any]:
    """Every catalogue model with its price, references, tasks, licence and state (``ready``, ``starting``,
    ``lazy``, ``failed``, ``absent``); ``configured`` is true when predictions on it are accepted here; ``local``
    models list their acceleration profiles."""
    return {"results": [_row(m) for m in svc.models.list(every=True)]}


def _row(m: Any) -> dict[str, Any]:
    entry = m.entry
    row = {"name": m.name, "owner": entry.name.split("/")[0], "full_name": entry.name, "tier": m.spec.name,
           "title": m.spec.title, "family": entry.family.value, "credits": m.price,
           "max_references": m.spec.max_references, "tasks": sorted(t.value for t in entry.tasks),
           "default_steps": m.spec.steps, "description": m.spec.description, "trades": m.spec.trades,
           "backend": m.spec.backend, "licence": entry.licence.name, "commercial_use": entry.licence.commercial,
           "configured": m.configured, "state": m.state, "missing": m.missing, "local": entry.local,
           "acceleration": _acceleration(entry, m.spec) if entry.local else None}
    return row


def _acceleration(entry: Any, spec: Any) -> dict[str, Any]:
    """The profiles a prediction may ask for on a local model (``acceleration``), what each turns on for this
    model's family, and the one it runs without asking. What this server's GPU lacks is said per edit, in the
    recipe's ``acceleration.fallbacks``."""
    from kontext_studio.core.acceleration import PROFILES, get_profile

    return {"default": spec.acceleration,
            "profiles": {name: get_profile(name, entry.family.value).as_dict() for name in PROFILES}}
