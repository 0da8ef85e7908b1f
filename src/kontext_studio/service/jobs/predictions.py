"""Predictions as a service: submit (every check before anything is held), read, search, cancel, wait, and
the Replicate-style envelope. The HTTP routers, the studio's pages and the BFL shim all call this one class.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from kontext_studio.core.catalogue import CATALOGUE, Catalogue
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.accounts.accounts_common import UserRecord
from kontext_studio.service.db import TERMINAL_JOB_STATUSES, Job, JobStatus, utcnow
from kontext_studio.service.db.models import TRAINING_TIER, WEBHOOK_EVENTS
from kontext_studio.service.inputs import IMAGE_FIELDS, normalize_input, num_outputs, upload_sha256
from kontext_studio.service.jobs.dispatch_base import Dispatcher
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.limits import Limiter, MemoryRateLimiter, RateLimited
from kontext_studio.service.security.ssrf import AddressPolicy, is_public_address, resolve_checked
from kontext_studio.service.security.text import check_text, printable
from kontext_studio.service.security.uploads import MEDIA_TYPES
from kontext_studio.service.storage.files_sql import SqlFiles
from kontext_studio.service.storage.signed_urls import UrlSigner
from kontext_studio.service.storage.storage_base import Storage

SEARCH_LIMIT = 100
MAX_CANCEL_AFTER = 7 * 24 * 3600


@dataclass(frozen=True)
class Submission:
    """One prediction request as the faces hand it over (already parsed, not yet validated)."""

    input: dict[str, Any]
    model: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None


@dataclass
class SubmitPolicy:
    """The server's submit rules."""

    free: bool = False
    max_active_per_user: int = 8
    allow_http_webhooks: bool = False
    webhook_policy: AddressPolicy = is_public_address
    image_urls: Callable[[str, str], bytes] | None = None
    dispatcher: Dispatcher | None = None
    limiter: Limiter = field(default_factory=lambda: MemoryRateLimiter(60, 60.0))  # per user, per minute
    catalogue: Catalogue = CATALOGUE  # the models and this server's prices (KONTEXT_PRICES)


def tier_of(model: str | None) -> str:
    """The catalogue key (``dev``, ``klein-4b``...) a model name names: ``flux-2-klein-4b``,
    ``black-forest-labs/flux-2-klein-4b`` or the key itself; none means ``flux-kontext-dev``.

    Raises:
        InvalidRequest: an unknown name (listing the valid ones), or one with another owner.
    """
    text = model if model is not None else "flux-kontext-dev"
    if not isinstance(text, str):
        raise InvalidRequest(f"model must be a model name such as flux-kontext-dev; got {model!r}"[:300],
                             field="model")
    entry = CATALOGUE.find(text)
    if entry is None or ("/" in text and text.split("/")[0].lower() != entry.name.split("/")[0]):
        names = ", ".join(e.name for e in CATALOGUE)
        raise InvalidRequest(f"model must be one of {names}; got {model!r}"[:1200], field="model")
    return entry.key


def model_name(tier: str) -> str:
    """The name a job records for the model it runs on (``flux-kontext-dev``, ``flux-2-klein-4b``)."""
    return CATALOGUE.resolve(tier).short_name


def parse_deadline(cancel_after: str | None) -> datetime | None:
    """The deadline a ``Cancel-After`` header (``60s``, ``5m``, ``1h`` or seconds) sets.

    Raises:
        InvalidRequest: not a finite, positive duration of at most a week.
    """
    if not cancel_after:
        return None
    text = cancel_after.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except (ValueError, KeyError):
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_CANCEL_AFTER:
        raise InvalidRequest(f"Cancel-After must be a duration like 60s, 5m or 1h, at most 168h; got {cancel_after!r}",
                             field="Cancel-After")
    return utcnow() + timedelta(seconds=seconds)


def prefer_wait(prefer: str | None) -> float | None:
    """Seconds a ``Prefer: wait[=n]`` header asks to hold the answer (None: answer at once)."""
    if not prefer or not prefer.strip().lower().startswith("wait"):
        return None
    _, _, n = prefer.partition("=")
    try:
        value = float(n) if n else 60.0
    except ValueError:
        return 60.0
    return max(0.0, min(60.0, value)) if math.isfinite(value) else 60.0


