"""The interface the job store and worker use to announce prediction events to webhooks.

``Notifier.notify`` only *records* an event (cheap, no network I/O): delivery happens later, on the
sender thread, so a slow or dead receiver never holds up a job.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["RETRIED_EVENTS", "Notifier", "NullNotifier"]

# Events whose delivery is retried with backoff; every other event (start, output, logs) gets one
# best-effort attempt, as Replicate does.
RETRIED_EVENTS: frozenset[str] = frozenset({"completed"})


@runtime_checkable
class Notifier(Protocol):
    """Something that turns prediction events into webhook deliveries."""

    def notify(self, job_id: str, event: str, payload: dict[str, Any]) -> None:
        """Record that ``event`` happened to job ``job_id``.

        Args:
            job_id: the prediction id.
            event: one of ``start``, ``output``, ``logs``, ``completed``.
            payload: the prediction envelope (Replicate's shape) to send as the JSON body.

        Raises:
            ValueError: ``event`` is not a webhook event.
            TypeError: ``payload`` cannot be encoded as JSON.
        """
        ...


class NullNotifier:
    """A notifier that drops every event (servers without webhooks, tests of other parts)."""

    def notify(self, job_id: str, event: str, payload: dict[str, Any]) -> None:
        """Ignore the event.

        Args:
            job_id: the prediction id (unused).
            event: the event name (unused).
            payload: the envelope (unused).
        """
        return None
