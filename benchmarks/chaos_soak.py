#!/usr/bin/env python
"""R1 chaos soak: real PostgreSQL + Redis + Celery workers, with workers killed under load. Not a unit test.

What it does (the defaults are the full size of R1 in the reliability design note):

* starts ``--workers`` Celery worker processes (solo pool, concurrency 1, each a ``kill -9`` target) whose
  editor is the fake backend sleeping ``--step-min``..``--step-max`` s per step over ``--steps`` steps and
  honouring cancel;
* ``--clients`` client threads submit ``--jobs`` predictions over all tiers through ``JobStore.submit``
  (credit hold in the same transaction) and send them with ``CeleryDispatcher``; of those, ``--resend``
  are sent again with the same Idempotency-Key, ``--cancel`` are cancelled at a random moment, ``--fail``
  fail in the model (``[fail]``), and ``--lose`` lose their message (the API died between commit and
  publish). ``--queue-wipes`` times the broker's waiting messages are deleted (Redis restarted without
  persistence);
* every ``--kill-every`` s (and when the ``--kill-at`` fractions of the jobs have finished) a random busy
  worker gets ``SIGKILL`` and a replacement starts; the reaper runs every ``--reap-interval`` s with
  ``--lease`` s leases (expired leases, and jobs waiting over ``--stale-after`` s with messages missing).

With ``--http`` (the default) the clients go through the real HTTP service: an API process (``create_app``
wired to ``CeleryDispatcher``, the same composition ``kontext serve`` uses with ``KONTEXT_BROKER_URL``) that
gets ``kill -9`` and is started again ``--api-restarts`` times while submissions are under way. Clients
authenticate with each user's API key, retry with the same Idempotency-Key when the connection drops (the
API may have committed before it died) and count every 5xx answer. ``--no-http`` submits through
``JobStore`` directly, where ``--lose`` simulates a publisher dying between commit and publish.

Pass criteria, checked in the database at the end: 0 lost jobs (all terminal before ``--timeout``), 0 jobs
with two outputs, 0 double settlements, ledger entries sum to 0 (and the ledger audit is clean), every
balance = initial - sum of the prices of that user's succeeded jobs, idempotent resends return the same
prediction, at least ``--min-kills`` kills happened; over HTTP also 0 5xx answers and every planned API
restart done.

The same harness runs at CI scale in ``tests/service/test_chaos.py``.

Usage:
    .venv/bin/python benchmarks/chaos_soak.py                      # full size: 500 jobs, ~15 min
    .venv/bin/python benchmarks/chaos_soak.py --jobs 100 --clients 10 --steps 10 --step-min 0.05 \\
        --step-max 0.2 --kill-every 5 --min-kills 4 --lease 3 --stale-after 8
Options ``--postgres`` (a server URL where we may CREATE DATABASE; a throwaway database is made and dropped)
and ``--redis`` (keys are namespaced by a random prefix and deleted at the end). Exit status 0 when every
criterion passed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import heapq
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.core.registry import TIERS
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.db import (
    TERMINAL_JOB_STATUSES,
    Balance,
    Job,
    JobStatus,
    LedgerEntry,
    Settlement,
    make_engine,
    make_session_factory,
    normalize_url,
    upgrade,
)
from kontext_studio.service.inputs import data_url, normalize_input
from kontext_studio.service.jobs.dispatch_celery import CeleryDispatcher, make_celery
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.reaper import Reaper
from kontext_studio.service.storage.storage_local import LocalStorage

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
EDITOR_FACTORY = "benchmarks.chaos_soak:fake_editor"


# -- the workers' editor ----------------------------------------------------------------------------------
class JitterFakeBackend(FakeBackend):
    """The fake backend with a step time drawn per job from ``[step_min, step_max]`` (one job at a time)."""

    def __init__(self, step_min: float, step_max: float, resolution: int = 64):
        super().__init__(step_seconds=step_min, resolution=resolution)
        self.step_range = (float(step_min), float(step_max))
        self._rng = random.Random()

    def generate(self, plan: Any, on_step: Any = None, cancel: Any = None) -> Any:
        self.step_seconds = self._rng.uniform(*self.step_range)
        return super().generate(plan, on_step=on_step, cancel=cancel)


def fake_editor(step_min: float = 0.05, step_max: float = 0.2, resolution: int = 64) -> Editor:
    """Editor factory for the soak's workers (``make_celery(editor_factory=EDITOR_FACTORY)``)."""
    return Editor({"fake": JitterFakeBackend(step_min, step_max, resolution)})