class PredictionService:
    """Submit, read, search and cancel predictions; build their envelopes.

    Args:
        jobs: the job store.
        files: the users' file records (uploads are recorded as the uploader's).
        storage: where inputs are stored.
        editor: which tiers are configured.
        signer: signs file URLs in envelopes.
        policy: the submit rules.
    """

    def __init__(self, jobs: JobStore, files: SqlFiles, storage: Storage, editor: Editor, signer: UrlSigner,
                 policy: SubmitPolicy):
        self.jobs, self.files, self.storage, self.editor, self.signer = jobs, files, storage, editor, signer
        self.policy = policy

    # -- submit -----------------------------------------------------------------------------------------
    def own_upload(self, user_id: int, key: str, kind: str, size: int) -> None:
        """Record a stored upload as the user's file: only its owner may name it in an input."""
        self.files.record(user_id, key, upload_sha256(key), MEDIA_TYPES[kind], size)

    def active_count(self, user_id: int) -> int:
        """Waiting + running predictions of the user."""
        with self.jobs.readers() as s:
            return int(s.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == user_id, Job.status.in_(("starting", "processing")))) or 0)

    def submit(self, user: UserRecord, tier: str, body: Submission, *, idempotency_key: str | None = None,
               cancel_after: str | None = None, job_id: str | None = None) -> tuple[str, bool]:
        """Validate, hold the price and queue one prediction. Blocking: call it off the event loop.

        Returns:
            (prediction id, created): ``created`` is False for an idempotent replay.

        Raises:
            InvalidRequest: a bad field (named); nothing is held.
            RateLimited: over the rate limit or the active-prediction cap.
            InsufficientCredits: the price is not available.
            TierNotConfigured: the tier has no backend on this server.
        """
        job, existing_id = self.submit_job(user, tier, body, idempotency_key=idempotency_key,
                                           cancel_after=cancel_after, job_id=job_id)
        return (job.id, True) if job is not None else (str(existing_id), False)

    def submit_job(self, user: UserRecord, tier: str, body: Submission, *, idempotency_key: str | None = None,
                   cancel_after: str | None = None, job_id: str | None = None) -> tuple[Job | None, str | None]:
        """``submit``, answering the new prediction itself as it was queued (the API's answer to a submit is
        built from it, with no second read). Blocking: call it off the event loop.

        Returns:
            (the new prediction, None), or (None, the existing prediction's id) for an idempotent replay.

        Raises:
            InvalidRequest: a bad field (named); nothing is held.
            RateLimited: over the rate limit or the active-prediction cap.
            InsufficientCredits: the price is not available.
            TierNotConfigured: the tier has no backend on this server.
        """
        policy = self.policy
        entry = policy.catalogue.resolve(tier, "model")
        deadline = parse_deadline(cancel_after)
        check_events(body.webhook_events_filter)
        if body.webhook is not None and not isinstance(body.webhook, str):
            raise InvalidRequest(f"webhook must be an https URL; got {body.webhook!r}", field="webhook")
        policy.limiter.check(user.id)
        if job_id is None and idempotency_key is None and self.active_count(user.id) >= policy.max_active_per_user:
            raise RateLimited(f"you already have {policy.max_active_per_user} predictions waiting or running; wait "
                              "for one to finish", retry_after=5)
        if body.webhook:  # refused up front, not at delivery time
            resolve_checked(body.webhook, allow_http=policy.allow_http_webhooks, policy=policy.webhook_policy,
                            field="webhook")
        self.editor.backend_for(entry)  # an unconfigured model is refused before anything is held
        normalized = normalize_input(body.input, tier, self.storage,
                                     owns_file=lambda key: self.files.owns(user.id, key),
                                     fetch_url=policy.image_urls,  # inline images become the submitter's files
                                     on_stored=lambda key, kind, size: self.own_upload(user.id, key, kind, size))
        # Each output is a picture made and charged: num_outputs 3 holds (and captures) three times the price.
        price = 0 if policy.free else entry.price_credits * num_outputs(normalized, entry.key)
        job, existing_id = self.jobs.submit_job(user.id, entry.key, entry.short_name, normalized, price,
                                                webhook=body.webhook, events=body.webhook_events_filter,
                                                idempotency_key=idempotency_key, deadline=deadline, job_id=job_id)
        if job is not None and policy.dispatcher is not None:
            # Published after the commit; if this process dies in between, the reaper re-sends it.
            policy.dispatcher.enqueue(job.id)
        return job, existing_id

    # -- read -------------------------------------------------------------------------------------------
    def get(self, user_id: int | None, job_id: str) -> Job:
        """One of the user's predictions.

        Raises:
            JobNotFound: unknown, or another user's.
        """
        return self.jobs.get(user_id, job_id)

    async def wait(self, user_id: int, job_id: str, seconds: float) -> Job:
        """The prediction once it ended, or as it is after ``seconds`` (polls off the event loop)."""
        deadline = time.monotonic() + seconds
        while True:
            job = await asyncio.to_thread(self.jobs.get, user_id, job_id)
            if job.status in TERMINAL_JOB_STATUSES or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(0.05)

    def cancel(self, user_id: int, job_id: str) -> Job:
        """Cancel a prediction (a finished one stays as it is) and return it."""
        self.jobs.cancel(user_id, job_id)
        return self.jobs.get(user_id, job_id)

    def search(self, user_id: int, *, q: str | None = None, tier: str | None = None, status: str | None = None,
               limit: int = 50) -> list[Job]:
        """The user's predictions, newest first, filtered by words in the prompt, tier and status.

        Raises:
            InvalidRequest: an unknown tier or status (naming the accepted values), or unreadable text in ``q``.
        """
        stmt = select(Job).where(Job.user_id == user_id, Job.tier != TRAINING_TIER)
        if tier:
            stmt = stmt.where(Job.tier == CATALOGUE.resolve(tier, "tier").key)
        if status:
            allowed = [s.value for s in JobStatus]
            if status not in allowed:
                raise InvalidRequest(f"status must be one of {', '.join(allowed)}; got {status!r}", field="status")
            stmt = stmt.where(Job.status == status)
        if q:
            check_text(q, "q")
        for word in (q or "").split()[:8]:
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(Job.input["prompt"].as_string().ilike(f"%{escaped}%", escape="\\"))
        with self.jobs.readers() as s:
            rows = list(s.scalars(stmt.order_by(Job.created_at.desc()).limit(max(1, min(SEARCH_LIMIT, limit)))).all())
            for row in rows:
                s.expunge(row)
            return rows

    def queue_position(self, job: Job) -> int:
        """How many predictions wait ahead of ``job`` (0 once it runs or ended)."""
        if job.status != JobStatus.STARTING:
            return 0
        with self.jobs.readers() as s:
            ahead = s.scalar(select(func.count()).select_from(Job).where(
                Job.status.in_((JobStatus.STARTING, JobStatus.PROCESSING)), Job.created_at < job.created_at))
            return int(ahead or 0)

    def output_bytes(self, job: Job) -> bytes | None:
        """The first output of a succeeded prediction."""
        files = (job.output or {}).get("files") or []
        return self.storage.get(files[0]) if files and job.status == JobStatus.SUCCEEDED else None

    @staticmethod
    def recipe_of(job: Job) -> dict[str, Any]:
        """The prediction's input as it can be submitted again (images as file ids, the seed it used)."""
        stored = dict(job.input)
        images = stored.pop("images", [])
        again: dict[str, Any] = {f: f"file:{k}" for f, k in zip(IMAGE_FIELDS, images, strict=False)}
        again.update(stored)
        seed = (job.output or {}).get("seed")
        if seed is not None:
            again["seed"] = seed
        return {"id": job.id, "tier": job.tier, "model": job.model, "status": job.status, "input": again,
                "recipe": (job.output or {}).get("recipe")}

    # -- envelopes --------------------------------------------------------------------------------------
    def file_url(self, base: str, key: str) -> str:
        """A signed, expiring URL of a stored file."""
        expires, sig = self.signer.sign(key)
        return f"{base}/v1/files/{key}?expires={expires}&sig={sig}"

    def envelope(self, base: str, job: Job) -> dict[str, Any]:
        """The Replicate-style prediction object."""
        out = job.output or {}
        files = out.get("files") or []
        metrics: dict[str, Any] = {}
        if job.started_at and job.completed_at:
            metrics["predict_time"] = (job.completed_at - job.started_at).total_seconds()
        if job.completed_at:
            metrics["total_time"] = (job.completed_at - job.created_at).total_seconds()
        return {
            "id": job.id, "model": job.model, "version": "local", "status": job.status,
            # printable(): text stored before the boundary refused lone surrogates still lists.
            # One picture: its URL; several (num_outputs): a list, as Replicate answers multi-output models.
            "input": printable(dict(job.input)),
            "output": ([self.file_url(base, f) for f in files] if len(files) > 1 else
                       self.file_url(base, files[0]) if files else None),
            "error": printable(job.error), "error_code": job.error_code, "logs": printable(job.logs or ""),
            "metrics": metrics,
            "progress": job.progress,
            "cost": job.cost,
            "created_at": job.created_at.isoformat(), "started_at": job.started_at and job.started_at.isoformat(),
            "completed_at": job.completed_at and job.completed_at.isoformat(),
            "urls": {"get": f"{base}/v1/predictions/{job.id}", "cancel": f"{base}/v1/predictions/{job.id}/cancel",
                     "stream": f"{base}/v1/predictions/{job.id}/stream"},
            "result": printable({k: out.get(k) for k in ("seed", "warnings", "identity", "pixel_lock", "recipe",
                                                         "outputs") if k != "outputs" or out.get(k)})
            if out else None,
        }


def check_events(events: Any) -> None:
    """Refuse webhook event names other than start, output, logs and completed.

    Raises:
        InvalidRequest: not a list of known names.
    """
    if events is None:
        return
    if not isinstance(events, list) or not all(isinstance(e, str) and e in WEBHOOK_EVENTS for e in events):
        raise InvalidRequest(f"webhook_events_filter must list some of {', '.join(WEBHOOK_EVENTS)}; got {events!r}",
                             field="webhook_events_filter")

