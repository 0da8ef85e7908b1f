"""The HTTP service: ``build_app`` turns a services container into the FastAPI app (routers, error table,
guards, lifespan); ``create_app`` builds the container through the composition root first."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import KontextError
from kontext_studio.service.api import routers
from kontext_studio.service.api.guards import GuardMiddleware
from kontext_studio.service.api.openapi import publish_complete_schema
from kontext_studio.service.api.problems import (
    http_error_handler,
    kontext_error_handler,
    storage_refused_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from kontext_studio.service.composition import build_services, webhook_secret
from kontext_studio.service.container import ServiceOptions, Services
from kontext_studio.service.storage.storage_base import Storage

__all__ = ["build_app", "create_app", "webhook_secret"]
logger = logging.getLogger("kontext_studio.service")


def build_app(services: Services) -> FastAPI:
    """The FastAPI app over a services container: every resource router, the studio's pages, one table
    mapping errors to statuses, the request guards, and a lifespan that starts and stops the background
    services."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        started = []
        try:
            for part in services.background:
                part.start()
                started.append(part)
            yield
        finally:
            for part in reversed(started):
                part.stop()

    app = FastAPI(title="Kontext Studio", version="0.1.0", lifespan=lifespan,
                  description="Reference-image editing on FLUX.1 Kontext: Replicate-style predictions and a "
                              "BFL-compatible shim.")
    app.state.services = services
    app.state.worker = services.worker
    app.state.training_runner = services.training.runner
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(KontextError, kontext_error_handler)
    app.add_exception_handler(DataError, storage_refused_handler)
    app.add_exception_handler(UnicodeEncodeError, storage_refused_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(GuardMiddleware, max_json_body=services.options.max_json_body)
    for router in routers():
        app.include_router(router)
    _include_factory_routers(app, services)
    from kontext_studio.web import mount_studio

    mount_studio(app)
    publish_complete_schema(app)
    return app


def _include_factory_routers(app: FastAPI, services: Services) -> None:
    """Routers built from their parts (admin settings, library, content-credential conversions, free tools)."""
    from kontext_studio.service.admin import BFL_KEY, install_bfl_key
    from kontext_studio.service.api.admin_settings import admin_settings_router
    from kontext_studio.service.api.credentials import credentials_router
    from kontext_studio.service.api.deps import base_of, current_user
    from kontext_studio.service.api.library import library_router
    from kontext_studio.service.api.tools import tools_router
    from kontext_studio.service.jobs.predictions import Submission

    app.state.library = services.extras["library"]
    app.state.server_settings = services.extras["server_settings"]
    if stored_bfl_key := app.state.server_settings.get(BFL_KEY):  # entered by an administrator in the studio
        install_bfl_key(services.editor, stored_bfl_key)
    app.include_router(admin_settings_router(app.state.server_settings, services.editor, current_user))
    app.include_router(library_router(app.state.library, services.jobs.sessions, current_user,
                                      lambda request, key: services.predictions.file_url(base_of(request), key)))
    app.include_router(credentials_router(services.storage, services.signer.verify))

    def submit(me: Any, tier: str, payload: dict[str, Any]) -> str:
        return services.predictions.submit(me, tier, Submission(input=payload["input"], model=payload.get("model")))[0]

    app.include_router(tools_router(storage=services.storage, sessions=services.jobs.sessions, user=current_user,
                                    settings_store=app.state.server_settings, signer=services.signer,
                                    free=services.free, submit=submit, get_job=services.predictions.get,
                                    models=services.models, limiters=services.limiters,
                                    envelope_for=lambda request, job: services.predictions.envelope(base_of(request),
                                                                                                   job)))


def create_app(engine: Any, storage: Storage, editor: Editor, secret: bytes, **options: Any) -> FastAPI:
    """Build the services (see ``composition.build_services``) and the app over them.

    Args:
        engine: SQLAlchemy engine of a migrated database.
        storage: file storage for uploads and outputs.
        editor: the engine that runs jobs (its backends decide what a tier does).
        secret: server secret for signed file URLs, studio sessions and webhook signing.
        **options: fields of ``ServiceOptions`` (free, local_user_id, start_worker, rate_limit, ...).
    """
    return build_app(build_services(engine, storage, editor, secret, ServiceOptions(**options)))

