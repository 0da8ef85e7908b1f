"""Jobs over SQLAlchemy: one code path for SQLite and PostgreSQL.

Delivery is at-least-once, the effect exactly-once: ``claim`` bumps the job's ``attempt`` (the fencing
token) and hands it to the worker; progress, completion and failure are conditional updates on
``(id, attempt, status='processing')``, so a stale worker's late report changes nothing. Credits are held
in the same transaction that creates the job and settled in the same transaction that ends it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.accounts.accounts_sql import SqlAccounts
from kontext_studio.service.db import (
    IDEMPOTENCY_TTL,
    TRAINING_TIER,
    IdempotencyKey,
    Job,
    JobStatus,
    make_session_factory,
    new_id,
    utcnow,
)
from kontext_studio.service.jobs.jobs_common import (
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    IdempotencyConflict,
    JobNotFound,
    StaleAttempt,
)


def fingerprint(body: dict[str, Any]) -> str:
    """Hash of the canonical request body (images are already content references by then)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    user_id: int
    tier: str
    input: dict[str, Any]
    lease_seconds: int = LEASE_SECONDS  # how far each progress report extends the lease


# Read after every state change of every job (to find webhook events): built once, bound by id.
_WEBHOOK_OF = select(Job.webhook).where(Job.id == bindparam("job_id"))


