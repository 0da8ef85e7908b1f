"""``create_app``: the one composition root of the HTTP service (tests pass their own parts)."""


import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.core.registry import TIERS, get_tier
from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.accounts.accounts_sql import SqlAccounts
from kontext_studio.service.admin import BFL_KEY, SqlServerSettings, install_bfl_key
from kontext_studio.service.api.admin_settings import admin_settings_router
from kontext_studio.service.api.credentials import credentials_router
from kontext_studio.service.api.library import library_router
from kontext_studio.service.api.limits import RateLimited, RateLimiter
from kontext_studio.service.api.openapi import publish_complete_schema
from kontext_studio.service.api.problems import (
    Unauthorized,
    http_error_handler,
    kontext_error_handler,
    validation_error_handler,
)
from kontext_studio.service.api.studio import search_jobs, studio_api_router
from kontext_studio.service.api.tools import tools_router
from kontext_studio.service.db import TERMINAL_JOB_STATUSES, Job, LedgerEntry, make_session_factory, utcnow
from kontext_studio.service.inputs import normalize_input, upload_key, upload_sha256
from kontext_studio.service.jobs.dispatch_base import Dispatcher
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.reaper import Reaper
from kontext_studio.service.jobs.worker import InProcessWorker
from kontext_studio.service.library import SqlLibrary
from kontext_studio.service.security.remote_images import ImageFetcher
from kontext_studio.service.security.ssrf import AddressPolicy, is_public_address, resolve_checked, safe_client
from kontext_studio.service.security.uploads import MEDIA_TYPES, check_content_length, read_limited, sniff_image
from kontext_studio.service.storage.files_sql import SqlFiles
from kontext_studio.service.storage.signed_urls import UrlSigner
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.training import build_training, training_router
from kontext_studio.service.webhooks import WebhookOutbox, WebhookSender
from kontext_studio.web import mount_studio
from kontext_studio.web.auth import StudioAuth, is_cross_site

BFL_STATUS = {"starting": "Pending", "processing": "Pending", "succeeded": "Ready", "failed": "Error",
              "canceled": "Error", "aborted": "Error"}
# A moderated edit answers with BFL's own statuses, so BFL clients (ours included) report it as moderation.
BFL_MODERATION = {"request_moderated": "Request Moderated", "content_moderated": "Content Moderated"}
MODEL_NAMES = {f"flux-kontext-{t}": t for t in TIERS}
MAX_UPLOAD = 20 * 2**20
FILE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass
class Services:
    """The parts the routes use; built by ``create_app``'s caller."""

    accounts: SqlAccounts
    jobs: JobStore
    storage: Storage
    signer: UrlSigner
    editor: Editor
    local_user_id: int | None = None  # set in local single-user mode: loopback requests without a key


