"""The composition root: the one place that builds the service's parts and wires them together.

``kontext serve`` (through ``server.build_app``), the Celery worker (``build_worker``), the tests and the
benchmarks all build through here, so a part is swapped in one place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from kontext_studio.core.catalogue import CATALOGUE
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import KontextError
from kontext_studio.service.accounts.accounts_sql import SqlAccounts
from kontext_studio.service.background import BackgroundService
from kontext_studio.service.container import ServiceOptions, Services
from kontext_studio.service.db import TERMINAL_JOB_STATUSES, make_session_factory
from kontext_studio.service.jobs.edit_sessions import EditSessions
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.predictions import PredictionService, SubmitPolicy
from kontext_studio.service.jobs.reaper import Reaper
from kontext_studio.service.jobs.series import SeriesService
from kontext_studio.service.jobs.worker import InProcessWorker
from kontext_studio.service.limits import LimiterFactory, memory_limiters
from kontext_studio.service.models import ModelCatalogue
from kontext_studio.service.security.ssrf import safe_client
from kontext_studio.service.storage.file_service import FileService
from kontext_studio.service.storage.files_sql import SqlFiles
from kontext_studio.service.storage.signed_urls import UrlSigner
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.training.runner import build_training
from kontext_studio.service.training.service import TrainingService
from kontext_studio.service.webhooks import WebhookOutbox, WebhookSender

# Celery workers run edit jobs only; a training run submitted to such a server would wait forever.
TRAINING_NEEDS_LOCAL = ("LoRA training runs on a single-machine server (no KONTEXT_BROKER_URL); this server sends "
                        "jobs to Celery workers. Train with `kontext train-lora run` on a GPU machine, or on a "
                        "server without a broker")


def webhook_secret(secret: bytes) -> str:
    """The Standard Webhooks secret (``whsec_``...) derived from the server secret."""
    key = hmac.new(secret, b"kontext-studio webhooks", hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode()


def build_job_store(engine: Any, *, free: bool = False) -> tuple[Any, SqlAccounts, JobStore]:
    """The database's session factory, the accounts and the job store (what a Celery worker needs)."""
    sessions = make_session_factory(engine)
    accounts = SqlAccounts(sessions, free=free)
    return sessions, accounts, JobStore(sessions, accounts)


def build_limiters(opts: ServiceOptions) -> LimiterFactory:
    """Where the rate limits count: in Redis when the installation has one (several API processes then share
    one count; a client gets each limit once, not once per process), else in this process's memory.

    With Redis, a request finding it unreachable is not refused for it: the limiter counts in memory for a
    while and logs a warning (``limits_redis.RedisRateLimiter``). That choice is deliberate: the limits
    protect the service and must never be what takes it down.
    """
    if opts.limits_redis_url:
        from kontext_studio.service.limits.limits_redis import RedisLimiters

        return RedisLimiters(opts.limits_redis_url, opts.limits_key_prefix)
    return memory_limiters


def build_services(engine: Any, storage: Storage, editor: Editor, secret: bytes,
                   options: ServiceOptions | None = None) -> Services:
    """Build every part of the HTTP service.

    Args:
        engine: SQLAlchemy engine of a migrated database.
        storage: file storage for uploads and outputs.
        editor: the engine that runs jobs (its backends decide what a tier does).
        secret: server secret (signed file URLs, studio sessions, webhook signing).
        options: how the server behaves (defaults: see ``ServiceOptions``).

    Returns:
        The container; its ``background`` list is what the app's lifespan starts.
    """
    from kontext_studio.service.admin import SqlServerSettings
    from kontext_studio.service.library import SqlLibrary
    from kontext_studio.web.auth import StudioAuth  # the studio's sessions live with the pages

    opts = options or ServiceOptions()
    sessions, accounts, jobs = build_job_store(engine, free=opts.free)
    files = SqlFiles(sessions, readers=jobs.readers)
    signer = UrlSigner(secret)
    limiters = build_limiters(opts)
    policy = SubmitPolicy(free=opts.free, max_active_per_user=opts.max_active_per_user,
                          allow_http_webhooks=opts.allow_http_webhooks, webhook_policy=opts.webhook_policy,
                          image_urls=opts.image_urls, dispatcher=opts.dispatcher,
                          limiter=limiters("predictions", opts.rate_limit, 60.0),
                          catalogue=CATALOGUE.with_prices(dict(opts.prices)) if opts.prices else CATALOGUE)
    predictions = PredictionService(jobs, files, storage, editor, signer, policy)
    base_url = opts.public_url.rstrip("/")
    outbox = WebhookOutbox(
        sessions, webhook_secret(secret),
        client_factory=lambda: safe_client(allow_http=opts.allow_http_webhooks, policy=opts.webhook_policy),
        payload_for=lambda job: predictions.envelope(base_url, job),
    )
    worker = InProcessWorker(jobs, editor, storage)

    def on_change(job_id: str) -> None:
        worker.wake()
        if not jobs.webhook_of(job_id):  # most jobs have none: one column read, not the whole job
            return
        try:
            job = jobs.get(None, job_id)
        except KontextError:
            return
        if job.webhook:
            event = "completed" if job.status in TERMINAL_JOB_STATUSES else (
                "start" if job.status == "processing" else None)
            if event:
                outbox.notify(job_id, event, predictions.envelope(base_url, job))
            if job.status == "succeeded":
                outbox.notify(job_id, "output", predictions.envelope(base_url, job))

    jobs.on_change = on_change
    # A new job waits ("starting"): no webhook event to look for, only the worker to wake.
    jobs.on_submit = lambda _job_id: worker.wake()
    training_store, runner = build_training(sessions, storage, editor, work_dir=opts.training_dir,
                                          accounts=accounts, price=opts.training_price)
    in_process = opts.start_worker and opts.dispatcher is None
    background: list[BackgroundService] = [WebhookSender(outbox)]
    if in_process:
        background += [worker, runner]
    if opts.dispatcher is not None:
        background.append(Reaper(jobs, opts.dispatcher))
    return Services(
        options=opts, accounts=accounts, jobs=jobs, storage=storage, signer=signer, editor=editor,
        predictions=predictions, files=FileService(storage, files, signer),
        edit_sessions=EditSessions(sessions, predictions),
        series=SeriesService(sessions, accounts, predictions, opts.free),
        models=ModelCatalogue(editor, opts.free, policy.catalogue),
        training=TrainingService(training_store, runner, storage,
                                 unavailable=TRAINING_NEEDS_LOCAL if opts.dispatcher is not None else None,
                                 accounts=accounts),
        studio_auth=StudioAuth(secret, sessions=sessions), notifier=outbox, worker=worker, background=background,
        limiters=limiters,
        extras={"library": SqlLibrary(sessions, secret), "server_settings": SqlServerSettings(sessions, secret)},
    )


def build_worker(engine: Any, storage: Storage, editor: Editor, worker_id: str) -> tuple[JobStore, InProcessWorker]:
    """What a Celery worker process runs jobs with: the job store and a worker (driven per message)."""
    _sessions, _accounts, store = build_job_store(engine)
    return store, InProcessWorker(store, editor, storage, worker_id=worker_id)
