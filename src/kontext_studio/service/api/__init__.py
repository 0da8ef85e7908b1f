"""The HTTP API: one router module per resource, each thin (parse, call a service, map the result).

To add a resource: write ``service/api/<resource>.py`` with a module-level ``router = APIRouter(...)`` whose
routes take ``svc: Svc`` and ``me: User`` from ``service.api.deps``, and add it to the list ``routers()`` returns.
"""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    """Every resource router, in the order they are matched (imported here, not at package import)."""
    from kontext_studio.service.api import (
        account,
        analysis,
        bfl,
        files,
        loras,
        models,
        predictions,
        series,
        sessions,
        trainings,
    )

    return [
        predictions.router,
        files.router,
        models.router,
        account.router,
        analysis.router,  # before the tools router: its /v1/tools/{name} must not shadow these two
        sessions.router,
        series.router,
        trainings.router,
        loras.router,
        bfl.router,  # last: its /v1/flux-kontext-{tier} pattern must not shadow the others
    ]
