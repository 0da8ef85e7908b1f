"""The credits ledger: double entry, one hold and one settlement per job, never a negative balance.

R3 (reliability.md) is the Hypothesis state machine at the end. CI runs it at a reduced size; the full
300 examples x 60 steps on both backends::

    KONTEXT_R3_FULL=1 .venv/bin/pytest tests/service/test_ledger.py -k state_machine
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, event, func, select, update
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.registry import TIERS
from kontext_studio.service.accounts import (
    Conflict,
    CreditBalance,
    InsufficientCredits,
    NotFound,
    SqlAccounts,
    UserRecord,
)
from kontext_studio.service.db import Balance, Hold, Job, JobStatus, LedgerEntry, Settlement

from .conftest import insert_job, retire_jobs

PRICE = {name: tier.price_credits for name, tier in TIERS.items()}


def entries_for(sessions: sessionmaker[Session], job_id: str) -> list[tuple[str, str, int]]:
    with sessions() as session:
        rows = session.execute(
            select(LedgerEntry.kind, LedgerEntry.account, LedgerEntry.amount)
            .where(LedgerEntry.job_id == job_id)
            .order_by(LedgerEntry.id)
        )
        return [(k, a, n) for k, a, n in rows]


def ledger_sum(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))) or 0)


# --- the basic movements -------------------------------------------------------------------------------


def test_grant_hold_capture(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    user = new_user()
    assert accounts.grant(user.id, 20) == CreditBalance(user.id, 20, 0)
    job_id = new_job(user.id, "pro")
    hold = accounts.hold(job_id, user.id, 8)
    assert (hold.job_id, hold.user_id, hold.amount) == (job_id, user.id, 8)
    assert accounts.balance(user.id) == CreditBalance(user.id, 12, 8)
    assert accounts.get_hold(job_id) == hold and accounts.get_settlement(job_id) is None

    settled = accounts.capture(job_id)
    assert (settled.kind, settled.amount) == ("capture", 8)
    assert accounts.balance(user.id) == CreditBalance(user.id, 12, 0)
    a, h = f"user:{user.id}:available", f"user:{user.id}:held"
    assert entries_for(sessions, job_id) == [
        ("hold", a, -8),
        ("hold", h, 8),
        ("capture", h, -8),
        ("capture", "revenue", 8),
    ]
    # Settling again, either way, is a no-op that reports the first outcome.
    assert accounts.capture(job_id) == settled
    assert accounts.release(job_id) == settled
    assert accounts.balance(user.id) == CreditBalance(user.id, 12, 0)
    assert len(entries_for(sessions, job_id)) == 4
    assert ledger_sum(sessions) == 0
    assert accounts.audit() == []


def test_release_returns_the_hold(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    user = new_user()
    accounts.grant(user.id, 5)
    job_id = new_job(user.id, "dev")
    accounts.hold(job_id, user.id, 5)
    assert accounts.balance(user.id) == CreditBalance(user.id, 0, 5)
    released = accounts.release(job_id)
    assert (released.kind, released.amount) == ("release", 5)
    assert accounts.capture(job_id) == released  # a late success after cancel charges nothing
    assert accounts.balance(user.id) == CreditBalance(user.id, 5, 0)
    assert [e[0] for e in entries_for(sessions, job_id)] == ["hold", "hold", "release", "release"]
    assert accounts.audit() == []


def test_hold_refusals_write_nothing(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    user, other = new_user(), new_user()
    accounts.grant(user.id, 7)
    job_id = new_job(user.id, "pro")
    with pytest.raises(InsufficientCredits) as err:
        accounts.hold(job_id, user.id, 8)
    assert (err.value.available, err.value.required) == (7, 8)
    assert accounts.balance(user.id) == CreditBalance(user.id, 7, 0)
    assert accounts.get_hold(job_id) is None and entries_for(sessions, job_id) == []

    with pytest.raises(NotFound):
        accounts.hold("no-such-job", user.id, 1)
    with pytest.raises(Conflict):  # the job is not the other user's to pay for
        accounts.hold(job_id, other.id, 1)
    with pytest.raises(InvalidRequest):
        accounts.hold(job_id, user.id, -1)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(InvalidRequest):
            accounts.grant(user.id, bad)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        accounts.grant(10**9, 5)
    with pytest.raises(NotFound):
        accounts.balance(10**9)
    with pytest.raises(NotFound):
        accounts.capture(job_id)  # never held
    assert accounts.balance(user.id) == CreditBalance(user.id, 7, 0)


def test_second_hold_is_idempotent_or_a_conflict(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    user = new_user()
    accounts.grant(user.id, 30)
    job_id = new_job(user.id, "max")
    first = accounts.hold(job_id, user.id, 15)
    assert accounts.hold(job_id, user.id, 15) == first  # a retried submit
    with pytest.raises(Conflict):
        accounts.hold(job_id, user.id, 8)
    assert accounts.balance(user.id) == CreditBalance(user.id, 15, 15)
    assert len(entries_for(sessions, job_id)) == 2


def test_uniqueness_and_non_negativity_live_in_the_database(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    """Bypassing the service cannot create a second hold or settlement, or a negative balance."""
    user = new_user()
    accounts.grant(user.id, 10)
    job_id = new_job(user.id)
    accounts.hold(job_id, user.id, 5)
    accounts.release(job_id)
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(Hold(job_id=job_id, user_id=user.id, amount=5))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(Settlement(job_id=job_id, kind="capture", amount=5))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.execute(update(Balance).where(Balance.user_id == user.id).values(held=Balance.held - 1))


def test_free_mode_records_zero_holds(
    sessions: sessionmaker[Session], new_user: Callable[..., UserRecord], new_job: Callable[..., str]
) -> None:
    free = SqlAccounts(sessions, free=True)
    assert free.free
    user = new_user()
    job_id = new_job(user.id, "max")
    hold = free.hold(job_id, user.id, 15)  # no credits at all, still accepted
    assert hold.amount == 0
    assert free.capture(job_id).amount == 0
    assert free.balance(user.id) == CreditBalance(user.id, 0, 0)
    assert free.audit() == []


def test_calls_join_the_callers_transaction(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    """``using(session)``: complete a job and capture its hold atomically; a rollback undoes both."""
    user = new_user()
    accounts.grant(user.id, 10)
    job_id = new_job(user.id)
    accounts.hold(job_id, user.id, 5)

    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))
        accounts.using(session).capture(job_id)
        session.rollback()
    assert accounts.get_settlement(job_id) is None
    assert accounts.balance(user.id) == CreditBalance(user.id, 5, 5)

    too_dear = new_job(user.id, "max")
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))
        view = accounts.using(session)
        with pytest.raises(InsufficientCredits):  # a refused call leaves the caller's work in place
            view.hold(too_dear, user.id, 15)
        assert view.capture(job_id).kind == "capture"
    with sessions() as session:
        assert session.get_one(Job, job_id).status == JobStatus.SUCCEEDED
    assert accounts.balance(user.id) == CreditBalance(user.id, 5, 0)
    assert accounts.audit() == []


# --- concurrency ------------------------------------------------------------------------------------------


def test_concurrent_holds_never_overdraw(
    accounts: SqlAccounts, new_user: Callable[..., UserRecord], new_job: Callable[..., str]
) -> None:
    """N threads hold at once against one balance: exactly floor(balance / price) succeed, never below 0."""
    threads, price, granted = 24, PRICE["pro"], 43
    user = new_user()
    accounts.grant(user.id, granted)
    jobs = [new_job(user.id, "pro") for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    outcomes: list[str] = []
    lowest: list[int] = []
    done = threading.Event()

    def submit(job_id: str) -> None:
        barrier.wait()
        try:
            accounts.hold(job_id, user.id, price)
            outcomes.append("held")
        except InsufficientCredits:
            outcomes.append("refused")
        except Exception as exc:  # pragma: no cover - reported below
            outcomes.append(f"error: {exc!r}")

    def watch() -> None:
        while not done.is_set():
            lowest.append(accounts.balance(user.id).available)

    workers = [threading.Thread(target=submit, args=(j,)) for j in jobs]
    watcher = threading.Thread(target=watch)
    for t in workers:
        t.start()
    watcher.start()
    barrier.wait()
    for t in workers:
        t.join(timeout=60)
    done.set()
    watcher.join(timeout=60)

    assert sorted(outcomes) == ["held"] * (granted // price) + ["refused"] * (threads - granted // price)
    assert min(lowest) >= 0
    assert accounts.balance(user.id) == CreditBalance(user.id, granted % price, price * (granted // price))
    assert accounts.audit() == []


def test_concurrent_settlements_settle_once(
    accounts: SqlAccounts,
    sessions: sessionmaker[Session],
    engine: Engine,
    new_user: Callable[..., UserRecord],
    new_job: Callable[..., str],
) -> None:
    """A capture and a release race on one job: the first to commit wins, the other returns its outcome.

    The capture is left uncommitted while the release starts, so on PostgreSQL the release passes its
    "already settled?" read, blocks on the settlements primary key, and resolves through the unique
    violation; on SQLite it waits for the write lock. Either way one settlement and one pair of entries.
    """
    user = new_user()
    accounts.grant(user.id, 8)
    job_id = new_job(user.id, "pro")
    accounts.hold(job_id, user.id, 8)
    result: dict[str, object] = {}
    racer_errors: list[str] = []

    def on_error(context: ExceptionContext) -> None:
        if threading.current_thread().name == "racer":
            racer_errors.append(type(context.original_exception).__name__)

    event.listen(engine, "handle_error", on_error)

    def racer() -> None:
        started = time.monotonic()
        result["settlement"] = accounts.release(job_id)
        result["waited"] = time.monotonic() - started

    with sessions.begin() as session:
        first = accounts.using(session).capture(job_id)
        thread = threading.Thread(target=racer, name="racer")
        thread.start()
        time.sleep(0.3)
        assert "settlement" not in result  # blocked behind the uncommitted capture
    thread.join(timeout=30)
    event.remove(engine, "handle_error", on_error)
    if engine.dialect.name == "postgresql":  # the database, not a read-then-write check, refused the second
        assert racer_errors == ["UniqueViolation"]
    assert result["settlement"] == first and first.kind == "capture"
    assert float(result["waited"]) >= 0.25  # type: ignore[arg-type]
    assert [e[0] for e in entries_for(sessions, job_id)] == ["hold", "hold", "capture", "capture"]
    assert accounts.balance(user.id) == CreditBalance(user.id, 0, 0)

    # And a crowd of settlers on a fresh job.
    accounts.grant(user.id, 5)
    job_id = new_job(user.id, "dev")
    accounts.hold(job_id, user.id, 5)
    barrier = threading.Barrier(12)
    kinds: list[str] = []

    def settle(i: int) -> None:
        barrier.wait()
        kinds.append((accounts.capture if i % 2 else accounts.release)(job_id).kind)

    crowd = [threading.Thread(target=settle, args=(i,)) for i in range(12)]
    for t in crowd:
        t.start()
    for t in crowd:
        t.join(timeout=60)
    assert len(kinds) == 12 and len(set(kinds)) == 1
    assert len(entries_for(sessions, job_id)) == 4
    assert accounts.audit() == []


# --- R3: the ledger state machine ----------------------------------------------------------------------------


@dataclass
class ModelJob:
    price: int
    status: str = "rejected"  # refused at submit (insufficient credits): no hold
    attempt: int = 0
    settlement: str | None = None


FULL = bool(os.environ.get("KONTEXT_R3_FULL"))
SIZES = {
    "sqlite": (300, 60) if FULL else (50, 30),
    "postgresql": (300, 60) if FULL else (20, 20),
}


def ledger_machine(accounts: SqlAccounts, sessions: sessionmaker[Session]) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        """submit / start / succeed / fail / cancel / deadline / worker-lost / retry against the database.

        The test plays the job runner: job status changes are fenced by ``attempt`` and commit in the same
        transaction as the capture or release, as the real runner will. Each rule picks a job that is in a
        state where the step means something (preconditions), so runs reach every outcome.
        """

        def __init__(self) -> None:
            super().__init__()
            self.user = accounts.create_user(f"r3-{uuid.uuid4().hex}@example.com")
            self.granted = 0
            self.model: dict[str, ModelJob] = {}

        # -- helpers
        def _in(self, *statuses: str) -> list[str]:
            return [job_id for job_id, job in self.model.items() if job.status in statuses]

        def _held(self) -> int:
            return sum(j.price for j in self.model.values() if j.status != "rejected" and j.settlement is None)

        def _captured(self) -> int:
            return sum(j.price for j in self.model.values() if j.settlement == "capture")

        def _available(self) -> int:
            return self.granted - self._captured() - self._held()

        def _finish(self, job_id: str, to: str, settle: str) -> None:
            """Fenced status change and settlement in one transaction, as the job runner does it."""
            job = self.model[job_id]
            with sessions.begin() as session:
                changed = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.attempt == job.attempt, Job.status.in_(["starting", "processing"]))
                    .values(status=to)
                )
                assert changed.rowcount == 1  # type: ignore[attr-defined]
                view = accounts.using(session)
                outcome = view.capture(job_id) if settle == "capture" else view.release(job_id)
                assert (outcome.kind, outcome.amount) == (settle, job.price)
            job.status, job.settlement = to, settle

        # -- rules
        @initialize(amount=st.integers(min_value=0, max_value=80))
        def opening_grant(self, amount: int) -> None:
            if amount:
                accounts.grant(self.user.id, amount)
                self.granted += amount

        @rule(amount=st.integers(min_value=1, max_value=60))
        def grant(self, amount: int) -> None:
            accounts.grant(self.user.id, amount)
            self.granted += amount

        @rule(tier=st.sampled_from(sorted(PRICE)))
        def submit(self, tier: str) -> None:
            job_id = insert_job(sessions, self.user.id, tier)
            job = ModelJob(price=PRICE[tier])
            affordable = self._available() >= job.price
            self.model[job_id] = job
            try:
                hold = accounts.hold(job_id, self.user.id, job.price)
            except InsufficientCredits:
                assert not affordable
            else:
                assert affordable and hold.amount == job.price
                job.status = "starting"

        @precondition(lambda self: self._in("starting"))
        @rule(data=st.data())
        def start(self, data: st.DataObject) -> None:
            job_id = data.draw(st.sampled_from(self._in("starting")))
            job = self.model[job_id]
            job.attempt += 1
            with sessions.begin() as session:
                changed = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "starting")
                    .values(status="processing", attempt=job.attempt)
                )
                assert changed.rowcount == 1  # type: ignore[attr-defined]
            job.status = "processing"

        @precondition(lambda self: self._in("processing"))
        @rule(data=st.data())
        def succeed(self, data: st.DataObject) -> None:
            self._finish(data.draw(st.sampled_from(self._in("processing"))), "succeeded", "capture")

        @precondition(lambda self: self._in("processing"))
        @rule(data=st.data())
        def fail(self, data: st.DataObject) -> None:
            self._finish(data.draw(st.sampled_from(self._in("processing"))), "failed", "release")

        @precondition(lambda self: self._in("starting", "processing"))
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            self._finish(data.draw(st.sampled_from(self._in("starting", "processing"))), "canceled", "release")

        @precondition(lambda self: self._in("starting"))
        @rule(data=st.data())
        def deadline(self, data: st.DataObject) -> None:
            """The deadline passed before a worker started it: aborted, not charged."""
            self._finish(data.draw(st.sampled_from(self._in("starting"))), "aborted", "release")

        @precondition(lambda self: self._in("processing"))
        @rule(data=st.data())
        def worker_lost(self, data: st.DataObject) -> None:
            """The lease expired: the reaper puts the job back in the queue; the ledger is untouched."""
            job_id = data.draw(st.sampled_from(self._in("processing")))
            with sessions.begin() as session:
                session.execute(update(Job).where(Job.id == job_id).values(status="starting", worker_id=None))
            self.model[job_id].status = "starting"

        @precondition(lambda self: self.model)
        @rule(data=st.data(), settle=st.sampled_from(["capture", "release"]))
        def retry(self, data: st.DataObject, settle: str) -> None:
            """Duplicates change nothing: a resent submit, a repeated settlement, a stale worker's completion."""
            job_id = data.draw(st.sampled_from(list(self.model)))
            job = self.model[job_id]
            if job.status == "rejected":
                # Resending a refused submit is refused again while it is unaffordable. (Once affordable, the
                # API makes a new job for it, which the submit rule covers.)
                if self._available() < job.price:
                    with pytest.raises(InsufficientCredits):
                        accounts.hold(job_id, self.user.id, job.price)
                return
            assert accounts.hold(job_id, self.user.id, job.price).amount == job.price
            if job.settlement is not None:
                outcome = accounts.capture(job_id) if settle == "capture" else accounts.release(job_id)
                assert outcome.kind == job.settlement
            else:
                # A worker of an earlier attempt reports completion: fenced off, 0 rows, no settlement.
                with sessions.begin() as session:
                    changed = session.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.attempt == job.attempt - 1, Job.status == "processing")
                        .values(status="succeeded")
                    )
                    assert changed.rowcount == 0  # type: ignore[attr-defined]

        # -- invariants, after every step
        @invariant()
        def ledger_is_consistent(self) -> None:
            with sessions() as session:
                assert session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))) == 0
                negative = (Balance.available < 0) | (Balance.held < 0)
                assert session.scalar(select(func.count()).select_from(Balance).where(negative)) == 0
                per_job = session.execute(
                    select(LedgerEntry.job_id, LedgerEntry.kind, func.count())
                    .join(Job, Job.id == LedgerEntry.job_id)
                    .where(Job.user_id == self.user.id)
                    .group_by(LedgerEntry.job_id, LedgerEntry.kind)
                ).all()
                bal = session.execute(
                    select(Balance.available, Balance.held).where(Balance.user_id == self.user.id)
                ).one()
            kinds: dict[str, dict[str, int]] = {}
            for job_id, kind, n in per_job:
                kinds.setdefault(str(job_id), {})[kind] = n
            for job_id, job in self.model.items():
                got = kinds.get(job_id, {})
                assert got.get("hold", 0) <= 2  # at most one hold: one pair of entries
                assert got.get("capture", 0) + got.get("release", 0) <= 2  # at most one settlement
                want = {} if job.status == "rejected" else {"hold": 2}
                if job.settlement:
                    want[job.settlement] = 2
                assert got == want
            assert bal.available + bal.held == self.granted - self._captured()
            assert (bal.available, bal.held) == (self._available(), self._held())

        def teardown(self) -> None:
            assert accounts.audit() == []
            retire_jobs(sessions, self.model)

    return LedgerMachine


def test_ledger_state_machine(accounts: SqlAccounts, sessions: sessionmaker[Session], db_url: str) -> None:
    examples, steps = SIZES["sqlite" if db_url.startswith("sqlite") else "postgresql"]
    run_state_machine_as_test(
        ledger_machine(accounts, sessions),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
