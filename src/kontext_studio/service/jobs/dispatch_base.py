"""How a waiting job reaches a worker: the one thing that differs between one machine and many.

The job's lifecycle is the same everywhere (``JobStore``: submit with a credit hold, claim with a lease and
an attempt number, fenced progress and completion). A dispatcher only tells *some* worker that a job is
waiting. It may deliver a job twice or lose a notice (a broker restart): the claim makes a duplicate a
no-op, and the reaper (``jobs.reaper``) sends the notice again for a job left waiting or whose worker died.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Dispatcher(Protocol):
    """Sends "job ``job_id`` is waiting" to the workers.

    Call it after the transaction that created (or re-queued) the job has committed, never inside it: a
    worker must find the job when the notice arrives.
    """

    def enqueue(self, job_id: str) -> None:
        """Notify the workers that ``job_id`` is waiting (at-least-once; duplicates are harmless)."""
        ...


@runtime_checkable
class CountingDispatcher(Dispatcher, Protocol):
    """A dispatcher that can also say how many notices wait in its queue (the reaper uses it to tell a long
    queue from lost messages)."""

    def queued(self) -> int:
        """Notices sent but not yet taken by a worker."""
        ...