# -- services ---------------------------------------------------------------------------------------------
def redis_problem(url: str) -> str | None:
    """None when Redis answers PING at ``url``, else why not."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def postgres_problem(url: str) -> str | None:
    engine = create_engine(normalize_url(url), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def delete_keys(redis_url: str, prefix: str, match: str = "*") -> int:
    """Delete this run's broker keys (all start with ``prefix``); returns how many."""
    import redis

    if not prefix:
        raise ValueError("refusing to delete keys without a prefix")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}{match}", count=500))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        return len(keys)
    finally:
        client.close()


def wipe_waiting_messages(redis_url: str, prefix: str, queue: str) -> int:
    """What a Redis restart without persistence does to waiting messages: they are gone. Returns how many."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        lost = 0
        for key in client.scan_iter(match=f"{prefix}{queue}*", count=500):
            if client.type(key) == b"list":
                lost += int(client.llen(key))
                client.delete(key)
        return lost
    finally:
        client.close()


@contextlib.contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """A new migrated PostgreSQL database on ``server_url``, dropped afterwards."""
    server = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"ks_soak_{uuid.uuid4().hex[:12]}"
    with server.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(str(normalize_url(server_url).render_as_string(hide_password=False))).set(database=name)
    rendered = url.render_as_string(hide_password=False)
    try:
        upgrade(rendered)
        yield rendered
    finally:
        with server.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


# -- worker processes -------------------------------------------------------------------------------------
# Child processes exit when their parent goes away, so none outlives a killed test run.
_EXIT_WITH_PARENT = r"""
import json, os, sys, threading, time
parent = os.getppid()
def watch():
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)
threading.Thread(target=watch, daemon=True).start()
"""

_WORKER_MAIN = _EXIT_WITH_PARENT + r"""mode, hostname, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if mode == "cli":
    from celery.__main__ import main
    sys.argv = ["celery", "-A", "kontext_studio.service.jobs.celery_app", "worker", "--pool=solo",
                "--concurrency=1", "--without-gossip", "--without-mingle", "--loglevel=INFO",
                "--hostname=" + hostname, "--queues=" + cfg.get("queue", "kontext")]
    sys.exit(main())
from kontext_studio.service.jobs.dispatch_celery import make_celery, run_worker
run_worker(make_celery(**cfg), hostname=hostname)
"""


_API_MAIN = _EXIT_WITH_PARENT + r"""cfg = json.loads(sys.argv[1])
import uvicorn
from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.app import create_app
from kontext_studio.service.db import make_engine
from kontext_studio.service.jobs.dispatch_celery import CeleryDispatcher, make_celery
from kontext_studio.service.storage.storage_local import LocalStorage
app = create_app(make_engine(cfg["celery"]["database_url"]), LocalStorage(cfg["celery"]["storage_root"]),
                 Editor({"fake": FakeBackend()}), cfg["secret"].encode(), rate_limit=0,
                 max_active_per_user=1_000_000, dispatcher=CeleryDispatcher(make_celery(**cfg["celery"])))
uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiProcess:
    """The HTTP service in its own process, killed (``kill -9``) and started again by the harness."""

    def __init__(self, celery_config: dict[str, Any], log_dir: Path,
                 secret: str = "soak-url-signing-secret-0123456789"):
        self.config = {"celery": celery_config, "secret": secret, "port": free_port()}
        self.url = f"http://127.0.0.1:{self.config['port']}"
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, ready_timeout: float = 60.0) -> None:
        self.starts += 1
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        with (self.log_dir / f"api{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", _API_MAIN, json.dumps(self.config)], cwd=REPO,
                                         env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API process exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v1/models", timeout=2).status_code < 500:  # up and answering
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer within {ready_timeout:.0f} s: {self.log_tail()}")

    def kill(self) -> None:
        """``kill -9``: requests in flight are cut off, jobs committed but not yet published are left to the
        reaper."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_dir / f"api{self.starts}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cli_env(cfg: dict[str, Any]) -> dict[str, str]:
    """The ``KONTEXT_*`` variables ``celery_app`` reads, for a ``make_celery`` config."""
    env = {"KONTEXT_BROKER_URL": cfg["broker_url"], "KONTEXT_DATABASE_URL": cfg["database_url"],
           "KONTEXT_STORAGE_DIR": str(cfg["storage_root"]), "KONTEXT_QUEUE": cfg.get("queue", "kontext"),
           "KONTEXT_BROKER_PREFIX": cfg.get("key_prefix", "")}
    if "lease_seconds" in cfg:
        env["KONTEXT_LEASE_SECONDS"] = str(cfg["lease_seconds"])
    if "visibility_timeout" in cfg:
        env["KONTEXT_VISIBILITY_TIMEOUT"] = str(cfg["visibility_timeout"])
    if isinstance(cfg.get("editor_factory"), str):
        env["KONTEXT_EDITOR_FACTORY"] = cfg["editor_factory"]
    return env


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerPool:
    """Celery worker processes started, killed and replaced by the harness.

    Args:
        config: ``make_celery`` keyword arguments (JSON-serialisable: factories by name).
        log_dir: each worker's output goes to ``<name>.log`` there.
        mode: ``"python"`` builds the app with ``make_celery(**config)``; ``"cli"`` runs ``celery -A
            kontext_studio.service.jobs.celery_app worker`` configured through ``KONTEXT_*`` variables.
    """

    def __init__(self, config: dict[str, Any], log_dir: Path, mode: str = "python"):
        self.config, self.log_dir, self.mode = config, Path(log_dir), mode
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workers: list[WorkerProcess] = []
        self.killed: list[WorkerProcess] = []
        self._count = 0
        self._lock = threading.Lock()

    def spawn(self, mode: str | None = None) -> WorkerProcess:
        with self._lock:
            self._count += 1
            name = f"w{self._count}@soak"
        mode = mode or self.mode
        log = self.log_dir / f"w{self._count}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        if mode == "cli":
            env.update(cli_env(self.config))
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN, mode, name, json.dumps(self.config)],
                                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        worker = WorkerProcess(name, proc, log)
        with self._lock:
            self.workers.append(worker)
        return worker

    def start(self, n: int, modes: list[str] | None = None) -> None:
        for i in range(n):
            self.spawn(modes[i % len(modes)] if modes else None)

    def alive(self) -> list[WorkerProcess]:
        with self._lock:
            return [w for w in self.workers if w.proc.poll() is None]

    def kill(self, worker: WorkerProcess) -> None:
        """``kill -9`` the worker (no warm shutdown, its message stays unacknowledged)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(10)
        with self._lock:
            self.killed.append(worker)

    def stop(self) -> None:
        """Stop every worker: SIGTERM, then SIGKILL for any still running after 5 s."""
        with self._lock:
            workers = list(self.workers)
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGTERM)
        end = time.monotonic() + 5
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(max(0.1, end - time.monotonic()))
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.proc.wait(10)

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for w in self.workers:
            try:
                tail = w.log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = []
            out.append(f"--- {w.name} (pid {w.pid}, exit {w.proc.poll()}) ---\n" + "\n".join(tail))
        return "\n".join(out)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the soak ---------------------------------------------------------------------------------------------
@dataclass
class SoakConfig:
    jobs: int = 500
    clients: int = 50
    workers: int = 3
    users: int = 20
    steps: int = 20
    step_min: float = 0.1
    step_max: float = 0.4
    resend: float = 0.10
    cancel: float = 0.10
    fail: float = 0.05
    lose: float = 0.02
    queue_wipes: int = 1
    kill_every: float = 15.0  # seconds between kills (0: only ``kill_at``)
    kill_at: tuple[float, ...] = ()  # also kill when these fractions of the jobs have finished
    min_kills: int = 10
    lease: int = 10
    reap_interval: float = 1.0
    stale_after: float = 60.0
    submit_span: float = 60.0  # clients spread their submissions over about this many seconds
    cancel_window: float = 10.0  # a cancel lands within this many seconds of the submit
    timeout: float = 1800.0
    seed: int = 0
    tiers: tuple[str, ...] = tuple(TIERS)
    worker_modes: tuple[str, ...] = ("python",)
    http: bool = True  # clients talk to the HTTP service (False: JobStore + CeleryDispatcher directly)
    api_restarts: int = 1  # kill -9 + start of the API process while submissions are under way (http only)