def webhook_secret(secret: bytes) -> str:
    """The Standard Webhooks secret (``whsec_``...) derived from the server secret."""
    key = hmac.new(secret, b"kontext-studio webhooks", hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode()


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class PredictionIn(BaseModel):
    model: str | None = None
    version: str | None = None
    input: dict[str, Any]
    webhook: str | None = None
    webhook_events_filter: list[str] | None = Field(default=None)


def create_app(engine: Any, storage: Storage, editor: Editor, secret: bytes, *, free: bool = False,
               local_user_id: int | None = None, start_worker: bool = True, public_url: str = "http://127.0.0.1:8000",
               webhook_policy: AddressPolicy = is_public_address, allow_http_webhooks: bool = False,
               rate_limit: int = 60, max_active_per_user: int = 8, dispatcher: Dispatcher | None = None,
               image_urls: ImageFetcher | None = None, training_dir: Path | None = None) -> FastAPI:
    """Build the service.

    Args:
        engine: SQLAlchemy engine of a migrated database.
        storage: file storage for uploads and outputs.
        editor: the engine that runs jobs (its backends decide what a tier does).
        secret: server secret for signed file URLs.
        free: switch credit prices off (private installs).
        local_user_id: the user that loopback requests without a key act as (single-user mode).
        start_worker: run the in-process worker (off in tests that drive jobs by hand).
        public_url: how clients reach this server (used in webhook payloads, which have no request).
        webhook_policy, allow_http_webhooks: which webhook targets are acceptable (default: public https
            only; tests widen it to a local receiver).
        rate_limit: submissions per user per minute (0: unlimited).
        max_active_per_user: waiting + running predictions a user may have at once.
        dispatcher: send jobs to Celery workers instead of the in-process worker (a reaper then runs here
            to re-send jobs whose lease expired or whose message was lost).
        image_urls: accept image URLs in inputs, fetched through this SSRF-guarded fetcher (``None``: URLs
            are refused with a message saying how to send the image instead).
        training_dir: where LoRA training keeps unpacked datasets, checkpoints (a run resumes from them after a
            restart) and its latent cache; default a folder in the system's temporary directory.
    """
    sessions = make_session_factory(engine)
    accounts = SqlAccounts(sessions, free=free)
    files = SqlFiles(sessions)

    def own_upload(user_id: int, key: str, kind: str, size: int) -> None:
        """Record a stored upload as the user's file: only its owner may name it in an input."""
        files.record(user_id, key, upload_sha256(key), MEDIA_TYPES[kind], size)

    worker: InProcessWorker | None = None  # built below, once the job store exists
    signer = UrlSigner(secret)
    limiter = RateLimiter(rate_limit, 60.0)
    base_url = public_url.rstrip("/")
    outbox = WebhookOutbox(
        sessions, webhook_secret(secret),
        client_factory=lambda: safe_client(allow_http=allow_http_webhooks, policy=webhook_policy),
        payload_for=lambda job: envelope(base_url, job),
    )
    sender = WebhookSender(outbox)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sender.start()
        in_process = start_worker and dispatcher is None
        assert worker is not None
        reaper = Reaper(jobs, dispatcher) if dispatcher is not None else None
        if in_process:
            worker.start()
            training_runner.start()
        if reaper is not None:
            reaper.start()
        try:
            yield
        finally:
            if in_process:
                worker.stop()
                training_runner.stop()
            if reaper is not None:
                reaper.stop()
            sender.stop()

    app = FastAPI(title="Kontext Studio", version="0.1.0", lifespan=lifespan,
                  description="Reference-image editing on FLUX.1 Kontext: Replicate-style predictions and a "
                              "BFL-compatible shim.")

    def on_change(job_id: str) -> None:
        if worker is not None:
            worker.wake()
        try:
            job = jobs.get(None, job_id)
        except KontextError:
            return
        if job.webhook:
            event = "completed" if job.status in TERMINAL_JOB_STATUSES else (
                "start" if job.status == "processing" else None)
            if event:
                outbox.notify(job_id, event, envelope(base_url, job))
            if job.status == "succeeded":
                outbox.notify(job_id, "output", envelope(base_url, job))

    jobs = JobStore(sessions, accounts, on_change=on_change)
    services = Services(accounts, jobs, storage, signer, editor, local_user_id)
    app.state.services = services
    worker = InProcessWorker(jobs, editor, storage)
    app.state.worker = worker
    training_store, training_runner = build_training(sessions, storage, editor, work_dir=training_dir)
    app.state.training_runner = training_runner
    app.add_exception_handler(KontextError, kontext_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    studio_auth = StudioAuth(secret)

    def current_user(request: Request, authorization: Annotated[str | None, Header()] = None,
                     x_key: Annotated[str | None, Header()] = None) -> UserRecord:
        token = x_key or (authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer "
                          else None)
        if token:
            user = accounts.authenticate(token)
            if user is None:
                raise Unauthorized("the API key is unknown or revoked")
            return user
        studio_user = studio_auth.user_id(request)  # the studio's cookie (CSRF-checked on writes)
        if studio_user is not None:
            return accounts.get_user(studio_user)
        client = request.client.host if request.client else ""
        if services.local_user_id is not None and client in ("127.0.0.1", "::1", "testclient") \
                and not is_cross_site(request):  # another site's page in the local browser is not the user
            return accounts.get_user(services.local_user_id)
        raise Unauthorized("send an API key: Authorization: Bearer ks_... (or x-key for the BFL routes)")

    User = Annotated[UserRecord, Depends(current_user)]

    def file_url(base: str, key: str) -> str:
        expires, sig = signer.sign(key)
        return f"{base}/v1/files/{key}?expires={expires}&sig={sig}"

    def envelope(base: str, job: Job) -> dict[str, Any]:
        out = job.output or {}
        files = out.get("files") or []
        metrics: dict[str, Any] = {}
        if job.started_at and job.completed_at:
            metrics["predict_time"] = (job.completed_at - job.started_at).total_seconds()
        if job.completed_at:
            metrics["total_time"] = (job.completed_at - job.created_at).total_seconds()
        return {
            "id": job.id, "model": job.model, "version": "local", "status": job.status,
            "input": dict(job.input), "output": file_url(base, files[0]) if files else None,
            "error": job.error, "error_code": job.error_code, "logs": job.logs or "", "metrics": metrics,
            "progress": job.progress,
            "cost": job.cost,
            "created_at": job.created_at.isoformat(), "started_at": job.started_at and job.started_at.isoformat(),
            "completed_at": job.completed_at and job.completed_at.isoformat(),
            "urls": {"get": f"{base}/v1/predictions/{job.id}", "cancel": f"{base}/v1/predictions/{job.id}/cancel",
                     "stream": f"{base}/v1/predictions/{job.id}/stream"},
            "result": {k: out.get(k) for k in ("seed", "warnings", "identity", "pixel_lock", "recipe")} if out
            else None,
        }

    def active_count(user_id: int) -> int:
        with jobs.readers() as s:
            return int(s.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == user_id, Job.status.in_(("starting", "processing")))) or 0)

    def base_of(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def wait_for(user_id: int, job_id: str, seconds: float) -> Job:
        deadline = time.monotonic() + seconds
        while True:
            job = await asyncio.to_thread(jobs.get, user_id, job_id)
            if job.status in TERMINAL_JOB_STATUSES or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(0.05)

    def _prefer_wait(prefer: str | None) -> float | None:
        if not prefer or not prefer.strip().lower().startswith("wait"):
            return None
        _, _, n = prefer.partition("=")
        try:
            return max(0.0, min(60.0, float(n))) if n else 60.0
        except ValueError:
            return 60.0

    def _deadline(cancel_after: str | None) -> Any:
        if not cancel_after:
            return None
        text = cancel_after.strip().lower()
        units = {"s": 1, "m": 60, "h": 3600}
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
        except (ValueError, KeyError):
            raise InvalidRequest(f"Cancel-After must look like 60s, 5m or 1h; got {cancel_after!r}",
                                 field="Cancel-After") from None
        return utcnow() + timedelta(seconds=seconds)

    def _submit(user: UserRecord, tier: str, body: PredictionIn, idem: str | None, cancel_after: str | None,
                job_id: str | None) -> tuple[str, bool]:
        """Everything before the job exists, in a worker thread: the event loop never waits on the
        database, the image decoder or DNS."""
        spec = get_tier(tier)
        limiter.check(user.id)
        if job_id is None and idem is None and active_count(user.id) >= max_active_per_user:
            raise RateLimited(f"you already have {max_active_per_user} predictions waiting or running; wait for "
                              "one to finish", retry_after=5)
        if body.webhook:  # refused up front, not at delivery time
            resolve_checked(body.webhook, allow_http=allow_http_webhooks, policy=webhook_policy, field="webhook")
        editor.backend_for(spec)  # an unconfigured tier is refused before anything is held
        normalized = normalize_input(body.input, tier, storage, owns_file=lambda key: files.owns(user.id, key),
                                     fetch_url=image_urls,  # inline images become the submitter's files too
                                     on_stored=lambda key, kind, size: own_upload(user.id, key, kind, size))
        price = 0 if free else spec.price_credits
        new_id, created = jobs.submit(user.id, tier, f"flux-kontext-{tier}", normalized, price,
                                      webhook=body.webhook, events=body.webhook_events_filter,
                                      idempotency_key=idem, deadline=_deadline(cancel_after), job_id=job_id)
        if created and dispatcher is not None:
            # Published after the commit; if this process dies in between, the reaper re-sends it.
            dispatcher.enqueue(new_id)
        return new_id, created

    async def _create(request: Request, user: UserRecord, tier: str, body: PredictionIn,
                      prefer: str | None, idem: str | None, cancel_after: str | None,
                      job_id: str | None = None) -> JSONResponse:
        new_id, created = await asyncio.to_thread(_submit, user, tier, body, idem, cancel_after, job_id)
        wait = _prefer_wait(prefer)
        job = await wait_for(user.id, new_id, wait) if wait else await asyncio.to_thread(jobs.get, user.id, new_id)
        return JSONResponse(envelope(base_of(request), job), status_code=201 if created else 200)

    def _tier_of(model: str | None) -> str:
        name = (model or "flux-kontext-dev").split("/")[-1]
        if name not in MODEL_NAMES:
            raise InvalidRequest(f"model must be one of {', '.join(MODEL_NAMES)}; got {model!r}", field="model")
        return MODEL_NAMES[name]

    @app.post("/v1/predictions", status_code=201)
    async def create_prediction(request: Request, body: PredictionIn, user: User,
                                prefer: Annotated[str | None, Header()] = None,
                                idempotency_key: Annotated[str | None, Header()] = None,
                                cancel_after: Annotated[str | None, Header()] = None) -> JSONResponse:
        return await _create(request, user, _tier_of(body.model), body, prefer, idempotency_key, cancel_after)

    @app.post("/v1/models/{owner}/{name}/predictions", status_code=201)
    async def create_model_prediction(request: Request, owner: str, name: str, body: PredictionIn, user: User,
                                      prefer: Annotated[str | None, Header()] = None,
                                      idempotency_key: Annotated[str | None, Header()] = None,
                                      cancel_after: Annotated[str | None, Header()] = None) -> JSONResponse:
        return await _create(request, user, _tier_of(name), body, prefer, idempotency_key, cancel_after)

    @app.put("/v1/predictions/{prediction_id}")
    async def put_prediction(request: Request, prediction_id: str, body: PredictionIn, user: User,
                             prefer: Annotated[str | None, Header()] = None) -> JSONResponse:
        if not 8 <= len(prediction_id) <= 32 or not prediction_id.isalnum():
            raise InvalidRequest("prediction id must be 8-32 letters or digits", field="id")
        return await _create(request, user, _tier_of(body.model), body, prefer, None, None,
                             job_id=prediction_id.lower())

    @app.get("/v1/predictions/{prediction_id}", name="get_prediction")
    def get_prediction(request: Request, prediction_id: str, user: User) -> dict[str, Any]:
        return envelope(base_of(request), jobs.get(user.id, prediction_id))

    @app.get("/v1/predictions/{prediction_id}/stream")
    async def stream_prediction(request: Request, prediction_id: str, user: User) -> StreamingResponse:
        """Server-sent events: ``start``, ``progress``, ``output``, ``completed``."""
        jobs.get(user.id, prediction_id)  # 404 before the stream opens

        async def events() -> AsyncIterator[str]:
            last: tuple[str, float] | None = None
            while True:
                job = jobs.get(user.id, prediction_id)
                state = (job.status, round(job.progress, 3))
                if state != last:
                    if last is None or (last[0] == "starting" and job.status != "starting"):
                        yield _sse("start", {"id": job.id, "status": job.status})
                    yield _sse("progress", {"id": job.id, "status": job.status, "progress": job.progress})
                    last = state
                if job.status in TERMINAL_JOB_STATUSES:
                    env = envelope(base_of(request), job)
                    if env["output"]:
                        yield _sse("output", {"output": env["output"]})
                    yield _sse("completed", env)
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/predictions")
    def list_predictions(request: Request, user: User, limit: int = 50, q: str | None = None,
                         tier: str | None = None, status: str | None = None) -> dict[str, Any]:
        """The caller's predictions, newest first; ``q`` matches words in the prompt, ``tier`` and ``status``
        filter."""
        items = search_jobs(jobs.readers, user.id, q=q, tier=tier, status=status, limit=limit)
        return {"results": [envelope(base_of(request), j) for j in items], "next": None}

    @app.post("/v1/predictions/{prediction_id}/cancel", name="cancel_prediction")
    def cancel_prediction(request: Request, prediction_id: str, user: User) -> dict[str, Any]:
        jobs.cancel(user.id, prediction_id)
        return envelope(base_of(request), jobs.get(user.id, prediction_id))

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        out = []
        for name, tier in MODEL_NAMES.items():
            spec = TIERS[tier]
            try:
                editor.backend_for(spec)
                ready, missing = True, None
            except KontextError as exc:
                ready, missing = False, str(exc)
            out.append({"name": name, "owner": "black-forest-labs", "tier": tier, "title": spec.title,
                        "credits": 0 if free else spec.price_credits, "max_references": spec.max_references,
                        "default_steps": spec.steps, "description": spec.description, "trades": spec.trades,
                        "backend": spec.backend, "configured": ready, "missing": missing})
        return {"results": out}

    @app.get("/v1/account")
    def account(user: User) -> dict[str, Any]:
        bal = accounts.balance(user.id)
        return {"id": user.id, "email": user.email, "credits": {"available": bal.available, "held": bal.held},
                "free": free}

    @app.get("/v1/account/ledger")
    def account_ledger(user: User, limit: int = 100) -> dict[str, Any]:
        """The user's credit movements, newest first (holds, captures, releases, grants)."""
        mine = (f"user:{user.id}:available", f"user:{user.id}:held")
        with jobs.readers() as s:
            rows = s.scalars(select(LedgerEntry).where(LedgerEntry.account.in_(mine))
                             .order_by(LedgerEntry.id.desc()).limit(max(1, min(500, limit)))).all()
            return {"results": [{"id": e.id, "job_id": e.job_id, "account": e.account.rsplit(":", 1)[-1],
                                 "amount": e.amount, "kind": e.kind, "created_at": e.created_at.isoformat()}
                                for e in rows]}

    @app.post("/v1/files", status_code=201)
    async def upload_file(request: Request, user: User) -> dict[str, Any]:
        check_content_length(request.headers.get("content-length"), MAX_UPLOAD)
        data = await read_limited(request.stream(), MAX_UPLOAD)  # stops at the cap: 413, nothing stored
        kind = sniff_image(bytes(data))
        key = upload_key(bytes(data), kind)
        storage.put(key, bytes(data))
        await asyncio.to_thread(own_upload, user.id, key, kind, len(data))
        return {"id": f"file:{key}", "content_type": MEDIA_TYPES[kind], "size": len(data),
                "urls": {"get": file_url(base_of(request), key)}}

    @app.get("/v1/files")
    def list_files(request: Request, user: User, limit: int = 100) -> dict[str, Any]:
        """Your uploads, newest first: ids usable as ``input_image`` and short-lived download URLs."""
        return {"results": [{"id": f"file:{f.key}", "content_type": f.content_type, "size": f.size,
                             "created_at": f.created_at.isoformat(), "urls": {"get": file_url(base_of(request), f.key)}}
                            for f in files.list(user.id, limit)]}

    @app.get("/v1/files/{key:path}", name="get_file")
    def get_file(key: str, expires: int, sig: str) -> Response:
        services.signer.verify(key, expires, sig)
        data = storage.get(key)
        kind = key.rsplit(".", 1)[-1]
        media = FILE_TYPES.get(kind, "application/octet-stream")
        return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                          "Cache-Control": "private, max-age=600"})

    # -- BFL-compatible shim ------------------------------------------------------------------------
    @app.post("/v1/flux-kontext-{tier}")
    async def bfl_submit(request: Request, tier: str, user: User) -> dict[str, Any]:
        try:
            raw = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raw = None
        if not isinstance(raw, dict):
            raise InvalidRequest("the body must be a JSON object", field="body")
        fields = {k: v for k, v in raw.items() if k not in ("webhook_url", "webhook_secret")}
        body = PredictionIn(model=f"flux-kontext-{tier}", input=fields, webhook=raw.get("webhook_url"))
        resp = await _create(request, user, _tier_of(f"flux-kontext-{tier}"), body, None, None, None)
        pid = json.loads(bytes(resp.body))["id"]
        return {"id": pid, "polling_url": str(request.url_for("bfl_get_result").include_query_params(id=pid))}

    @app.get("/v1/get_result", name="bfl_get_result")
    def bfl_get_result(request: Request, id: str, user: User) -> dict[str, Any]:
        try:
            job = jobs.get(user.id, id)
        except KontextError:
            return {"id": id, "status": "Task not found", "result": None, "progress": None}
        env = envelope(base_of(request), job)
        result = {"sample": env["output"], "seed": (job.output or {}).get("seed")} if job.status == "succeeded" \
            else None
        status = BFL_MODERATION.get(job.error_code or "", BFL_STATUS[job.status])
        return {"id": id, "status": status, "result": result, "progress": job.progress, "error": job.error}

    # -- the studio: its API (open to every client) and its pages at / -------------------------------
    def submit_for_studio(me: UserRecord, tier: str, payload: dict[str, Any], idem: str | None = None) -> str:
        return _submit(me, tier, PredictionIn(**payload), idem, None, None)[0]

    app.include_router(studio_api_router(
        sessions=sessions, readers=jobs.readers, accounts=accounts, jobs=jobs, storage=storage, user=current_user,
        envelope_for=lambda request, job: envelope(base_of(request), job),
        file_url_for=lambda request, key: file_url(base_of(request), key), owns_file=files.owns,
        submit=submit_for_studio, free=free))
    app.state.library = SqlLibrary(sessions, secret)
    app.state.server_settings = SqlServerSettings(sessions, secret)
    if stored_bfl_key := app.state.server_settings.get(BFL_KEY):  # entered by an administrator in the studio
        install_bfl_key(editor, stored_bfl_key)
    app.include_router(admin_settings_router(app.state.server_settings, editor, current_user))
    app.include_router(library_router(app.state.library, sessions, current_user,
                                      lambda request, key: file_url(base_of(request), key)))
    mount_studio(app, auth=studio_auth, accounts=accounts, jobs=jobs, editor=editor, free=free,
                 file_url_for=lambda request, key: file_url(base_of(request), key))

    app.include_router(training_router(
        training_store, training_runner, storage, current_user, lambda request, key: file_url(base_of(request), key),
        # Celery workers run edit jobs only; a training run submitted here would wait for a runner forever.
        unavailable=("LoRA training runs on a single-machine server (no KONTEXT_BROKER_URL); this server sends "
                     "jobs to Celery workers. Train with `kontext train-lora run` on a GPU machine, or on a "
                     "server without a broker") if dispatcher is not None else None))
    app.include_router(credentials_router(storage, services.signer.verify))
    app.include_router(tools_router(storage=storage, sessions=sessions, user=current_user, signer=signer, free=free,
                                    submit=submit_for_studio, get_job=jobs.get,
                                    envelope_for=lambda request, job: envelope(base_of(request), job)))
    publish_complete_schema(app)
    return app
