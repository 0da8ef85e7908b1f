"""Dispatch over Celery and Redis: many machines, one worker process per GPU, the same job lifecycle.

A broker message only says "job <id> is waiting". The worker that receives it claims exactly that job
(``JobStore.claim_job``: attempt + 1, a lease) and runs it through the in-process worker's code path
(``InProcessWorker.run``), so progress, cancel, fenced completion and credit settlement are identical on one
machine and on many.

Delivery is at-least-once and the effect exactly-once:

* ``task_acks_late``: the message is acknowledged after the job ran, so a worker that dies mid-job leaves it
  unacknowledged; Redis hands it out again after ``visibility_timeout``, which must exceed the longest job
  (default 2 h) or a healthy long job would be delivered a second time.
* ``task_reject_on_worker_lost``: with the prefork pool, a child killed mid-job (OOM, segfault) puts the
  message back at once instead of acknowledging it.
* ``worker_prefetch_multiplier = 1`` and concurrency 1: a worker holds one message, the job it runs.
* A second delivery is harmless: the claim only takes a job that is waiting, and the database counts
  attempts (a job that kills its worker every time fails after ``MAX_ATTEMPTS``).
* A job whose worker died keeps its lease until it expires; ``jobs.reaper`` then puts it back and sends a
  new message. The reaper also re-sends jobs left waiting too long (a message lost when Redis restarted).

Run a worker with ``run_worker(make_celery(...))`` or, configured from the environment, with
``celery -A kontext_studio.service.jobs.celery_app worker --pool=solo --concurrency=1`` (see ``celery_app``).
The solo pool runs jobs in the worker's main process, where the editor (the pipeline) stays loaded between
jobs; a ``kill -9`` there loses the whole process and the reaper recovers its job when the lease expires.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import ChannelError
from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from kontext_studio.core.catalogue import CATALOGUE, Family
from kontext_studio.core.engine import Editor
from kontext_studio.service.db import make_engine
from kontext_studio.service.jobs.jobs_common import LEASE_SECONDS
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.worker import InProcessWorker
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.storage.storage_local import LocalStorage

logger = logging.getLogger("kontext_studio.dispatch")

TASK_NAME = "kontext_studio.run_job"
DEFAULT_QUEUE = "kontext"
DEFAULT_VISIBILITY_TIMEOUT = 2 * 3600
"""Seconds Redis waits for an unacknowledged message before handing it out again: above the longest job."""

EditorFactory = Callable[..., Editor]
StorageFactory = Callable[[], Storage]


def settings_editor() -> Editor:
    """The default editor factory: the installation's engine, configured by ``Settings.from_env``."""
    from kontext_studio.bootstrap import build_editor
    from kontext_studio.settings import Settings

    return build_editor(Settings.from_env())


def resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable, or the one a ``"package.module:attribute"`` string names (importable in every worker)."""
    if callable(target):
        return target
    module, sep, attr = str(target).partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'package.module:attribute', got {target!r}")
    found = importlib.import_module(module)
    for part in attr.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{target!r} is not callable")
    return found


def make_celery(broker_url: str, database_url: str, *, storage_root: str | os.PathLike[str] | None = None,
                storage_factory: str | StorageFactory | None = None,
                editor_factory: str | EditorFactory = "kontext_studio.service.jobs.dispatch_celery:settings_editor",
                editor_options: Mapping[str, Any] | None = None, lease_seconds: int = LEASE_SECONDS,
                visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT, queue: str = DEFAULT_QUEUE,
                key_prefix: str = "", warm_tiers: tuple[str, ...] = (), main: str = "kontext_studio",
                **celery_settings: Any) -> Celery:
    """A Celery app whose ``run_job`` task claims and runs one job through ``InProcessWorker.run``.

    The same call configures both sides: the API (``CeleryDispatcher`` publishes) and the workers (consume).
    Everything the worker needs travels in the app's configuration (``app.conf.kontext_*``); nothing is read
    from the environment here.

    Args:
        broker_url: the Redis broker, e.g. ``redis://redis:6379/0``.
        database_url: the service database (PostgreSQL when several machines share it).
        storage_root: a folder every worker and the API see (shared file system), used as ``LocalStorage``.
        storage_factory: instead of ``storage_root``: a callable (or ``"module:attr"``) returning the storage.
        editor_factory: callable (or ``"module:attr"``, resolved in the worker) returning the worker's
            ``Editor``, called once per worker process with ``editor_options`` as keyword arguments; the
            default builds the installation's engine from ``Settings.from_env()``.
        editor_options: keyword arguments for ``editor_factory`` (JSON-serialisable when given by name).
        lease_seconds: how long a claim stays valid without a progress report; the reaper re-queues a job
            whose lease expired. Longer than the longest gap between two progress reports.
        visibility_timeout: seconds before Redis redelivers an unacknowledged message; above the longest job.
        queue: the queue the jobs go through.
        key_prefix: prefix for every Redis key the broker uses (several installations or test runs on one
            Redis).
        warm_tiers: tiers whose backend is built when a worker process starts (not at its first job).
        main: the Celery app's name.
        **celery_settings: further Celery settings (lower-case names), applied last.

    Returns:
        The configured app; ``CeleryDispatcher(app)`` enqueues, ``run_worker(app)`` consumes.

    Raises:
        ValueError: no storage given, or a non-positive lease or visibility timeout.
    """
    if storage_root is None and storage_factory is None:
        raise ValueError("give storage_root (a folder all workers share) or storage_factory")
    if lease_seconds <= 0 or visibility_timeout <= 0:
        raise ValueError(f"lease_seconds and visibility_timeout must be > 0, got {lease_seconds}, "
                         f"{visibility_timeout}")
    app = Celery(main, broker=broker_url, set_as_current=False)
    transport: dict[str, Any] = {"visibility_timeout": int(visibility_timeout)}
    if key_prefix:
        transport["global_keyprefix"] = key_prefix
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        kontext_database_url=database_url,
        kontext_storage_root=None if storage_root is None else os.fspath(storage_root),
        kontext_storage_factory=storage_factory,
        kontext_editor_factory=editor_factory,
        kontext_editor_options=dict(editor_options or {}),
        kontext_lease_seconds=int(lease_seconds),
        kontext_queue=queue,
        kontext_warm_tiers=tuple(warm_tiers),
    )
    app.conf.update(**celery_settings)

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
              autoretry_for=(OperationalError,), retry_backoff=True, retry_kwargs={"max_retries": 8})
    def run_job(self: Any, job_id: str) -> str:
        """Claim ``job_id`` if it is waiting and run it to its end; a duplicate or stale message is a no-op."""
        worker_id = f"{self.request.hostname or 'celery'}/{os.getpid()}"
        return execute(app, job_id, worker_id)

    @worker_process_init.connect(weak=False)
    def _warm(**_kwargs: Any) -> None:
        from celery import current_app

        if current_app._get_current_object() is not app:  # another app's worker (or none) in this process
            return
        try:
            warm(app)
        except Exception:  # e.g. the database is briefly down: the first job builds the runtime instead
            logger.exception("could not prepare the worker at start")

    return app


@dataclass
class WorkerRuntime:
    """What one worker process keeps between jobs: database engine, store, storage and the warm editor."""

    engine: Engine
    store: JobStore
    storage: Storage
    editor: Editor
    worker: InProcessWorker
    lease_seconds: int


_runtimes: dict[tuple[int, int], WorkerRuntime] = {}
_runtimes_lock = threading.Lock()


def runtime(app: Celery) -> WorkerRuntime:
    """This process's runtime for ``app``, built on first use (per process: never shared across a fork)."""
    key = (id(app), os.getpid())
    with _runtimes_lock:
        found = _runtimes.get(key)
        if found is not None:
            return found
        conf = app.conf
        from kontext_studio.service.composition import build_worker

        engine = make_engine(conf.kontext_database_url)
        if conf.kontext_storage_factory is not None:
            storage: Storage = resolve(conf.kontext_storage_factory)()
        else:
            storage = LocalStorage(conf.kontext_storage_root)
        editor = resolve(conf.kontext_editor_factory)(**conf.kontext_editor_options)
        store, worker = build_worker(engine, storage, editor, f"celery/{os.getpid()}")
        found = WorkerRuntime(engine, store, storage, editor, worker, int(conf.kontext_lease_seconds))
        _runtimes[key] = found
        return found


def warm(app: Celery) -> WorkerRuntime:
    """Build the runtime now and the backends of ``kontext_warm_tiers``, so the first job waits for nothing."""
    rt = runtime(app)
    for tier in app.conf.kontext_warm_tiers:
        try:
            rt.editor.backend_for(tier)
        except Exception:
            logger.exception("could not warm the %s tier; it will be built at its first job", tier)
    logger.info("worker process %d ready: database %s, lease %d s", os.getpid(),
                rt.engine.url.render_as_string(hide_password=True), rt.lease_seconds)
    return rt