@dataclass
class Plan:
    index: int
    user_id: int
    tier: str
    body: dict[str, Any]
    fail: bool
    cancel_at: float | None  # seconds after submit
    resend_at: float | None
    lose: bool
    key: str
    raw: dict[str, Any] = field(default_factory=dict)  # the prediction input as a client sends it
    job_id: str | None = None
    submitted_at: float = 0.0


@dataclass
class SoakResult:
    criteria: list[tuple[str, str, bool]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)  # worker processes still running after the soak
    worker_logs: str = ""  # the end of each worker's output, kept when a criterion failed

    @property
    def ok(self) -> bool:
        return all(passed for _, _, passed in self.criteria)

    def table(self) -> str:
        width = max(len(name) for name, _, _ in self.criteria) if self.criteria else 10
        lines = [f"{'criterion':<{width}}  {'value':>12}  result", "-" * (width + 24)]
        lines += [f"{name:<{width}}  {value:>12}  {'PASS' if ok else 'FAIL'}" for name, value, ok in self.criteria]
        lines.append("")
        lines += [f"{k:<{width}}  {v}" for k, v in self.figures.items()]
        if self.problems:
            lines += ["", "problems:"] + [f"  {p}" for p in self.problems[:40]]
        return "\n".join(lines)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _pg_engine(url: str, pool: int) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, pool_size=pool, max_overflow=10)
    return make_engine(url)


