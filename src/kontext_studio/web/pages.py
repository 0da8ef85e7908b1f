"""The studio's library, account and public share pages.

``mount_pages`` is called by ``mount_studio`` with its page helpers (sign-in and rendering), so these pages
look and authenticate like the others. The library page renders from ``/v1/library`` in the browser; the
account page shows usage one row per job with totals per day, API keys, and the raw ledger to
administrators only; ``/s/<token>`` shows a shared result to anyone, with only what its owner chose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from kontext_studio.service.accounts.accounts_base import AccountsBase
from kontext_studio.service.api.library import day_totals, usage_rows
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.library import SqlLibrary

LEDGER_ROWS = 200


def mount_pages(app: FastAPI, *, templates: Jinja2Templates, render: Callable[..., Response],
                signed_in: Callable[[Request], Any], accounts: AccountsBase, jobs: JobStore,
                file_url_for: Callable[[Request, str], str]) -> None:
    """Add /library, /account, /settings (administrators) and /s/<token> to ``app``.

    Args:
        app: the service app (``app.state.library`` holds the library store, ``app.state.server_settings`` the
            settings an administrator enters).
        templates: the studio's templates.
        render: ``render(request, page, template, status_code=200, **context)`` from the studio.
        signed_in: request → the signed-in page context, or a redirect response to the sign-in page.
        accounts: users and API keys.
        jobs: the job store (its readers).
        file_url_for: (request, storage key) → a signed file URL.
    """

    def library() -> SqlLibrary:
        store: SqlLibrary = app.state.library
        return store

    @app.get("/library", response_class=HTMLResponse, include_in_schema=False)
    def library_page(request: Request, q: str = "") -> Response:
        page = signed_in(request)
        if isinstance(page, Response):
            return page
        return render(request, page, "library.html", q=q)

    @app.get("/account", response_class=HTMLResponse, include_in_schema=False)
    def account(request: Request) -> Response:
        page = signed_in(request)
        if isinstance(page, Response):
            return page
        rows = usage_rows(jobs.readers, page.user.id)
        usage = []
        for r in rows:
            job = r["job"]
            files = (job.output or {}).get("files") or []
            usage.append({"id": job.id, "prompt": job.input.get("prompt") or "", "model": job.model,
                          "status": job.status, "credits": r["credits"], "created_at": job.created_at,
                          "thumb": file_url_for(request, files[0]) if files else None})
        ledger: list[dict[str, Any]] = []
        if page.user.is_admin:
            ledger = [{"id": e.id, "job_id": e.job_id, "account": e.account, "amount": e.amount, "kind": e.kind,
                       "created_at": e.created_at} for e in accounts.ledger(page.user.id, LEDGER_ROWS)]
        return render(request, page, "account.html", keys=accounts.list_api_keys(page.user.id), usage=usage,
                      days=day_totals(rows), ledger=ledger)

    @app.get("/settings", response_class=HTMLResponse, include_in_schema=False)
    def settings_page(request: Request) -> Response:
        page = signed_in(request)
        if isinstance(page, Response):
            return page
        if not page.user.is_admin:
            return render(request, page, "not_found.html", status_code=404, what="settings page")
        from kontext_studio.service.admin import BFL_KEY

        return render(request, page, "settings.html", bfl=app.state.server_settings.state(BFL_KEY))

    @app.get("/s/{token}", response_class=HTMLResponse, include_in_schema=False)
    def shared(request: Request, token: str) -> Response:
        view = library().shared(token[:200])
        context: dict[str, Any] = {"user": None, "csrf": None, "active": None}
        if view is None:
            return templates.TemplateResponse(request, "not_found.html", {
                **context, "what": None, "gone": True}, status_code=404)
        return templates.TemplateResponse(request, "share.html", {
            **context, "view": view, "image": file_url_for(request, view.output_key)},
            headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"})
