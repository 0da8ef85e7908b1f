"""The pages around the studio that every web product has: a favicon, API docs that work offline, and an
HTML "not found" page for people (API clients keep getting ``problem+json``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

HERE = Path(__file__).parent
DOCS_ASSETS = "/docs-assets"


def swagger_assets() -> Path | None:
    """Where the installed ``fastapi-offline`` package keeps Swagger UI's script and stylesheet (None when the
    package is missing)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def wants_html(request: Request) -> bool:
    """A browser asking for a page (not an API client, not a file or API path)."""
    path = request.url.path
    if path.startswith(("/v1/", "/static/", DOCS_ASSETS)):
        return False
    return "text/html" in request.headers.get("accept", "")


def mount_extras(app: FastAPI, templates: Jinja2Templates) -> None:
    """Add the favicon, offline ``/docs`` and the HTML 404 page to ``app``.

    Args:
        app: the service app (its default ``/docs`` route, which loads Swagger UI from a CDN, is replaced).
        templates: the studio's templates (``not_found.html``).
    """

    from kontext_studio.web.view import is_routine

    templates.env.tests["routine"] = is_routine

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    assets = swagger_assets()
    if assets is not None and app.docs_url:
        docs_url = app.docs_url
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != docs_url]
        app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
        openapi_url = app.openapi_url or "/openapi.json"

        @app.get(docs_url, include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} · API docs",
                                       swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                       swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                       swagger_favicon_url="/static/favicon.svg")

    api_handler = app.exception_handlers.get(StarletteHTTPException)

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 404 and wants_html(request):
            return templates.TemplateResponse(request, "not_found.html", {
                "what": None, "user": None, "csrf": None, "active": None}, status_code=404)
        if api_handler is None:
            raise exc
        handler: Callable[[Request, Exception], Awaitable[Response]] = api_handler  # type: ignore[assignment]
        return await handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, not_found)
