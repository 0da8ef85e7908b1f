"""The reaper: no job stays lost when a worker dies or a broker message disappears.

Two sweeps, both safe to repeat and to run from several processes at once (a job sent twice is claimed
once; see ``JobStore.claim_job``):

* **Expired leases.** A worker reports progress at least every ``lease_seconds``; a job whose lease ran out
  lost its worker (``kill -9``, a machine gone). ``JobStore.reap`` puts it back to ``starting`` (its attempt
  count stays, so a job that kills every worker fails after ``MAX_ATTEMPTS``) and it is sent again.
* **Lost messages.** A job still ``starting`` ``stale_after`` seconds after it was created may have lost
  its message (Redis restarted without persistence, a publish failed after the commit). When the dispatcher
  can count its queue (``CountingDispatcher``), only as many jobs as there are missing messages (waiting
  jobs minus queued messages) are re-sent, oldest first, so a long but healthy queue gets no duplicates;
  otherwise every such job is. A ``Reaper`` remembers what it sent and re-sends a job at most once per
  ``stale_after``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select

from kontext_studio.service.background import PollingLoop
from kontext_studio.service.db import Job, JobStatus, utcnow
from kontext_studio.service.jobs.dispatch_base import CountingDispatcher, Dispatcher
from kontext_studio.service.jobs.jobs_sql import JobStore

logger = logging.getLogger("kontext_studio.reaper")

DEFAULT_STALE_AFTER = 300.0
DEFAULT_INTERVAL = 30.0
STALE_BATCH = 1000


@dataclass
class ReapReport:
    """What one pass did."""

    reaped: list[str] = field(default_factory=list)  # lease expired: back in the queue and re-sent
    resent: list[str] = field(default_factory=list)  # waiting too long: re-sent (message presumed lost)
    errors: int = 0  # enqueues that failed (the next pass tries again)
    missing: int | None = None  # waiting jobs minus queued messages, when the dispatcher counts its queue


def reap_once(store: JobStore, dispatcher: Dispatcher, *, stale_after: float = DEFAULT_STALE_AFTER,
              sent: dict[str, float] | None = None) -> ReapReport:
    """One pass of both sweeps.

    Args:
        store: the job store.
        dispatcher: where re-queued jobs are sent.
        stale_after: seconds a job may wait unclaimed before its message is presumed lost.
        sent: job id → ``time.monotonic()`` of this reaper's last send; jobs sent less than ``stale_after``
            ago are not sent again. Updated in place (None: no memory, every stale job is sent).

    Returns:
        The ids re-queued and re-sent.
    """
    report = ReapReport()
    memory: dict[str, float] = {} if sent is None else sent
    now = time.monotonic()

    def send(job_id: str) -> bool:
        try:
            dispatcher.enqueue(job_id)
        except Exception:
            logger.exception("could not send prediction %s; the next pass retries", job_id)
            report.errors += 1
            return False
        memory[job_id] = now
        return True

    for job_id in store.reap():
        send(job_id)  # a failed send leaves the job waiting: the stale sweep sends it later
        report.reaped.append(job_id)

    budget: int | None = None
    if isinstance(dispatcher, CountingDispatcher):
        try:
            queued = dispatcher.queued()
        except Exception:
            logger.exception("could not count the queue; re-sending every stale job")
        else:
            with store.sessions() as s:
                total = s.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.STARTING))
            budget = report.missing = max(0, int(total or 0) - queued)
    cutoff = utcnow() - timedelta(seconds=stale_after)
    waiting: list[str] = []
    if budget != 0:
        with store.sessions() as s:
            waiting = list(s.scalars(select(Job.id).where(Job.status == JobStatus.STARTING, Job.created_at < cutoff)
                                     .order_by(Job.created_at).limit(STALE_BATCH)))
    for job_id in waiting:
        if budget is not None and len(report.resent) >= budget:
            break
        if job_id in report.reaped or now - memory.get(job_id, float("-inf")) < stale_after:
            continue
        if send(job_id):
            report.resent.append(job_id)
    if sent is not None and budget != 0:  # forget jobs that left the queue: the memory stays as small as it
        keep = set(waiting) | set(report.reaped)
        for job_id in [j for j in memory if j not in keep]:
            del memory[job_id]
    if report.reaped or report.resent:
        logger.info("reaper: %d expired leases re-queued, %d waiting jobs re-sent", len(report.reaped),
                    len(report.resent))
    return report


class Reaper(PollingLoop):
    """Runs ``reap_once`` every ``interval`` seconds in a background thread.

    Args:
        store: the job store.
        dispatcher: where re-queued jobs are sent.
        interval: seconds between passes (well below the lease, so a lost job waits about one lease).
        stale_after: see ``reap_once``.
    """

    def __init__(self, store: JobStore, dispatcher: Dispatcher, *, interval: float = DEFAULT_INTERVAL,
                 stale_after: float = DEFAULT_STALE_AFTER):
        super().__init__("kontext-reaper", interval, wait_first=True)
        self.store, self.dispatcher = store, dispatcher
        self.stale_after = stale_after
        self.sent: dict[str, float] = {}
        self.passes = 0
        self.total = ReapReport()

    def run_once(self) -> ReapReport:
        report = reap_once(self.store, self.dispatcher, stale_after=self.stale_after, sent=self.sent)
        self.passes += 1
        self.total.reaped += report.reaped
        self.total.resent += report.resent
        self.total.errors += report.errors
        return report

    def tick(self) -> bool:
        """One pass; the next waits a full interval."""
        self.run_once()
        return False
