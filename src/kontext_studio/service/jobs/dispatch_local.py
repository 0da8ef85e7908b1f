"""Dispatch on one machine: the in-process worker polls the database, so a notice only wakes it early."""

from __future__ import annotations

from kontext_studio.service.jobs.worker import InProcessWorker


class LocalDispatcher:
    """Wakes the in-process worker, which claims the oldest waiting job (``JobStore.claim``).

    Args:
        worker: the server's in-process worker.
    """

    def __init__(self, worker: InProcessWorker):
        self.worker = worker

    def enqueue(self, job_id: str) -> None:
        self.worker.wake()
