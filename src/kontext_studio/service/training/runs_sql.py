"""Training runs and user LoRAs in the service database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.accounts.accounts_common import NotFound
from kontext_studio.service.accounts.accounts_sql import SqlAccounts
from kontext_studio.service.db.base import utcnow
from kontext_studio.service.db.models import TRAINING_TIER, Job, JobStatus
from kontext_studio.service.db.models_training import TERMINAL_RUN_STATUSES, RunStatus, TrainingRun, UserLora


class TrainingStore:
    """Create, read, progress and finish training runs; list and add user LoRAs.

    With ``accounts``, a run holds ``price`` credits at submit and settles them exactly once when it ends:
    captured when it succeeds, released when it fails or is canceled. The ledger keys holds by job, so each
    run gets a jobs row of its own id in the ``training`` tier, created already finished: no worker claims,
    reaps or requeues it, and prediction lists skip that tier.

    Args:
        sessions: session factory of the service database.
        accounts: the credits ledger (None: runs are free and nothing is held).
        price: credits a run holds at submit.
    """

    def __init__(self, sessions: sessionmaker[Session], accounts: SqlAccounts | None = None, price: int = 0):
        self.sessions, self.accounts, self.price = sessions, accounts, price

    def submit(self, user_id: int, name: str, config: dict[str, Any], dataset_key: str, pairs: int,
               data_hash: str, run_id: str | None = None) -> str:
        """Queue a run and hold its price, in one transaction; returns its id.

        Raises:
            InsufficientCredits: the user has less than the price available; nothing is written.
        """
        with self.sessions.begin() as s:
            run = TrainingRun(user_id=user_id, name=name, config=config, dataset_key=dataset_key, pairs=pairs,
                              data_hash=data_hash, total_steps=int(config["steps"]), validations=[])
            if run_id:
                run.id = run_id
            s.add(run)
            s.flush()
            if self.accounts is not None:
                now = utcnow()
                s.add(Job(id=run.id, user_id=user_id, model="lora-training", tier=TRAINING_TIER,
                          status=JobStatus.SUCCEEDED, input={"prompt": f"LoRA training: {name}",
                                                             "training_run": run.id}, cost=self.price,
                          progress=1.0, created_at=now, completed_at=now))
                s.flush()
                self.accounts.using(s).hold(run.id, user_id, self.price)
            return run.id

    def _settle(self, s: Session, run_id: str, status: RunStatus) -> None:
        """Capture (succeeded) or release (failed, canceled) the run's hold, if it has one."""
        if self.accounts is None:
            return
        ledger = self.accounts.using(s)
        if ledger.get_hold(run_id) is None:  # a run queued before prices applied to training
            return
        if status == RunStatus.SUCCEEDED:
            ledger.capture(run_id)
        else:
            ledger.release(run_id)
        # The anchor shows the run's ending in the usage history.
        s.execute(update(Job).where(Job.id == run_id, Job.tier == TRAINING_TIER).values(status=str(status)))

    def get(self, user_id: int | None, run_id: str) -> TrainingRun:
        """A run (detached); ``user_id`` None skips the owner check (the runner).

        Raises:
            NotFound: no such run for this user (another user's run answers the same).
        """
        with self.sessions() as s:
            run = s.get(TrainingRun, run_id)
            if run is None or (user_id is not None and run.user_id != user_id):
                raise NotFound(f"no training run {run_id}")
            s.expunge(run)
            return run

    def runs(self, user_id: int, limit: int = 50) -> list[TrainingRun]:
        with self.sessions() as s:
            rows = list(s.scalars(select(TrainingRun).where(TrainingRun.user_id == user_id)
                                  .order_by(TrainingRun.created_at.desc()).limit(limit)))
            for r in rows:
                s.expunge(r)
            return rows

    def cancel(self, user_id: int, run_id: str) -> None:
        """Cancel a queued run at once; ask a running one to stop (it checkpoints and ends ``canceled``)."""
        self.get(user_id, run_id)
        with self.sessions.begin() as s:
            done = s.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                       TrainingRun.status == RunStatus.QUEUED)
                             .values(status=RunStatus.CANCELED, completed_at=utcnow(), cancel_requested=True))
            if done.rowcount == 1:  # type: ignore[attr-defined]
                self._settle(s, run_id, RunStatus.CANCELED)
            s.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING)
                      .values(cancel_requested=True))

    def cancel_requested(self, run_id: str) -> bool:
        with self.sessions() as s:
            return bool(s.scalar(select(TrainingRun.cancel_requested).where(TrainingRun.id == run_id)))

    def claim(self) -> TrainingRun | None:
        """Take the oldest queued run (compare-and-set on the status, so two runners never share one)."""
        with self.sessions.begin() as s:
            run_id = s.scalar(select(TrainingRun.id).where(TrainingRun.status == RunStatus.QUEUED)
                              .order_by(TrainingRun.created_at).limit(1))
            if run_id is None:
                return None
            done = s.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                       TrainingRun.status == RunStatus.QUEUED)
                             .values(status=RunStatus.RUNNING, started_at=utcnow()))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
        return self.get(None, run_id)

    def requeue_interrupted(self) -> int:
        """Runs left ``running`` by a stopped server go back to the queue (they resume from a checkpoint)."""
        with self.sessions.begin() as s:
            res = s.execute(update(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING)
                            .values(status=RunStatus.QUEUED))
            return int(res.rowcount)  # type: ignore[attr-defined]

    def progress(self, run_id: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                TrainingRun.status == RunStatus.RUNNING).values(**values))

    def finish(self, run_id: str, status: RunStatus, error: str | None = None, **values: Any) -> None:
        assert status in TERMINAL_RUN_STATUSES
        with self.sessions.begin() as s:
            s.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
                status=status, error=error, completed_at=utcnow(), **values))
            self._settle(s, run_id, status)

    def add_lora(self, user_id: int, lora_id: str, name: str, key: str, sha256: str, rank: int | None,
                 alpha: float | None, run_id: str | None) -> None:
        with self.sessions.begin() as s:
            s.add(UserLora(id=lora_id, user_id=user_id, name=name, storage_key=key, sha256=sha256, rank=rank,
                           alpha=alpha, run_id=run_id))

    def loras(self, user_id: int) -> list[UserLora]:
        with self.sessions() as s:
            rows = list(s.scalars(select(UserLora).where(UserLora.user_id == user_id)
                                  .order_by(UserLora.created_at.desc())))
            for r in rows:
                s.expunge(r)
            return rows

    def lora_of_run(self, run_id: str) -> UserLora | None:
        with self.sessions() as s:
            row = s.scalar(select(UserLora).where(UserLora.run_id == run_id))
            if row is not None:
                s.expunge(row)
            return row


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
