"""Webhook outbox over SQLAlchemy: events are recorded in ``webhook_deliveries`` and sent later, signed.

How a delivery moves:

1. ``notify(job_id, event, payload)`` looks at the job: no ``webhook`` URL, or an event outside the job's
   ``webhook_events_filter`` (``None`` means every event), and nothing is recorded. Otherwise one row is
   inserted with ``webhook_id = stable_message_id(job_id, event)``; the unique ``webhook_id`` column makes a
   second notify of the same event (from any process) a no-op, so there is at most one delivery per job and
   event, and its ``webhook-id`` header is the same on every retry, even after a restart.
2. ``deliver_due()`` claims rows whose ``next_attempt_at`` has passed (an optimistic update fenced on
   ``attempts``, so two senders never send the same attempt), POSTs the JSON body signed with the Standard
   Webhooks headers through the SSRF-guarded client, and records the outcome.
3. A 2xx marks the row delivered. ``completed`` is retried with backoff on any other outcome (non-2xx,
   timeout, connection error) until ``max_attempts``; ``start``/``output``/``logs`` get one attempt. A URL the
   SSRF guard refuses, and ``410 Gone``, are permanent failures: no (further) request is made.

Row states: *pending* (``next_attempt_at`` set, ``delivered_at`` empty), *delivered* (``delivered_at``
set), *failed* (both empty after at least one attempt). ``last_status`` is the last HTTP status, or one of
the negative/zero codes below when there was no response; the schema has no text column for the reason,
so the reason text is kept in memory (``deliveries()`` reports it, falling back to a description of the
code) and logged.

The schema has no payload column either: the body given to ``notify`` is kept in memory until the delivery
ends; a process that did not see the ``notify`` (a restart, another server) rebuilds it from the job row
with ``payload_for``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import httpx
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.background import PollingLoop
from kontext_studio.service.db.models import WEBHOOK_EVENTS, Job, WebhookDelivery
from kontext_studio.service.security.ssrf import UnsafeURL, safe_client
from kontext_studio.service.security.webhook_signing import headers as signed_headers
from kontext_studio.service.security.webhook_signing import sign, stable_message_id
from kontext_studio.service.webhooks.webhooks_base import RETRIED_EVENTS

__all__ = [
    "DEFAULT_BACKOFF",
    "STATUS_NO_RESPONSE",
    "STATUS_NO_WEBHOOK",
    "STATUS_REFUSED",
    "DeliveryState",
    "WebhookOutbox",
    "WebhookSender",
    "default_envelope",
    "describe_status",
]

logger = logging.getLogger("kontext_studio.webhooks")

DEFAULT_BACKOFF: tuple[float, ...] = (1, 5, 30, 120, 600)  # seconds before retry 1, 2, ...; the last repeats
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_CLAIM_SECONDS = 120.0  # a claimed attempt that never reports back (crash) is retried after this
DEFAULT_BATCH = 100
USER_AGENT = "kontext-studio-webhooks/1"
_MEMORY_LIMIT = 10_000  # payloads / reasons kept in memory; older ones fall back to payload_for / the code

# ``last_status`` codes for attempts that got no HTTP status.
STATUS_NO_RESPONSE = 0  # connection error or timeout (retried for ``completed``)
STATUS_REFUSED = -1  # the SSRF guard refused the URL: no request was made (permanent)
STATUS_NO_WEBHOOK = -2  # the job no longer exists or has no webhook URL (permanent)

ClientFactory = Callable[[], httpx.Client]
PayloadBuilder = Callable[[Job], dict[str, Any]]


def describe_status(last_status: int | None) -> str | None:
    """A human-readable reason for a ``last_status`` value.

    Args:
        last_status: the column value (HTTP status, one of the ``STATUS_*`` codes, or None).

    Returns:
        The description, or None when no attempt has been made.
    """
    if last_status is None:
        return None
    if last_status == STATUS_NO_RESPONSE:
        return "no response (connection error or timeout)"
    if last_status == STATUS_REFUSED:
        return "the SSRF guard refused the webhook URL; no request was made"
    if last_status == STATUS_NO_WEBHOOK:
        return "the job has no webhook URL"
    return f"HTTP {last_status}"


def default_envelope(job: Job) -> dict[str, Any]:
    """A prediction envelope built from the job row alone (no request, so no absolute ``urls``).

    Used when the payload given to ``notify`` is not in this process's memory. The API should pass its own
    builder (with signed output URLs) as ``payload_for`` where it can.

    Args:
        job: the job row (inside an open session).

    Returns:
        Replicate's prediction fields that the row holds; ``output`` is the stored output as is.
    """
    metrics: dict[str, Any] = {}
    if job.started_at and job.completed_at:
        metrics["predict_time"] = (job.completed_at - job.started_at).total_seconds()
    if job.completed_at and job.created_at:
        metrics["total_time"] = (job.completed_at - job.created_at).total_seconds()

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": job.id, "model": job.model, "version": "local", "status": job.status, "input": job.input,
        "output": job.output, "error": job.error, "logs": job.logs or "", "metrics": metrics,
        "progress": job.progress, "cost": job.cost, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "completed_at": iso(job.completed_at),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"webhook payload value of type {type(value).__name__} is not JSON serialisable")


def _encode(payload: dict[str, Any]) -> bytes:
    """The exact body bytes sent (and signed)."""
    try:
        return json.dumps(payload, default=_json_default, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except ValueError as exc:  # NaN / infinity: not JSON
        raise TypeError(f"webhook payload is not valid JSON: {exc}") from None


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _Bounded:
    """A small thread-safe LRU map (payload bodies, failure reasons)."""

    def __init__(self, limit: int = _MEMORY_LIMIT) -> None:
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._limit:
                self._data.popitem(last=False)

    def get(self, key: str) -> Any | None:
        with self._lock:
            return self._data.get(key)

    def pop(self, key: str) -> Any | None:
        with self._lock:
            return self._data.pop(key, None)


@dataclass(frozen=True)
class DeliveryState:
    """One delivery as stored, for status pages, logs and tests.

    Attributes:
        webhook_id: the ``webhook-id`` header value (the same on every attempt).
        job_id: the prediction id.
        event: ``start``, ``output``, ``logs`` or ``completed``.
        state: ``pending``, ``delivered`` or ``failed``.
        attempts: attempts made so far.
        last_status: last HTTP status, or a ``STATUS_*`` code, or None before the first attempt.
        reason: why the last attempt failed (None when delivered or not yet tried).
        next_attempt_at: when the next attempt is due (pending only).
        delivered_at: when a 2xx was received.
    """

    webhook_id: str
    job_id: str
    event: str
    state: str
    attempts: int
    last_status: int | None
    reason: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class _Claimed:
    id: int
    webhook_id: str
    job_id: str
    event: str
    attempt: int  # the attempt number this sender owns (attempts after the claim)
    url: str | None
    body: bytes | None
    final: bool  # no retry may follow this attempt


@dataclass(frozen=True)
class _Outcome:
    status: int
    delivered: bool = False
    permanent: bool = False
    reason: str | None = None


class WebhookOutbox:
    """Records webhook events in the database and delivers them, signed, through the SSRF guard.

    Implements ``Notifier``. Thread-safe: ``notify`` may run on worker and API threads while a
    ``WebhookSender`` calls ``deliver_due`` on its own thread, and several processes may share a database.

    Args:
        sessions: session factory of the service database.
        secret: the ``whsec_...`` signing secret.
        client_factory: returns a new SSRF-guarded ``httpx.Client`` (default ``safe_client()``: public https
            only). Tests pass ``lambda: safe_client(allow_http=True, policy=...)``; never pass an unguarded
            client. One client is used per ``deliver_due`` call and closed after it.
        clock: Unix time source (tests inject a fake one instead of sleeping).
        max_attempts: attempts for ``completed`` before giving up (at least 1).
        backoff: delays in seconds before the 1st, 2nd, ... retry; the last value repeats.
        payload_for: rebuilds the envelope from the job row when the payload given to ``notify`` is not in
            this process's memory (default ``default_envelope``).
        claim_seconds: how long a claimed attempt may take before another sender may retry it; keep it above
            the client's timeout.

    Raises:
        ValueError: the secret is not ``whsec_`` + base64, or ``max_attempts``/``backoff`` are invalid.
    """

    def __init__(self, sessions: sessionmaker[Session], secret: str, client_factory: ClientFactory | None = None,
                 clock: Callable[[], float] = time.time, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 backoff: Sequence[float] = DEFAULT_BACKOFF, payload_for: PayloadBuilder | None = None,
                 claim_seconds: float = DEFAULT_CLAIM_SECONDS) -> None:
        sign(secret, "msg_check", 0, b"")  # fail at startup on a malformed secret, not at the first delivery
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if not backoff or any(delay < 0 for delay in backoff):
            raise ValueError(f"backoff must be a non-empty sequence of non-negative seconds, got {backoff!r}")
        if claim_seconds <= 0:
            raise ValueError(f"claim_seconds must be positive, got {claim_seconds}")
        self._sessions = sessions
        self._secret = secret
        self._client_factory: ClientFactory = client_factory or safe_client
        self._clock = clock
        self.max_attempts = max_attempts
        self.backoff: tuple[float, ...] = tuple(float(delay) for delay in backoff)
        self._payload_for: PayloadBuilder = payload_for or default_envelope
        self._claim_seconds = claim_seconds
        self._bodies = _Bounded()
        self._reasons = _Bounded()
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()

    # -- recording ---------------------------------------------------------------------------------------

    def notify(self, job_id: str, event: str, payload: dict[str, Any]) -> None:
        """Record ``event`` for delivery (see ``record``); wakes subscribed senders.

        Args:
            job_id: the prediction id.
            event: ``start``, ``output``, ``logs`` or ``completed``.
            payload: the prediction envelope, sent as the JSON body.

        Raises:
            ValueError: unknown event.
            TypeError: the payload is not JSON-serialisable.
        """
        self.record(job_id, event, payload)

    def record(self, job_id: str, event: str, payload: dict[str, Any]) -> str | None:
        """Record ``event`` for delivery unless the job does not want it.

        Nothing is recorded when the job does not exist, has no webhook, or its ``webhook_events_filter``
        (None = all events) leaves the event out. A repeated event reuses the existing delivery: while it is
        still pending its body is replaced by this newer payload; once delivered or failed nothing changes.

        Args:
            job_id: the prediction id.
            event: ``start``, ``output``, ``logs`` or ``completed``.
            payload: the prediction envelope, sent as the JSON body.

        Returns:
            The delivery's ``webhook-id``, or None when nothing was recorded.

        Raises:
            ValueError: unknown event.
            TypeError: the payload is not JSON-serialisable.
        """
        if event not in WEBHOOK_EVENTS:
            raise ValueError(f"unknown webhook event {event!r}; expected one of {', '.join(WEBHOOK_EVENTS)}")
        body = _encode(payload)
        msg_id = stable_message_id(job_id, event)
        now = _at(self._clock())
        inserted = False
        try:
            with self._sessions.begin() as s:
                wanted = s.execute(select(Job.webhook, Job.webhook_events_filter).where(Job.id == job_id)).first()
                if wanted is None or not wanted.webhook:
                    return None
                events_filter = wanted.webhook_events_filter
                if events_filter is not None and event not in events_filter:
                    return None
                existing = s.execute(
                    select(WebhookDelivery.delivered_at, WebhookDelivery.next_attempt_at)
                    .where(WebhookDelivery.webhook_id == msg_id)
                ).first()
                if existing is not None:
                    if existing.delivered_at is None and existing.next_attempt_at is not None:
                        self._bodies.put(msg_id, body)  # still pending: send the newest envelope
                    return msg_id
                # Cache before commit: a sender may claim the row the moment it is visible.
                self._bodies.put(msg_id, body)
                inserted = True
                s.add(WebhookDelivery(job_id=job_id, event=event, webhook_id=msg_id, attempts=0,
                                      next_attempt_at=now))
        except IntegrityError:
            # A concurrent notify (another thread or process) inserted the same event first: one delivery.
            return msg_id
        except BaseException:
            if inserted:
                self._bodies.pop(msg_id)
            raise
        self._wake_listeners()
        return msg_id

    # -- delivering --------------------------------------------------------------------------------------

    def deliver_due(self, now: float | None = None, limit: int = DEFAULT_BATCH) -> int:
        """Make one attempt for every delivery that is due.

        Args:
            now: Unix time to act at (default: the clock). Also stamps ``webhook-timestamp``.
            limit: most deliveries handled in this call (oldest due first).

        Returns:
            Attempts made by this call, including attempts the SSRF guard refused before any request.
        """
        t = self._clock() if now is None else now
        when = _at(t)
        with self._sessions() as s:
            due = s.execute(
                select(WebhookDelivery.id, WebhookDelivery.attempts)
                .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.next_attempt_at.is_not(None),
                       WebhookDelivery.next_attempt_at <= when)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(limit)
            ).all()
        if not due:
            return 0
        attempted = 0
        client: httpx.Client | None = None
        try:
            for row in due:
                claimed = self._claim(row.id, row.attempts, t)
                if claimed is None:
                    continue  # another sender took it
                attempted += 1
                if client is None and claimed.url:
                    client = self._client_factory()
                outcome = self._send(client, claimed, t)
                self._finish(claimed, outcome, t)
        finally:
            if client is not None:
                client.close()
        return attempted

    def _claim(self, row_id: int, seen_attempts: int, t: float) -> _Claimed | None:
        """Take the next attempt of one delivery, or None when someone else did (or it is no longer due)."""
        with self._sessions.begin() as s:
            row = s.get(WebhookDelivery, row_id)
            if row is None:
                return None
            attempt = seen_attempts + 1
            final = row.event not in RETRIED_EVENTS or attempt >= self.max_attempts
            # Until the outcome is recorded the row looks scheduled ``claim_seconds`` ahead, so a sender that
            # crashes mid-attempt leaves a retry behind (never for best-effort events or the last attempt).
            lease = None if final else _at(t + self._claim_seconds)
            result = cast(CursorResult[tuple[()]], s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row_id, WebhookDelivery.attempts == seen_attempts,
                       WebhookDelivery.delivered_at.is_(None), WebhookDelivery.next_attempt_at.is_not(None),
                       WebhookDelivery.next_attempt_at <= _at(t))
                .values(attempts=attempt, next_attempt_at=lease)
                .execution_options(synchronize_session=False)
            ))
            if result.rowcount != 1:
                return None
            job = s.get(Job, row.job_id)
            url = job.webhook if job is not None else None
            body = self._bodies.get(row.webhook_id)
            if body is None and job is not None and url:
                body = _encode(self._payload_for(job))
            return _Claimed(id=row_id, webhook_id=row.webhook_id, job_id=row.job_id, event=row.event,
                            attempt=attempt, url=url, body=body, final=final)

    def _send(self, client: httpx.Client | None, claimed: _Claimed, t: float) -> _Outcome:
        """POST one attempt; never raises."""
        if client is None or not claimed.url or claimed.body is None:
            return _Outcome(STATUS_NO_WEBHOOK, permanent=True, reason="the job no longer exists or has no webhook")
        request_headers = signed_headers(self._secret, claimed.webhook_id, claimed.body, now=t)
        request_headers |= {"content-type": "application/json", "user-agent": USER_AGENT}
        try:
            # stream(): the response body is never read, so a huge reply cannot exhaust memory. Redirects are
            # not followed (httpx's default): a 3xx is a failed attempt.
            with client.stream("POST", claimed.url, content=claimed.body, headers=request_headers) as response:
                status = response.status_code
        except UnsafeURL as exc:
            return _Outcome(STATUS_REFUSED, permanent=True, reason=str(exc))
        except httpx.InvalidURL as exc:
            return _Outcome(STATUS_REFUSED, permanent=True, reason=f"invalid webhook URL: {exc}")
        except httpx.TimeoutException as exc:
            return _Outcome(STATUS_NO_RESPONSE, reason=f"timed out ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return _Outcome(STATUS_NO_RESPONSE, reason=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in a transport must not stop the other deliveries
            logger.exception("webhook %s for job %s: unexpected error", claimed.webhook_id, claimed.job_id)
            return _Outcome(STATUS_NO_RESPONSE, reason=f"unexpected {type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return _Outcome(status, delivered=True)
        # 410 Gone: the receiver says the endpoint is gone for good (as Svix treats it).
        return _Outcome(status, permanent=status == 410, reason=f"HTTP {status}")

    def _finish(self, claimed: _Claimed, outcome: _Outcome, t: float) -> None:
        """Record the attempt's outcome, fenced on the attempt number this sender claimed."""
        values: dict[str, Any] = {"last_status": outcome.status}
        if outcome.delivered:
            values |= {"delivered_at": _at(t), "next_attempt_at": None}
        elif outcome.permanent or claimed.final:
            values["next_attempt_at"] = None
        else:
            delay = self.backoff[min(claimed.attempt - 1, len(self.backoff) - 1)]
            values["next_attempt_at"] = _at(t + delay)
        with self._sessions.begin() as s:
            result = cast(CursorResult[tuple[()]], s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == claimed.id, WebhookDelivery.attempts == claimed.attempt,
                       WebhookDelivery.delivered_at.is_(None))
                .values(**values)
                .execution_options(synchronize_session=False)
            ))
        if result.rowcount != 1:
            logger.warning("webhook %s: attempt %d outcome not recorded (the claim was taken over)",
                           claimed.webhook_id, claimed.attempt)
            return
        ended = outcome.delivered or values["next_attempt_at"] is None
        if outcome.delivered:
            self._reasons.pop(claimed.webhook_id)
            logger.info("webhook %s (%s, job %s) delivered on attempt %d: HTTP %d", claimed.webhook_id,
                        claimed.event, claimed.job_id, claimed.attempt, outcome.status)
        else:
            self._reasons.put(claimed.webhook_id, outcome.reason)
            logger.warning("webhook %s (%s, job %s) attempt %d failed: %s%s", claimed.webhook_id, claimed.event,
                           claimed.job_id, claimed.attempt, outcome.reason,
                           "; giving up" if ended else f"; retrying at {values['next_attempt_at'].isoformat()}")
        if ended:
            self._bodies.pop(claimed.webhook_id)

    # -- inspection and wake-ups -------------------------------------------------------------------------

    def deliveries(self, job_id: str) -> list[DeliveryState]:
        """The deliveries recorded for one job, oldest first.

        Args:
            job_id: the prediction id.

        Returns:
            One ``DeliveryState`` per recorded event.
        """
        with self._sessions() as s:
            rows = s.scalars(
                select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
            ).all()
            states = []
            for row in rows:
                if row.delivered_at is not None:
                    state, reason = "delivered", None
                else:
                    state = "pending" if row.next_attempt_at is not None else "failed"
                    reason = self._reasons.get(row.webhook_id) or (
                        describe_status(row.last_status) if row.attempts else None)
                states.append(DeliveryState(
                    webhook_id=row.webhook_id, job_id=row.job_id, event=row.event, state=state,
                    attempts=row.attempts, last_status=row.last_status, reason=reason,
                    next_attempt_at=row.next_attempt_at, delivered_at=row.delivered_at))
            return states

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (cheaply, on the notifying thread) after each newly recorded delivery.

        Args:
            callback: e.g. ``WebhookSender.wake``.
        """
        with self._listeners_lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored.

        Args:
            callback: a callback given to ``add_listener``.
        """
        with self._listeners_lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _wake_listeners(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:  # a broken listener must not fail the job that notified
                logger.exception("webhook listener failed")


class WebhookSender(PollingLoop):
    """A background thread that calls ``outbox.deliver_due()`` every ``interval_ms`` and on each notify.

    Args:
        outbox: the outbox to drain.
        interval_ms: idle wait between polls (retries fall due without a notify, so keep it around a second).
        name: the thread name.

    Raises:
        ValueError: ``interval_ms`` is not positive.
    """

    def __init__(self, outbox: WebhookOutbox, interval_ms: int = 1000, name: str = "kontext-webhooks") -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        super().__init__(name, interval_ms / 1000)
        self.outbox = outbox

    def on_start(self) -> None:
        self.outbox.add_listener(self.wake)

    def on_stop(self) -> None:
        self.outbox.remove_listener(self.wake)

    def tick(self) -> bool:
        """Deliver what is due; True when a full batch went out (more may be due)."""
        return self.outbox.deliver_due() >= DEFAULT_BATCH