class _Scheduler:
    """Runs delayed actions (cancels, resends) on one thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cv = threading.Condition()
        self._n = 0
        self._stop = False
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="soak-scheduler", daemon=True)
        self._thread.start()

    def at(self, when: float, action: Callable[[], None]) -> None:
        with self._cv:
            self._n += 1
            heapq.heappush(self._heap, (when, self._n, action))
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._stop:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(5)


def run_soak(cfg: SoakConfig, database_url: str, redis_url: str, work_dir: Path,
             log: Callable[[str], None] = print) -> SoakResult:
    """Run the soak against a migrated database; workers, reaper and Redis keys are cleaned up on return."""
    rng = random.Random(cfg.seed)
    prefix = f"ks-soak-{uuid.uuid4().hex[:10]}:"
    queue = "kontext"
    storage_dir = work_dir / "storage"
    storage = LocalStorage(storage_dir)
    worker_cfg: dict[str, Any] = {
        "broker_url": redis_url, "database_url": database_url, "storage_root": str(storage_dir),
        "editor_factory": EDITOR_FACTORY,
        "editor_options": {"step_min": cfg.step_min, "step_max": cfg.step_max, "resolution": 64},
        "lease_seconds": cfg.lease, "queue": queue, "key_prefix": prefix,
        "worker_enable_remote_control": False,
    }
    engine = _pg_engine(database_url, pool=min(cfg.clients, 20) + 2)
    sessions = make_session_factory(engine)
    accounts = SqlAccounts(sessions)
    store = JobStore(sessions, accounts)
    app = make_celery(**worker_cfg)
    dispatcher = CeleryDispatcher(app)
    result = SoakResult()
    counters: Counter[str] = Counter()
    submit_latency: list[float] = []
    lock = threading.Lock()
    problems: list[str] = []

    # plans: users, tiers, which jobs fail, are cancelled, resent, lose their message
    users = [accounts.create_user(f"soak-{uuid.uuid4().hex}@example.com", f"soak {i}").id for i in range(cfg.users)]
    image = data_url(png())
    plans: list[Plan] = []
    for i in range(cfg.jobs):
        tier = cfg.tiers[i % len(cfg.tiers)]
        fail = rng.random() < cfg.fail
        prompt = f"{'[fail] ' if fail else ''}soak edit {i}: make it snowy"
        raw = {"prompt": prompt, "input_image": image, "num_inference_steps": cfg.steps,
               "seed": rng.randrange(2**31)}
        body = normalize_input(raw, tier, storage)
        plans.append(Plan(i, rng.choice(users), tier, body, fail,
                          rng.uniform(0, cfg.cancel_window) if rng.random() < cfg.cancel else None,
                          rng.uniform(0, cfg.cancel_window) if rng.random() < cfg.resend else None,
                          rng.random() < cfg.lose and not cfg.http, f"idem-{uuid.uuid4().hex}", raw))
    initial: dict[int, int] = {}
    for u in users:
        need = sum(TIERS[p.tier].price_credits for p in plans if p.user_id == u)
        initial[u] = need + 100
        accounts.grant(u, initial[u])

    keys = {u: accounts.create_api_key(u, "soak")[0] for u in users} if cfg.http else {}
    api = ApiProcess(worker_cfg, work_dir / "logs") if cfg.http else None
    http_retry_window = 60.0  # how long a client keeps retrying through an API restart

    def call(method: str, path: str, user_id: int, **kwargs: Any) -> httpx.Response:
        """One HTTP call, retried on dropped connections (safe: submits carry an Idempotency-Key) and on 5xx
        (counted: R1 allows none)."""
        assert api is not None
        headers = {"Authorization": f"Bearer {keys[user_id]}", **kwargs.pop("headers", {})}
        give_up = time.monotonic() + http_retry_window
        while True:
            try:
                resp = httpx.request(method, api.url + path, headers=headers, timeout=30.0, **kwargs)
            except httpx.TransportError as exc:
                with lock:
                    counters["http_connection_errors"] += 1
                if time.monotonic() > give_up:
                    raise RuntimeError(f"{method} {path}: no answer for {http_retry_window:.0f} s ({exc!r})") from exc
                time.sleep(0.25)
                continue
            if resp.status_code >= 500:
                with lock:
                    counters["http_5xx"] += 1
                    problems.append(f"{method} {path} -> {resp.status_code}: {resp.text[:200]}")
                if time.monotonic() > give_up:
                    return resp
                time.sleep(0.25)
                continue
            return resp

    pool = WorkerPool(worker_cfg, work_dir / "logs")
    reaper = Reaper(store, dispatcher, interval=cfg.reap_interval, stale_after=cfg.stale_after)
    scheduler = _Scheduler()
    stop = threading.Event()
    started = time.monotonic()
    kills: list[float] = []
    wipes: list[int] = []
    restarts: list[float] = []
    try:
        pool.start(cfg.workers, list(cfg.worker_modes))
        if api is not None:
            api.start()
        reaper.start()

        def submit_http(plan: Plan) -> tuple[str, bool]:
            resp = call("POST", "/v1/predictions", plan.user_id, headers={"Idempotency-Key": plan.key},
                        json={"model": f"flux-kontext-{plan.tier}", "input": plan.raw})
            if resp.status_code not in (200, 201):
                raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:200]}")
            return str(resp.json()["id"]), resp.status_code == 201

        def submit(plan: Plan, resend: bool = False) -> None:
            price = TIERS[plan.tier].price_credits
            t = time.perf_counter()
            if api is not None:
                job_id, created = submit_http(plan)
            else:
                job_id, created = store.submit(plan.user_id, plan.tier, f"flux-kontext-{plan.tier}", plan.body,
                                               price, idempotency_key=plan.key)
            with lock:
                submit_latency.append(time.perf_counter() - t)
            if resend:
                with lock:
                    counters["resends"] += 1
                    if job_id != plan.job_id or (created and api is None):
                        problems.append(f"resend of plan {plan.index} gave {job_id} (created={created}), "
                                        f"expected {plan.job_id}")
                        counters["resend_mismatch"] += 1
                return
            plan.job_id, plan.submitted_at = job_id, time.monotonic()
            with lock:
                counters["submitted"] += 1
            if api is not None:
                pass  # the API published it (or died first, and the reaper re-sends it)
            elif plan.lose:
                with lock:
                    counters["lost_messages"] += 1
            else:
                try:
                    dispatcher.enqueue(job_id)
                except Exception as exc:  # the reaper sends it later
                    with lock:
                        counters["enqueue_errors"] += 1
                    log(f"enqueue failed: {exc!r}")
            if plan.cancel_at is not None:
                scheduler.at(plan.submitted_at + plan.cancel_at, functools.partial(cancel, plan))
            if plan.resend_at is not None:
                scheduler.at(plan.submitted_at + plan.resend_at, functools.partial(submit, plan, resend=True))

        def cancel(plan: Plan) -> None:
            assert plan.job_id is not None
            if api is not None:
                resp = call("POST", f"/v1/predictions/{plan.job_id}/cancel", plan.user_id)
                if resp.status_code != 200:
                    with lock:
                        problems.append(f"cancel of {plan.job_id} answered {resp.status_code}: {resp.text[:200]}")
            else:
                store.cancel(plan.user_id, plan.job_id)
            with lock:
                counters["cancel_requests"] += 1

        todo = list(plans)
        todo_lock = threading.Lock()
        per_client_gap = cfg.submit_span / max(1, cfg.jobs / max(1, cfg.clients))

        def client() -> None:
            while not stop.is_set():
                with todo_lock:
                    if not todo:
                        return
                    plan = todo.pop(0)
                try:
                    submit(plan)
                except Exception as exc:
                    with lock:
                        problems.append(f"submit of plan {plan.index} raised {type(exc).__name__}: {exc}")
                        counters["submit_errors"] += 1
                if per_client_gap:
                    stop.wait(rng.uniform(0, 2 * per_client_gap))

        clients = [threading.Thread(target=client, name=f"soak-client-{i}", daemon=True)
                   for i in range(cfg.clients)]
        for c in clients:
            c.start()

        def open_jobs() -> int:
            with sessions() as s:
                return int(s.scalar(select(func.count()).select_from(Job).where(
                    Job.user_id.in_(users), Job.status.not_in(TERMINAL_JOB_STATUSES))) or 0)

        def busy_workers() -> list[WorkerProcess]:
            with sessions() as s:
                owners = set(s.scalars(select(Job.worker_id).where(Job.status == JobStatus.PROCESSING,
                                                                   Job.user_id.in_(users))))
            names = {o.split("/")[0] for o in owners if o}
            return [w for w in pool.alive() if w.name in names]

        next_kill = time.monotonic() + cfg.kill_every if cfg.kill_every > 0 else float("inf")
        kill_at = sorted(cfg.kill_at)
        wipe_times = sorted(rng.uniform(0.2, 0.6) for _ in range(cfg.queue_wipes))
        deadline = started + cfg.timeout
        done_at: float | None = None
        restart_at = [(k + 1) / (cfg.api_restarts + 1) for k in range(cfg.api_restarts)] if api else []
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if api is not None and restart_at and counters["submitted"] >= restart_at[0] * cfg.jobs:
                restart_at.pop(0)
                api.kill()
                restarts.append(time.monotonic() - started)
                log(f"[{restarts[-1]:6.1f}s] kill -9 of the API process; starting it again")
                api.start()
            submitting = any(c.is_alive() for c in clients) or scheduler.pending() > 0
            remaining = open_jobs()
            if not submitting and remaining == 0:
                done_at = time.monotonic()
                break
            progress = 1 - remaining / max(1, cfg.jobs)
            if wipe_times and progress >= wipe_times[0] and not any(c.is_alive() for c in clients):
                wipe_times.pop(0)
                wipes.append(wipe_waiting_messages(redis_url, prefix, queue))
                log(f"[{time.monotonic() - started:6.1f}s] broker wiped: {wipes[-1]} waiting messages lost")
            due = bool(kill_at) and progress >= kill_at[0] and not any(c.is_alive() for c in clients)
            if (time.monotonic() >= next_kill or due) and remaining > 0:
                if due:
                    kill_at.pop(0)
                candidates = busy_workers() or pool.alive()
                if candidates:
                    victim = rng.choice(candidates)
                    pool.kill(victim)
                    kills.append(time.monotonic() - started)
                    pool.spawn()
                    log(f"[{kills[-1]:6.1f}s] kill -9 {victim.name} (pid {victim.pid}); {remaining} open jobs")
                if cfg.kill_every > 0:
                    next_kill = time.monotonic() + cfg.kill_every
        stop.set()
        elapsed = (done_at or time.monotonic()) - started
    finally:
        stop.set()
        scheduler.stop()
        reaper.stop()
        pool.stop()
        if api is not None:
            api.kill()
        with contextlib.suppress(Exception):
            delete_keys(redis_url, prefix)

    # -- checks -----------------------------------------------------------------------------------------
    ids = [p.job_id for p in plans if p.job_id]
    with sessions() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.user_id.in_(users)))}
        ledger_total = int(s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))) or 0)
        settle_legs = Counter(s.scalars(select(LedgerEntry.job_id).where(
            LedgerEntry.kind.in_(("capture", "release")), LedgerEntry.job_id.in_(list(jobs)))))
        settlements = {row.job_id: row.kind for row in s.scalars(select(Settlement).where(
            Settlement.job_id.in_(list(jobs))))}
        balances = {b.user_id: b for b in s.scalars(select(Balance).where(Balance.user_id.in_(users)))}
    audit = accounts.audit()
    status = Counter(j.status for j in jobs.values())
    lost = [j.id for j in jobs.values() if j.status not in TERMINAL_JOB_STATUSES]
    missing = [p.index for p in plans if p.job_id is None]

    two_outputs, orphans = [], 0
    for j in jobs.values():
        files = (j.output or {}).get("files") or []
        on_disk = sorted(p.name for p in (storage_dir / "outputs" / j.id).glob("*") if not p.name.startswith("."))
        recorded = [f.rsplit("/", 1)[-1] for f in files]
        if j.status == JobStatus.SUCCEEDED:
            current = f"outputs/{j.id}/{j.attempt}."
            if len(files) != 1 or not storage.exists(files[0]) or not files[0].startswith(current):
                two_outputs.append(j.id)
        elif j.output is not None:
            two_outputs.append(j.id)
        orphans += len([n for n in on_disk if n not in recorded])
    double = [jid for jid, n in settle_legs.items() if n != 2]
    unsettled = [j.id for j in jobs.values() if j.status in TERMINAL_JOB_STATUSES and j.id not in settlements]
    wrong_kind = [j.id for j in jobs.values() if j.id in settlements
                  and settlements[j.id] != ("capture" if j.status == JobStatus.SUCCEEDED else "release")]
    bad_balances = []
    for u in users:
        spent = sum(j.cost for j in jobs.values() if j.user_id == u and j.status == JobStatus.SUCCEEDED)
        b = balances.get(u)
        if b is None or b.available != initial[u] - spent or b.held != 0:
            bad_balances.append(f"user {u}: {b and (b.available, b.held)} != ({initial[u] - spent}, 0)")
    by_plan = {p.job_id: p for p in plans if p.job_id}
    unexpected = []
    for j in jobs.values():
        p = by_plan.get(j.id)
        if p is None or j.status not in TERMINAL_JOB_STATUSES:
            continue
        gave_up = j.status == JobStatus.FAILED and "gave up" in (j.error or "")
        if j.status == JobStatus.CANCELED and p.cancel_at is None:
            unexpected.append(f"{j.id}: canceled without a cancel request")
        elif j.status == JobStatus.SUCCEEDED and p.fail:
            unexpected.append(f"{j.id}: a [fail] job succeeded")
        elif j.status == JobStatus.FAILED and not p.fail and not gave_up:
            unexpected.append(f"{j.id}: failed: {j.error}")
        elif j.status == JobStatus.ABORTED:
            unexpected.append(f"{j.id}: aborted without a deadline")

    problems += [f"lost job {x}" for x in lost] + [f"plan {x} never submitted" for x in missing]
    problems += [f"job {x}: output problem" for x in two_outputs] + [f"job {x}: {settle_legs[x]} settlement legs"
                                                                     for x in double]
    problems += [f"job {x}: terminal but unsettled" for x in unsettled]
    problems += [f"job {x}: settlement kind does not match status" for x in wrong_kind]
    problems += bad_balances + audit + unexpected + scheduler.errors
    attempts = Counter(j.attempt for j in jobs.values())
    lat = sorted(submit_latency)

    def pct(q: float) -> str:
        return f"{1000 * lat[min(len(lat) - 1, int(q * len(lat)))]:.1f} ms" if lat else "-"

    result.criteria = [
        ("lost jobs (not terminal)", str(len(lost) + len(missing)), not lost and not missing),
        ("jobs with two outputs", str(len(two_outputs)), not two_outputs),
        ("double settlements", str(len(double) + len(wrong_kind)), not double and not wrong_kind),
        ("terminal jobs unsettled", str(len(unsettled)), not unsettled),
        ("ledger sum", str(ledger_total), ledger_total == 0),
        ("ledger audit problems", str(len(audit)), not audit),
        ("balances != initial - spent", str(len(bad_balances)), not bad_balances),
        ("idempotent resend mismatches", str(counters["resend_mismatch"]), counters["resend_mismatch"] == 0),
        ("unexpected outcomes", str(len(unexpected)), not unexpected),
        ("submit errors", str(counters["submit_errors"]), counters["submit_errors"] == 0),
        (f"kill -9 (>= {cfg.min_kills})", str(len(kills)), len(kills) >= cfg.min_kills),
    ]
    if cfg.http:
        result.criteria += [
            ("HTTP 5xx answers", str(counters["http_5xx"]), counters["http_5xx"] == 0),
            (f"API restarts (= {cfg.api_restarts})", str(len(restarts)), len(restarts) == cfg.api_restarts),
        ]
    result.figures = {
        "jobs / distinct ids": f"{cfg.jobs} / {len(set(ids))}",
        "statuses": dict(sorted(status.items())),
        "attempts histogram": dict(sorted(attempts.items())),
        "resends / cancel requests": f"{counters['resends']} / {counters['cancel_requests']}",
        "messages lost at submit / broker wipes": f"{counters['lost_messages']} / {wipes}",
        "reaped (lease expired) / re-sent (stale)": f"{len(reaper.total.reaped)} / {len(reaper.total.resent)}",
        "kill times (s)": [round(k, 1) for k in kills],
        "API restart times (s) / dropped connections retried": f"{[round(r, 1) for r in restarts]} / "
                                                               f"{counters['http_connection_errors']}",
        "orphan output files (attempt killed after writing)": orphans,
        "submit latency p50 / p95": f"{pct(0.5)} / {pct(0.95)}",
        "wall time": f"{elapsed:.1f} s",
        "throughput": f"{status.get('succeeded', 0) / max(elapsed, 1e-9):.2f} succeeded jobs/s",
        "config": json.dumps({k: v for k, v in asdict(cfg).items() if k != "tiers"}),
    }
    result.problems = problems
    result.leftover_pids = [w.pid for w in pool.workers if w.proc.poll() is None]
    result.criteria.append(("worker processes left running", str(len(result.leftover_pids)),
                            not result.leftover_pids))
    if not result.ok:
        result.worker_logs = pool.log_tails() + (f"\n--- API ---\n{api.log_tail()}" if api else "")
    engine.dispose()
    return result


def main(argv: list[str] | None = None) -> int:
    d = SoakConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", default=os.environ.get("KONTEXT_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
                    help="PostgreSQL server URL where a throwaway database may be created")
    ap.add_argument("--redis", default=os.environ.get("KONTEXT_TEST_REDIS_URL", DEFAULT_REDIS))
    for name in ("jobs", "clients", "workers", "users", "steps", "queue_wipes", "min_kills", "lease", "seed"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("step_min", "step_max", "resend", "cancel", "fail", "lose", "kill_every", "reap_interval",
                 "stale_after", "submit_span", "cancel_window", "timeout"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    ap.add_argument("--kill-at", type=lambda v: tuple(float(x) for x in v.split(",") if x), default=(),
                    help="also kill when these fractions of the jobs have finished, e.g. 0.2,0.5,0.8")
    ap.add_argument("--worker-mode", choices=("python", "cli"), default="python",
                    help="python: make_celery(...) in each worker; cli: `celery -A ...celery_app worker` + env")
    ap.add_argument("--api-restarts", type=int, default=d.api_restarts)
    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=d.http,
                    help="submit and cancel through the HTTP service (default) or JobStore directly")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    cfg = SoakConfig(**{k: getattr(args, k) for k in asdict(d) if hasattr(args, k)},
                     worker_modes=(args.worker_mode,))
    for what, problem in (("PostgreSQL", postgres_problem(args.postgres)), ("Redis", redis_problem(args.redis))):
        if problem:
            print(f"{what} is not reachable: {problem}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="kontext-soak-") as tmp, throwaway_database(args.postgres) as db:
        result = run_soak(cfg, db, args.redis, Path(tmp), log=lambda m: print(m, flush=True))
    if args.json:
        print(json.dumps({"ok": result.ok, "criteria": result.criteria, "figures": result.figures,
                          "problems": result.problems}, indent=2, default=str))
    else:
        print()
        print(result.table())
        print(f"\nR1 chaos soak: {'PASS' if result.ok else 'FAIL'}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