class JobStore:
    """Create, claim, progress, finish and cancel jobs.

    Args:
        sessions: session factory of the service database.
        accounts: the credits ledger (holds are taken and settled through it, in the job's transaction).
        on_change: called with a job id after each state change (the API's stream wakes up on it).
    """

    def __init__(self, sessions: sessionmaker[Session], accounts: SqlAccounts,
                 on_change: Callable[[str], None] | None = None):
        self.sessions = sessions
        self.accounts = accounts
        # Reads need no write lock: on SQLite every transaction otherwise starts with BEGIN IMMEDIATE and
        # status polls would queue behind the worker's progress writes.
        bind = sessions.kw.get("bind")
        self.readers = (make_session_factory(bind.execution_options(sqlite_begin="DEFERRED"))
                        if bind is not None and bind.dialect.name == "sqlite" else sessions)
        self.on_change = on_change or (lambda _job_id: None)
        # Called instead of ``on_change`` right after a submit (None: ``on_change``). A job just queued waits
        # ("starting"), which is no webhook event, so a caller that reads the job back on each change to
        # find events can skip that read here.
        self.on_submit: Callable[[str], None] | None = None

    # -- submit -----------------------------------------------------------------------------------
    def submit(self, user_id: int, tier: str, model: str, body: dict[str, Any], price: int, *,
               webhook: str | None = None, events: list[str] | None = None,
               idempotency_key: str | None = None, deadline: datetime | None = None,
               job_id: str | None = None) -> tuple[str, bool]:
        """Create a job and hold its price, atomically.

        Returns:
            (job id, created): ``created`` is False when an idempotent replay returned an existing job.

        Raises:
            InsufficientCredits: before anything is queued.
            IdempotencyConflict: the key was used with another body.
        """
        job, existing_id = self.submit_job(user_id, tier, model, body, price, webhook=webhook, events=events,
                                           idempotency_key=idempotency_key, deadline=deadline, job_id=job_id)
        return (job.id, True) if job is not None else (str(existing_id), False)

    def submit_job(self, user_id: int, tier: str, model: str, body: dict[str, Any], price: int, *,
                   webhook: str | None = None, events: list[str] | None = None,
                   idempotency_key: str | None = None, deadline: datetime | None = None,
                   job_id: str | None = None) -> tuple[Job | None, str | None]:
        """``submit``, answering the new job itself (detached, as committed) so the caller need not read it
        back.

        Returns:
            (the new job, None), or (None, the existing job's id) for an idempotent replay.

        Raises:
            InsufficientCredits: before anything is queued.
            IdempotencyConflict: the key was used with another body.
        """
        fp = fingerprint({"tier": tier, "body": body})
        with self.sessions.begin() as s:
            if idempotency_key:
                row = s.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user_id,
                                                            IdempotencyKey.key == idempotency_key))
                if row is not None and row.job_id is not None and row.expires_at > utcnow():
                    if row.fingerprint != fp:
                        raise IdempotencyConflict(
                            "Idempotency-Key was already used with a different request body; use a new key")
                    return None, row.job_id
                if row is not None:
                    s.delete(row)
                    s.flush()
            if job_id is not None:
                existing = s.get(Job, job_id)
                if existing is not None:
                    if existing.user_id != user_id:
                        raise JobNotFound(f"prediction {job_id} belongs to another account")
                    if existing.request_fingerprint != fp:
                        raise IdempotencyConflict(f"prediction {job_id} exists with a different request body")
                    return None, job_id
            job = Job(id=job_id or new_id(), user_id=user_id, model=model, tier=tier, input=body,
                      status=JobStatus.STARTING, cost=price, webhook=webhook, webhook_events_filter=events,
                      idempotency_key=idempotency_key, request_fingerprint=fp, deadline_at=deadline)
            s.add(job)
            s.flush()
            self.accounts.using(s).hold(job.id, user_id, price)
            if idempotency_key:
                s.add(IdempotencyKey(user_id=user_id, key=idempotency_key, fingerprint=fp, job_id=job.id,
                                     expires_at=utcnow() + IDEMPOTENCY_TTL))
            new = job.id
        (self.on_submit or self.on_change)(new)
        return job, None

    # -- worker side ------------------------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: int = LEASE_SECONDS) -> Claim | None:
        """Take the oldest waiting job, bump its attempt and lease it to ``worker_id``."""
        with self.sessions.begin() as s:
            now = utcnow()
            q = (select(Job).where(Job.status == JobStatus.STARTING).order_by(Job.created_at).limit(1))
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            job = s.scalar(q)
            if job is None:
                return None
            claim = self._take(s, job, worker_id, lease_seconds, now)
            job_id = job.id
        self.on_change(job_id)
        return claim if claim is not None else self.claim(worker_id, lease_seconds)

    def claim_job(self, job_id: str, worker_id: str, lease_seconds: int = LEASE_SECONDS) -> Claim | None:
        """Take one given job (a broker message names it) if it is waiting, with ``claim``'s rules.

        Returns:
            The claim, or None when the job is unknown, already taken, finished, or was just ended here
            because its deadline passed or it ran out of attempts.
        """
        with self.sessions.begin() as s:
            now = utcnow()
            q = select(Job).where(Job.id == job_id, Job.status == JobStatus.STARTING)
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update()  # a concurrent claimer waits, then finds the job no longer waiting
            job = s.scalar(q)
            if job is None:
                return None
            claim = self._take(s, job, worker_id, lease_seconds, now)
        self.on_change(job_id)
        return claim

    def _take(self, s: Session, job: Job, worker_id: str, lease_seconds: int, now: datetime) -> Claim | None:
        """Lease a waiting job to ``worker_id`` (attempt + 1), or end it if its deadline or attempts ran out."""
        if job.deadline_at is not None and job.deadline_at < now:
            job.status, job.completed_at = JobStatus.ABORTED, now
            job.error = "the Cancel-After deadline passed before the prediction started (not charged)"
            self.accounts.using(s).release(job.id)
            return None
        if job.attempt >= MAX_ATTEMPTS:
            job.status, job.completed_at = JobStatus.FAILED, now
            job.error = f"gave up after {job.attempt} attempts (the worker was lost each time)"
            self.accounts.using(s).release(job.id)
            return None
        job.status, job.attempt = JobStatus.PROCESSING, job.attempt + 1
        job.worker_id, job.lease_expires_at = worker_id, now + timedelta(seconds=lease_seconds)
        job.started_at = job.started_at or now
        return Claim(job.id, job.attempt, job.user_id, job.tier, dict(job.input), lease_seconds)

    def _fenced(self, s: Session, claim: Claim, **values: Any) -> None:
        done = s.execute(update(Job).where(Job.id == claim.job_id, Job.attempt == claim.attempt,
                                           Job.status == JobStatus.PROCESSING).values(**values))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleAttempt(f"prediction {claim.job_id}: attempt {claim.attempt} is no longer current")

    def progress(self, claim: Claim, fraction: float, log_line: str | None = None) -> bool:
        """Record progress; returns False when the job was canceled (or taken away) meanwhile."""
        try:
            with self.sessions.begin() as s:
                values: dict[str, Any] = {"progress": max(0.0, min(1.0, fraction)),
                                          "lease_expires_at": utcnow() + timedelta(seconds=claim.lease_seconds)}
                self._fenced(s, claim, **values)
                if log_line:
                    job = s.get(Job, claim.job_id)
                    assert job is not None
                    job.logs = (job.logs or "") + log_line + "\n"
        except StaleAttempt:
            return False
        self.on_change(claim.job_id)
        return True

    def is_current(self, claim: Claim) -> bool:
        with self.readers() as s:
            job = s.get(Job, claim.job_id)
            return job is not None and job.status == JobStatus.PROCESSING and job.attempt == claim.attempt

    def succeed(self, claim: Claim, output: Any) -> None:
        """Store the output and capture the hold, fenced by attempt.

        Raises:
            StaleAttempt: the attempt is no longer current (canceled, reaped); nothing changed.
        """
        with self.sessions.begin() as s:
            self._fenced(s, claim, status=JobStatus.SUCCEEDED, output=output, progress=1.0,
                         completed_at=utcnow(), lease_expires_at=None)
            self.accounts.using(s).capture(claim.job_id)
        self.on_change(claim.job_id)

    def fail(self, claim: Claim, error: str, code: str | None = None) -> None:
        """Mark the attempt failed and release the hold (fenced like ``succeed``).

        Args:
            claim: the attempt that failed.
            error: what went wrong, in words.
            code: the error's stable code (e.g. ``request_moderated``), for clients that branch on it.
        """
        with self.sessions.begin() as s:
            self._fenced(s, claim, status=JobStatus.FAILED, error=error, error_code=code, completed_at=utcnow(),
                         lease_expires_at=None)
            self.accounts.using(s).release(claim.job_id)
        self.on_change(claim.job_id)

    def reap(self) -> list[str]:
        """Put jobs whose lease expired (their worker died) back in the queue; returns their ids."""
        with self.sessions.begin() as s:
            q = select(Job).where(Job.status == JobStatus.PROCESSING, Job.lease_expires_at < utcnow())
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)  # never undo a claim or heartbeat committed meanwhile
            jobs = s.scalars(q).all()
            for job in jobs:
                job.status, job.worker_id, job.lease_expires_at = JobStatus.STARTING, None, None
            ids = [j.id for j in jobs]
        for job_id in ids:
            self.on_change(job_id)
        return ids

    def requeue_interrupted(self) -> list[str]:
        """At start-up of a single-machine server: every processing job was interrupted by the restart."""
        with self.sessions.begin() as s:
            jobs = s.scalars(select(Job).where(Job.status == JobStatus.PROCESSING)).all()
            for job in jobs:
                job.status, job.worker_id, job.lease_expires_at = JobStatus.STARTING, None, None
            return [j.id for j in jobs]

    # -- API side ---------------------------------------------------------------------------------
    def cancel(self, user_id: int, job_id: str) -> None:
        """Cancel a waiting or running job and release its hold; a finished job is left as it is.

        Raises:
            JobNotFound: no such job for this user.
        """
        with self.sessions.begin() as s:
            # Locked: a worker's success committing between this read and the write below would otherwise be
            # overwritten (a captured, finished job marked canceled). With the lock, the read sees it.
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.user_id != user_id:
                raise JobNotFound(f"no prediction {job_id}")
            if job.status in (JobStatus.STARTING, JobStatus.PROCESSING):
                job.status, job.completed_at, job.lease_expires_at = JobStatus.CANCELED, utcnow(), None
                self.accounts.using(s).release(job.id)
        self.on_change(job_id)

    def webhook_of(self, job_id: str) -> str | None:
        """The job's webhook URL (None: none, or no such job): one column, read without loading the job."""
        with self.readers() as s:
            return s.execute(_WEBHOOK_OF, {"job_id": job_id}).scalar()

    def get(self, user_id: int | None, job_id: str) -> Job:
        """A detached copy of the job (``user_id`` None: any owner, for workers).

        Raises:
            JobNotFound: missing, or another user's.
        """
        with self.readers() as s:
            job = s.get(Job, job_id)
            if job is None or (user_id is not None and job.user_id != user_id) or job.tier == TRAINING_TIER:
                raise JobNotFound(f"no prediction {job_id}")
            s.expunge(job)
            return job

    def list(self, user_id: int, limit: int = 50, before: datetime | None = None) -> list[Job]:
        with self.readers() as s:
            q = select(Job).where(Job.user_id == user_id, Job.tier != TRAINING_TIER)
            if before is not None:
                q = q.where(Job.created_at < before)
            jobs = list(s.scalars(q.order_by(Job.created_at.desc()).limit(limit)).all())
            for j in jobs:
                s.expunge(j)
            return jobs


