"""The studio's pages: studio (editor), series, history, one prediction, account, sign-in.

``mount_studio`` adds them to the service app together with ``/static``. A page request signs the user
in from the studio cookie; on a single-user server a request from this machine signs in automatically
(a cookie is issued on the first page, so later API calls carry the cookie and its CSRF token).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from kontext_studio.core.acceleration import in_words
from kontext_studio.core.errors import KontextError
from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.api.analysis import ROLES
from kontext_studio.service.api.deps import is_local_request
from kontext_studio.service.container import Services
from kontext_studio.service.db import Job, JobStatus
from kontext_studio.service.security.text import printable
from kontext_studio.web.auth import COOKIE, CsrfRejected, StudioSession, is_cross_site
from kontext_studio.web.extras import mount_extras
from kontext_studio.web.pages import mount_pages
from kontext_studio.web.view import EXAMPLES, T2I_REASON, model_card, samples

HERE = Path(__file__).parent
ASPECTS = ("match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "9:21")
STRATEGIES = {"stitch": "Stitch (default)", "offset": "Offset", "index": "Index"}
WEIGHTS_CHECK_SECONDS = 30.0


@dataclass
class Page:
    """Who is looking at a page, and the cookie to set when the sign-in happened just now."""

    user: UserRecord
    session: StudioSession
    new_cookie: str | None = None


def _aspect_shape(ratio: str) -> tuple[int, int]:
    """Width and height (px, longest side 28) of the little shape drawn for an aspect preset."""
    if ratio == "match_input_image":
        return 22, 22
    w, h = (int(x) for x in ratio.split(":"))
    scale = 28 / max(w, h)
    return max(8, round(w * scale)), max(8, round(h * scale))


def mount_studio(app: FastAPI) -> None:
    """Add the studio's pages and static files to ``app``; they read ``app.state.services`` (the container)
    and, when set by the server, ``app.state.weights_status`` (a callable returning None when the Kontext
    [dev] weights are present, or the how-to-get-them message). Pages only read; everything that changes
    state goes through the ``/v1`` API."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    mount_extras(app, templates)
    sample_photos = samples()
    weights_cache: dict[str, Any] = {"at": 0.0, "message": None}

    def svc_of(request: Request) -> Services:
        svc: Services = request.app.state.services
        return svc

    def weights_message(request: Request) -> str | None:
        check = getattr(request.app.state, "weights_status", None)
        if check is None:
            return None
        if time.monotonic() - weights_cache["at"] > WEIGHTS_CHECK_SECONDS:
            weights_cache["message"], weights_cache["at"] = check(), time.monotonic()
        message: str | None = weights_cache["message"]
        return message

    def sign_in(request: Request) -> Page | None:
        svc = svc_of(request)
        session = svc.studio_auth.read(request.cookies.get(COOKIE))
        if session is not None:
            try:
                return Page(svc.accounts.get_user(session.user_id), session)
            except KontextError:
                return None
        local = svc.local_user_id
        if local is not None and is_local_request(request, svc.options.local_port):
            cookie, session = svc.studio_auth.issue(local)
            return Page(svc.accounts.get_user(local), session, cookie)
        return None

    def tiers(svc: Services) -> list[dict[str, Any]]:
        # A backend still starting counts as configured (submissions wait for it); its state says so.
        # Every catalogue model: those this server cannot run are shown disabled, with the reason.
        return [model_card(m, free=svc.free) for m in svc.models.list(every=True)]

    def render(request: Request, page: Page, template: str, status_code: int = 200, **context: Any) -> Response:
        svc = svc_of(request)
        bal = svc.accounts.balance(page.user.id)
        response = templates.TemplateResponse(request, template, {
            "user": page.user, "credits": bal.available, "held": bal.held, "free": svc.free,
            "csrf": svc.studio_auth.csrf_token(page.session), "weights_message": weights_message(request),
            **context}, status_code=status_code)
        if page.new_cookie:
            set_cookie(request, response, page.new_cookie)
        return response

    def set_cookie(request: Request, response: Response, value: str) -> None:
        response.set_cookie(COOKIE, value, max_age=svc_of(request).studio_auth.lifetime, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")

    def signed_in(request: Request) -> Page | RedirectResponse:
        page = sign_in(request)
        return page if page is not None else RedirectResponse("/sign-in", status_code=303)

    def card(request: Request, job: Job) -> dict[str, Any]:
        svc = svc_of(request)
        base = str(request.base_url).rstrip("/")
        files = (job.output or {}).get("files") or []
        images = job.input.get("images") or []
        identity = (job.output or {}).get("identity") or {}
        return {"id": job.id, "prompt": printable(job.input.get("prompt") or ""), "tier": job.tier,
                "status": job.status, "created_at": job.created_at, "cost": job.cost, "error": printable(job.error),
                "output": svc.predictions.file_url(base, files[0]) if files and job.status == JobStatus.SUCCEEDED
                else None,
                "input": svc.predictions.file_url(base, images[0]) if images else None,
                "similarity": identity.get("similarity"), "seed": (job.output or {}).get("seed")}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def studio(request: Request) -> Response:
        page = signed_in(request)
        if isinstance(page, Response):
            return page
        cards = tiers(svc_of(request))
        ready = [c["name"] for c in cards if c["configured"]]
        default = "dev" if "dev" in ready else (ready[0] if ready else "dev")
        generates = any(c["configured"] and c["generates"] for c in cards)
        return render(request, page, "studio.html", tiers=cards, roles=ROLES, default_tier=default,
                      aspects=[(a, _aspect_shape(a)) for a in ASPECTS], strategies=STRATEGIES,
                      samples=sample_photos, examples=EXAMPLES, t2i_reason=None if generates else T2I_REASON)

    @app.get("/series", response_class=HTMLResponse, include_in_schema=False)
    def series(request: Request) -> Response:
        page = signed_in(request)
        if isinstance(page, Response):
            return page
        # Every scene edits the same references: every catalogue model that edits, those this server cannot run
        # disabled (the studio's cards decide that).
        cards = [c for c in tiers(svc_of(request)) if c["edits"]]
        ready = [c["name"] for c in cards if c["configured"]]
        return render(request, page, "series.html", tiers=cards, roles=ROLES, aspects=ASPECTS,
                      default_tier="dev" if "dev" in ready else (ready[0] if ready else "dev"))

    @app.get("/history", include_in_schema=False)
    def history(request: Request) -> Response:
        target = "/library" + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(target, status_code=308)

    services: Services = app.state.services
    mount_pages(app, templates=templates, render=render, signed_in=signed_in, accounts=services.accounts,
                jobs=services.jobs,
                file_url_for=lambda request, key: services.predictions.file_url(str(request.base_url).rstrip("/"),
                                                                                 key))

    @app.get("/predictions/{prediction_id}", response_class=HTMLResponse, include_in_schema=False)
    def prediction_page(request: Request, prediction_id: str) -> Response:
        page = signed_in(request)
        if isinstance(page, Response):
            return page
        svc = svc_of(request)
        try:
            job = svc.predictions.get(page.user.id, prediction_id)
        except KontextError:
            return render(request, page, "not_found.html", status_code=404,
                          what=f"prediction {printable(prediction_id)}")
        settings = printable({k: v for k, v in job.input.items() if k != "images"})
        recipe = printable((job.output or {}).get("recipe") or {})
        # Known sizes go into width/height so the page does not jump while the pictures load.
        sizes = [r.get("size") or [320, 320] for r in recipe.get("references") or []]
        base = str(request.base_url).rstrip("/")
        inputs = [(svc.predictions.file_url(base, k), *(sizes[i] if i < len(sizes) else (320, 320)))
                  for i, k in enumerate(job.input.get("images", []))]
        return render(request, page, "prediction.html", job=card(request, job), settings=settings,
                      recipe=recipe or None, speed=in_words(recipe.get("acceleration")),
                      warnings=printable((job.output or {}).get("warnings") or []),
                      inputs=inputs, output_size=recipe.get("output_size") or [320, 320])

    @app.get("/studio/coach", response_class=HTMLResponse, include_in_schema=False)
    def coach_hints(request: Request, prompt: str = "", references: int = 1, roles: str = "") -> Response:
        """The prompt coach's hints as an HTML fragment (htmx swaps it in under the prompt box)."""
        page = signed_in(request)
        if isinstance(page, Response):
            return Response(status_code=401)
        from kontext_studio.analysis.prompt_coach import coach

        prompt = printable(prompt)
        role_list: list[str | None] = [r if r in ROLES else None for r in roles.split(",")] if roles else []
        report = coach(prompt[:4000], references=max(0, min(4, references)),
                       roles=role_list) if prompt.strip() else None  # type: ignore[arg-type]
        return templates.TemplateResponse(request, "_coach.html", {"report": report and report.as_dict(),
                                                                   "prompt": prompt})

    @app.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    def sign_in_page(request: Request) -> Response:
        # Only an existing cookie skips the form: on a single-user server another account can still sign in.
        if svc_of(request).studio_auth.read(request.cookies.get(COOKIE)) is not None:
            return RedirectResponse("/", status_code=303)
        return templates.TemplateResponse(request, "sign_in.html", {"error": None})

    @app.post("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    def sign_in_submit(request: Request, api_key: str = Form("")) -> Response:
        svc = svc_of(request)
        if is_cross_site(request):  # no signing a victim into an attacker's account from another site
            return templates.TemplateResponse(request, "sign_in.html", {
                "error": "This sign-in came from another site and was refused."}, status_code=403)
        user = svc.accounts.authenticate(api_key.strip())
        if user is None:
            return templates.TemplateResponse(request, "sign_in.html", {
                "error": "That API key is unknown or revoked. Keys start with ks_; ask the administrator of this "
                         "server for one."}, status_code=401)
        cookie, _ = svc.studio_auth.issue(user.id, svc.studio_auth.key_id(api_key.strip()))
        response = RedirectResponse("/", status_code=303)
        set_cookie(request, response, cookie)
        return response

    @app.post("/sign-out", include_in_schema=False)
    def sign_out(request: Request, csrf: str = Form("")) -> Response:
        auth = svc_of(request).studio_auth
        session = auth.read(request.cookies.get(COOKIE))
        if session is not None:
            if csrf != auth.csrf_token(session):
                raise CsrfRejected("sign-out without the page's CSRF token; reload the page and try again")
            auth.revoke(session)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response