def execute(app: Celery, job_id: str, worker_id: str) -> str:
    """The body of ``run_job``: claim the job and run it.

    Returns:
        ``"skipped"`` when the job was not waiting (taken, finished, unknown, or just ended by its deadline
        or attempt limit), else the job's status after the run.
    """
    rt = runtime(app)
    claim = rt.store.claim_job(job_id, worker_id, rt.lease_seconds)
    if claim is None:
        logger.info("prediction %s is not waiting; message dropped", job_id)
        return "skipped"
    logger.info("prediction %s attempt %d claimed by %s", job_id, claim.attempt, worker_id)
    rt.worker.run(claim)
    return str(rt.store.get(None, job_id).status)


def model_queue(base: str, model: str | None) -> str:
    """The queue of a model's jobs: ``base`` for Kontext (dev and fast share their weights) and the hosted
    models, ``<base>.<model>`` for every other local model, so a worker takes only the models it has loaded.

    Raises:
        UnsupportedTier: an unknown model name.
    """
    if model is None:
        return base
    entry = CATALOGUE.resolve(model, "model")
    if not entry.local or entry.family is Family.KONTEXT:
        return base
    return f"{base}.{entry.warm_key}"


def worker_queues(base: str, models: tuple[str, ...] | list[str] | None) -> list[str]:
    """The queues a worker serving ``models`` consumes (none named: the base queue, Kontext and hosted)."""
    if not models:
        return [base]
    return list(dict.fromkeys(model_queue(base, m) for m in models))


class CeleryDispatcher:
    """Publishes "job waiting" messages to the queue of the job's model (see ``model_queue``).

    Args:
        app: from ``make_celery`` (the same settings the workers use).
    """

    def __init__(self, app: Celery):
        self.app = app

    def _tier_of(self, job_id: str) -> str | None:
        """The job's model key, read from the database (the reaper re-sends by id alone)."""
        from sqlalchemy import select

        from kontext_studio.service.db import Job

        engine = make_engine(self.app.conf.kontext_database_url)
        try:  # no pool kept open between notices: the dispatcher has no shutdown hook to close one
            with engine.connect() as conn:
                return conn.scalar(select(Job.tier).where(Job.id == job_id))
        finally:
            engine.dispose()

    def enqueue(self, job_id: str) -> None:
        queue = model_queue(self.app.conf.kontext_queue, self._tier_of(job_id))
        self.app.send_task(TASK_NAME, args=[job_id], queue=queue)

    def queued(self) -> int:
        """Messages waiting in the broker, over the base queue and every local model's queue (not those a
        worker holds while running their job): the reaper compares this with every waiting job."""
        with self.app.connection_for_write() as conn:
            return sum(_queue_size(conn.default_channel, q) for q in all_queues(self.app.conf.kontext_queue))


def all_queues(base: str) -> list[str]:
    """Every queue a job may wait in: the base queue and one per local model that has its own."""
    return list(dict.fromkeys([base, *(model_queue(base, e.key) for e in CATALOGUE.local())]))


def _queue_size(channel: Any, queue: str) -> int:
    size = getattr(channel, "_size", None)
    if size is not None:  # kombu's virtual transports (Redis): the lengths of the queue's lists
        return int(size(queue))  # (a passive declare checks EXISTS without the key prefix: kombu bug)
    try:
        declared = channel.queue_declare(queue=queue, passive=True)
    except ChannelError as exc:
        if str(getattr(exc, "reply_code", "")) == "404":  # Redis drops an empty queue's list: none waits
            return 0
        raise
    return int(declared.message_count)


def worker_argv(app: Celery, hostname: str | None = None, loglevel: str = "INFO",
                models: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Arguments for one GPU worker: solo pool, concurrency 1, the queues of the models it serves."""
    queues = ",".join(worker_queues(app.conf.kontext_queue, models))
    argv = ["worker", "--pool=solo", "--concurrency=1", f"--queues={queues}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    return argv


def run_worker(app: Celery, hostname: str | None = None, loglevel: str = "INFO",
               models: tuple[str, ...] | list[str] | None = None) -> None:
    """Run a worker in this process until it is stopped (``kontext worker`` calls this, one per GPU).

    Args:
        models: the catalogue models this worker serves (their queues; their backends warm at start).
    """
    if models:
        app.conf.kontext_warm_tiers = tuple(CATALOGUE.resolve(m, "models").key for m in models)
    app.worker_main(worker_argv(app, hostname, loglevel, models))