class JobRemoteTasks:
    """The job's log of hosted (BFL) tasks, kept on its row: ``core.backends.base.RemoteTaskLog``.

    ``reserve`` is fenced by the claim's attempt, so only the current attempt may send a request; ``record``
    is not, because once BFL accepted a task it exists (and is paid for) whichever attempt sent it.

    Args:
        store: the job store.
        claim: the attempt that runs the edit.
    """

    def __init__(self, store: JobStore, claim: Claim):
        self.store, self.claim = store, claim

    def _locked(self, s: Session) -> Job | None:
        q = select(Job).where(Job.id == self.claim.job_id)
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update()  # two attempts of one job never both find the key free
        return s.scalar(q)

    def reserve(self, key: str) -> dict[str, Any] | None:
        from kontext_studio.core.errors import Canceled

        with self.store.sessions.begin() as s:
            job = self._locked(s)
            if job is None or job.attempt != self.claim.attempt or job.status != JobStatus.PROCESSING:
                raise Canceled(f"prediction {self.claim.job_id}: attempt {self.claim.attempt} is no longer current")
            tasks = dict(job.bfl_tasks or {})
            if key in tasks:
                return dict(tasks[key])
            tasks[key] = {"state": "sending", "attempt": self.claim.attempt, "at": utcnow().isoformat()}
            job.bfl_tasks = tasks  # a new dict: SQLAlchemy does not see in-place changes to JSON
            return None

    def record(self, key: str, task: dict[str, Any]) -> None:
        with self.store.sessions.begin() as s:
            job = self._locked(s)
            if job is None:
                return
            job.bfl_tasks = {**(job.bfl_tasks or {}), key: {**task, "state": "sent"}}
            job.bfl_task_id, job.bfl_polling_url = str(task.get("id"))[:128], task.get("polling_url")
            line = f"BFL task {task.get('id')} accepted (cost {task.get('cost')})\n"
            job.logs = (job.logs or "") + line

    def release(self, key: str) -> None:
        with self.store.sessions.begin() as s:
            job = self._locked(s)
            if job is None or key not in (job.bfl_tasks or {}):
                return
            job.bfl_tasks = {k: v for k, v in (job.bfl_tasks or {}).items() if k != key}
