"""R2 stale-worker fencing and the store's side of dispatch (``claim_job``, the reaper), on SQLite and PostgreSQL.

The scenario: worker A claims a job, goes silent until its lease expires, the reaper puts the job back and
sends it again, worker B claims it (attempt 2), then A reports completion. A's report must be refused
(``StaleAttempt``, HTTP 409) and change nothing: not the job, not the ledger, not the balance. 100 of 100.

The database is shared by the session's tests, so assertions only look at this test's jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.accounts import SqlAccounts, UserRecord
from kontext_studio.service.api.problems import status_for
from kontext_studio.service.db import Balance, Job, LedgerEntry, Settlement, utcnow
from kontext_studio.service.jobs.jobs_common import LEASE_SECONDS, MAX_ATTEMPTS, StaleAttempt
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.reaper import Reaper, reap_once

PRICE = 5


class RecordingDispatcher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def enqueue(self, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(job_id)


@pytest.fixture()
def store(sessions: sessionmaker[Session], accounts: SqlAccounts) -> JobStore:
    return JobStore(sessions, accounts)


@pytest.fixture()
def funded(new_user: Callable[..., UserRecord], accounts: SqlAccounts) -> Callable[[int], int]:
    def make(credits: int) -> int:
        uid = new_user().id
        accounts.grant(uid, credits)
        return uid

    return make


def submit(store: JobStore, uid: int, **kwargs: Any) -> str:
    job_id, created = store.submit(uid, "dev", "flux-kontext-dev", {"prompt": "x", "n": kwargs.pop("n", 0)}, PRICE,
                                   **kwargs)
    assert created
    return job_id


def expire_lease(sessions: sessionmaker[Session], job_id: str) -> None:
    """Time passes for this job: its lease ends a second ago (instead of sleeping a lease out)."""
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def snapshot(sessions: sessionmaker[Session], job_id: str, user_id: int) -> tuple[Any, ...]:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        row = (job.status, job.attempt, job.worker_id, job.output, job.error, job.progress, job.completed_at,
               job.lease_expires_at, job.logs)
        entries = tuple(s.execute(select(LedgerEntry.account, LedgerEntry.amount, LedgerEntry.kind)
                                  .where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)).all())
        balance = s.execute(select(Balance.available, Balance.held).where(Balance.user_id == user_id)).one()
        settlement = s.get(Settlement, job_id)
        return row, entries, tuple(balance), settlement and (settlement.kind, settlement.amount)


def test_a_stale_worker_cannot_complete_a_reaped_job_100_of_100(store: JobStore, sessions: sessionmaker[Session],
                                                                accounts: SqlAccounts,
                                                                funded: Callable[[int], int]) -> None:
    uid = funded(100 * PRICE)
    dispatcher = RecordingDispatcher()
    fenced = 0
    for i in range(100):
        job_id = submit(store, uid, n=i)
        a = store.claim_job(job_id, "worker-A", lease_seconds=60)
        assert a is not None and a.attempt == 1
        assert store.progress(a, 0.5)
        expire_lease(sessions, job_id)  # A went silent
        report = reap_once(store, dispatcher, stale_after=3600)
        assert job_id in report.reaped and dispatcher.sent[-1] == job_id
        b = store.claim_job(job_id, "worker-B", lease_seconds=60)
        assert b is not None and b.attempt == 2
        assert store.claim_job(job_id, "worker-C") is None  # the re-sent message is a duplicate now

        before = snapshot(sessions, job_id, uid)
        with pytest.raises(StaleAttempt) as stale:
            store.succeed(a, {"files": [f"outputs/{job_id}/1.png"], "by": "A"})
        assert status_for(stale.value) == 409 and stale.value.code == "stale_attempt"
        with pytest.raises(StaleAttempt):
            store.fail(a, "A's late failure")
        assert store.progress(a, 0.9) is False and not store.is_current(a)
        after = snapshot(sessions, job_id, uid)
        if after == before:
            fenced += 1

        store.succeed(b, {"files": [f"outputs/{job_id}/2.png"], "by": "B"})
        with pytest.raises(StaleAttempt):
            store.succeed(a, {"files": [f"outputs/{job_id}/1.png"], "by": "A"})  # even after B finished
        job = store.get(None, job_id)
        assert job.status == "succeeded" and job.attempt == 2 and (job.output or {}).get("by") == "B"
    assert fenced == 100
    with sessions() as s:
        kinds = s.scalars(select(LedgerEntry.kind).join(Job, Job.id == LedgerEntry.job_id)
                          .where(Job.user_id == uid)).all()
    assert sorted(set(kinds)) == ["capture", "hold"] and len(kinds) == 100 * 4  # one hold, one capture each
    bal = accounts.balance(uid)
    assert (bal.available, bal.held) == (0, 0)
    assert accounts.audit() == []


def test_a_lease_that_really_runs_out_is_reaped(store: JobStore, funded: Callable[[int], int]) -> None:
    uid = funded(PRICE)
    job_id = submit(store, uid)
    a = store.claim_job(job_id, "A", lease_seconds=1)
    assert a is not None and a.lease_seconds == 1
    assert job_id not in store.reap()
    time.sleep(1.3)
    assert store.progress(a, 0.5)  # a heartbeat renews the lease by the claim's lease, not the default
    assert job_id not in store.reap()
    time.sleep(1.3)
    dispatcher = RecordingDispatcher()
    assert job_id in reap_once(store, dispatcher).reaped and job_id in dispatcher.sent
    job = store.get(None, job_id)
    assert (job.status, job.worker_id, job.lease_expires_at, job.attempt) == ("starting", None, None, 1)


def test_claim_job_takes_only_a_waiting_job(store: JobStore, funded: Callable[[int], int],
                                            accounts: SqlAccounts) -> None:
    uid = funded(10 * PRICE)
    assert store.claim_job("nosuchjob", "A") is None
    job_id = submit(store, uid)
    claim = store.claim_job(job_id, "A", lease_seconds=30)
    assert claim is not None and (claim.job_id, claim.attempt, claim.user_id, claim.tier) == (job_id, 1, uid, "dev")
    job = store.get(None, job_id)
    assert job.status == "processing" and job.worker_id == "A" and job.started_at is not None
    assert job.lease_expires_at is not None
    assert timedelta(seconds=25) < job.lease_expires_at - utcnow() <= timedelta(seconds=30)
    assert store.claim_job(job_id, "B") is None  # taken
    store.succeed(claim, {"files": []})
    assert store.claim_job(job_id, "B") is None  # finished

    canceled = submit(store, uid, n=1)
    store.cancel(uid, canceled)
    assert store.claim_job(canceled, "B") is None
    assert store.get(None, canceled).status == "canceled"

    default = store.claim_job(submit(store, uid, n=2), "C")
    assert default is not None and default.lease_seconds == LEASE_SECONDS


def test_claim_job_ends_a_job_past_its_deadline_or_out_of_attempts(store: JobStore, sessions: sessionmaker[Session],
                                                                   funded: Callable[[int], int],
                                                                   accounts: SqlAccounts) -> None:
    uid = funded(2 * PRICE)
    late = submit(store, uid, deadline=utcnow() - timedelta(seconds=1))
    assert store.claim_job(late, "A") is None
    job = store.get(None, late)
    settled = accounts.get_settlement(late)
    assert job.status == "aborted" and settled is not None and settled.kind == "release"

    doomed = submit(store, uid, n=1)
    for attempt in range(1, MAX_ATTEMPTS + 1):  # the job kills its worker every time
        claim = store.claim_job(doomed, f"W{attempt}")
        assert claim is not None and claim.attempt == attempt
        expire_lease(sessions, doomed)
        assert doomed in store.reap()
    assert store.claim_job(doomed, "W-last") is None
    job = store.get(None, doomed)
    assert job.status == "failed" and "gave up" in (job.error or "")
    settled = accounts.get_settlement(doomed)
    assert settled is not None and settled.kind == "release"
    assert (accounts.balance(uid).available, accounts.balance(uid).held) == (2 * PRICE, 0)


def test_concurrent_claims_of_one_job_have_one_winner(store: JobStore, funded: Callable[[int], int]) -> None:
    uid = funded(20 * PRICE)
    for n in range(20):
        job_id = submit(store, uid, n=n)
        barrier = threading.Barrier(6)
        wins: list[Any] = []

        def take(i: int, job_id: str = job_id, barrier: threading.Barrier = barrier,
                 wins: list[Any] = wins) -> None:
            barrier.wait()
            claim = store.claim_job(job_id, f"W{i}")
            if claim is not None:
                wins.append((f"W{i}", claim))

        threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(wins) == 1 and wins[0][1].attempt == 1
        job = store.get(None, job_id)
        assert (job.status, job.attempt, job.worker_id) == ("processing", 1, wins[0][0])


def test_claim_still_takes_the_oldest_waiting_job(store: JobStore, funded: Callable[[int], int]) -> None:
    uid = funded(2 * PRICE)
    first, second = submit(store, uid, n=1), submit(store, uid, n=2)
    taken = []
    while (claim := store.claim("local")) is not None:  # also drains jobs other tests left waiting
        taken.append(claim.job_id)
    assert taken.index(first) < taken.index(second)


def test_the_reaper_resends_jobs_waiting_too_long_once_per_period(store: JobStore, funded: Callable[[int], int],
                                                                   sessions: sessionmaker[Session]) -> None:
    uid = funded(PRICE)
    job_id = submit(store, uid)
    with sessions.begin() as s:  # submitted a minute ago; its message never arrived
        s.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(seconds=60)))
    down = RecordingDispatcher(fail=True)
    report = reap_once(store, down, stale_after=30)
    assert job_id not in report.resent and report.errors >= 1  # the broker is down: try again next pass

    dispatcher = RecordingDispatcher()
    reaper = Reaper(store, dispatcher, interval=3600, stale_after=30)
    assert job_id in reaper.run_once().resent
    assert job_id not in reaper.run_once().resent  # sent less than stale_after ago: not again
    reaper.sent[job_id] -= 31
    assert job_id in reaper.run_once().resent
    claim = store.claim_job(job_id, "A")
    assert claim is not None
    reaper.run_once()
    assert job_id not in reaper.sent  # left the queue: forgotten
    assert reap_once(store, dispatcher, stale_after=0).resent.count(job_id) == 0  # processing: not resent


class CountingRecorder(RecordingDispatcher):
    def __init__(self, queued: Callable[[], int]) -> None:
        super().__init__()
        self._queued = queued

    def queued(self) -> int:
        return self._queued()


def test_the_reaper_resends_only_as_many_jobs_as_messages_are_missing(store: JobStore, funded: Callable[[int], int],
                                                                       sessions: sessionmaker[Session]) -> None:
    uid = funded(2 * PRICE)
    oldest, older = submit(store, uid, n=1), submit(store, uid, n=2)
    with sessions.begin() as s:  # the two oldest waiting jobs in the (shared) database
        for job_id, years in ((oldest, 11), (older, 10)):
            s.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(days=365 * years)))
    with sessions() as s:
        waiting = len(s.scalars(select(Job.id).where(Job.status == "starting")).all())

    healthy = CountingRecorder(lambda: waiting)  # as many messages as waiting jobs: a long queue, nothing lost
    report = reap_once(store, healthy, stale_after=1)
    assert (report.missing, report.resent, healthy.sent) == (0, [], [])

    one_lost = CountingRecorder(lambda: waiting - 1)
    report = reap_once(store, one_lost, stale_after=1)
    assert report.missing == 1 and report.resent == [oldest] == one_lost.sent

    broken = CountingRecorder(lambda: 1 // 0)  # cannot count: falls back to re-sending every stale job
    report = reap_once(store, broken, stale_after=1)
    assert report.missing is None and {oldest, older} <= set(report.resent)
