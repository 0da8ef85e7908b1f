"""Webhook outbox: signed Standard Webhooks deliveries, retries with backoff, event filter, SSRF guard.

Every test runs on SQLite and PostgreSQL (``db_url``). Deliveries go to a real HTTP receiver on 127.0.0.1
that checks each signature with ``verify()``; the client reaches it only because the tests widen the SSRF
guard's address policy to loopback (``policy=`` test hook). Time is a fake clock advanced by the tests, so
backoff never sleeps.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.service.accounts import UserRecord
from kontext_studio.service.db import Job, WebhookDelivery
from kontext_studio.service.security.ssrf import is_public_address, safe_client
from kontext_studio.service.security.webhook_signing import (
    WebhookVerificationError,
    new_secret,
    stable_message_id,
    verify,
)
from kontext_studio.service.webhooks import (
    DEFAULT_BACKOFF,
    STATUS_NO_RESPONSE,
    STATUS_REFUSED,
    Notifier,
    NullNotifier,
    WebhookOutbox,
    WebhookSender,
)
from tests.service.conftest import insert_job, retire_jobs

SECRET = new_secret()
T0 = 1_700_000_000.0


class FakeClock:
    """Unix time that only moves when a test says so."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A local webhook endpoint: verifies signatures, records every request, fails on demand.

    Attributes:
        fail_first: the next this-many requests are answered ``fail_status``.
        fail_status: the status used for those failures.
        delay: seconds to wait before answering (to provoke client timeouts).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.hits: list[Hit] = []
        self.fail_first = 0
        self.fail_status = 500
        self.delay = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verify(SECRET, headers, body, now=receiver.clock())
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver.lock:
                    if not verified:
                        status = 400
                    elif receiver.fail_first > 0:
                        receiver.fail_first -= 1
                        status = receiver.fail_status
                    else:
                        status = 204
                    receiver.hits.append(Hit(headers, body, verified, status))
                    delay = receiver.delay
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out closed the socket: not a test failure

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kontext?token=abc"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def loopback_ok(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Test policy: the public internet plus loopback (our receiver); link-local, private etc. stay refused."""
    return ip.is_loopback or is_public_address(ip)


def loopback_client() -> httpx.Client:
    """The SSRF-guarded client the tests use: http allowed, loopback allowed, everything internal refused."""
    return safe_client(allow_http=True, policy=loopback_ok, timeout=httpx.Timeout(2.0))


def _park_pending(sessions: sessionmaker[Session]) -> None:
    """End every pending delivery: the database is shared by the session's tests, each with its own clock."""
    with sessions.begin() as s:
        s.execute(update(WebhookDelivery).where(WebhookDelivery.next_attempt_at.is_not(None))
                  .values(next_attempt_at=None))


@pytest.fixture(autouse=True)
def isolated(sessions: sessionmaker[Session]) -> Iterator[None]:
    _park_pending(sessions)
    yield
    _park_pending(sessions)


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def receiver(clock: FakeClock) -> Iterator[Receiver]:
    r = Receiver(clock)
    yield r
    r.close()


@pytest.fixture()
def outbox(sessions: sessionmaker[Session], clock: FakeClock) -> WebhookOutbox:
    return WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock)


@pytest.fixture()
def make_job(sessions: sessionmaker[Session], new_user: Callable[..., UserRecord]) -> Iterator[Callable[..., str]]:
    """Queued jobs with a webhook; retired at the end (they hold no credits, so a later test's worker that
    claimed one would fail on it)."""
    user = new_user()
    made: list[str] = []

    def make(webhook: str | None, events: list[str] | None = None) -> str:
        job_id = insert_job(sessions, user.id)
        with sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id).values(webhook=webhook, webhook_events_filter=events))
        made.append(job_id)
        return job_id

    yield make
    retire_jobs(sessions, made)


def envelope(job_id: str, status: str = "succeeded") -> dict[str, Any]:
    return {"id": job_id, "model": "flux-kontext-dev", "status": status, "input": {"prompt": "make it snowy"},
            "output": "https://example.com/out.png" if status == "succeeded" else None, "error": None}


# 1. signed delivery


def test_completed_is_signed_and_delivered_once(outbox: WebhookOutbox, receiver: Receiver, make_job: Any,
                                                clock: FakeClock) -> None:
    job_id = make_job(receiver.url)
    payload = envelope(job_id)
    outbox.notify(job_id, "completed", payload)

    assert outbox.deliver_due() == 1
    assert len(receiver.hits) == 1
    hit = receiver.hits[0]
    assert hit.verified
    assert hit.headers["webhook-id"] == stable_message_id(job_id, "completed")
    assert hit.headers["webhook-timestamp"] == str(int(clock()))
    assert hit.headers["content-type"] == "application/json"
    assert hit.json == payload
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.attempts, state.last_status, state.reason) == ("delivered", 1, 204, None)

    clock.advance(10_000)
    assert outbox.deliver_due() == 0  # delivered means done
    assert len(receiver.hits) == 1


def test_outbox_is_a_notifier(outbox: WebhookOutbox) -> None:
    assert isinstance(outbox, Notifier)
    assert isinstance(NullNotifier(), Notifier)
    NullNotifier().notify("job", "completed", {})  # drops it without error


# 2. retries


def test_completed_retried_with_backoff_keeps_webhook_id(outbox: WebhookOutbox, receiver: Receiver,
                                                         make_job: Any, clock: FakeClock) -> None:
    receiver.fail_first = 3
    job_id = make_job(receiver.url)
    outbox.notify(job_id, "completed", envelope(job_id))

    assert outbox.deliver_due() == 1  # attempt 1: 500
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.attempts, state.last_status, state.reason) == ("pending", 1, 500, "HTTP 500")
    assert state.next_attempt_at is not None
    assert state.next_attempt_at.timestamp() == pytest.approx(T0 + DEFAULT_BACKOFF[0])
    assert outbox.deliver_due() == 0  # not due yet: nothing is sent early

    for delay in DEFAULT_BACKOFF[:3]:  # attempts 2 (500), 3 (500), 4 (204)
        clock.advance(delay - 0.5)
        assert outbox.deliver_due() == 0
        clock.advance(0.5)
        assert outbox.deliver_due() == 1

    assert [h.status for h in receiver.hits] == [500, 500, 500, 204]
    assert all(h.verified for h in receiver.hits)
    assert {h.headers["webhook-id"] for h in receiver.hits} == {stable_message_id(job_id, "completed")}
    assert len({h.headers["webhook-timestamp"] for h in receiver.hits}) == 4  # fresh stamp and signature
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.attempts, state.last_status) == ("delivered", 4, 204)


def test_completed_gives_up_after_max_attempts(sessions: sessionmaker[Session], receiver: Receiver,
                                               make_job: Any, clock: FakeClock) -> None:
    outbox = WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock, max_attempts=3,
                           backoff=(2, 7))
    receiver.fail_first = 100
    receiver.fail_status = 503
    job_id = make_job(receiver.url)
    outbox.notify(job_id, "completed", envelope(job_id))

    assert outbox.deliver_due() == 1
    assert outbox.deliver_due(clock.advance(2)) == 1
    assert outbox.deliver_due(clock.advance(7)) == 1
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.attempts, state.last_status, state.reason) == ("failed", 3, 503, "HTTP 503")
    assert state.next_attempt_at is None
    assert outbox.deliver_due(clock.advance(100_000)) == 0
    assert len(receiver.hits) == 3


def test_410_gone_is_not_retried(outbox: WebhookOutbox, receiver: Receiver, make_job: Any,
                                 clock: FakeClock) -> None:
    receiver.fail_first, receiver.fail_status = 100, 410
    job_id = make_job(receiver.url)
    outbox.notify(job_id, "completed", envelope(job_id))
    assert outbox.deliver_due() == 1
    assert outbox.deliver_due(clock.advance(100_000)) == 0
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.last_status) == ("failed", 410)


def test_connection_error_and_timeout_are_retried(sessions: sessionmaker[Session], receiver: Receiver,
                                                  make_job: Any, clock: FakeClock) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    outbox = WebhookOutbox(sessions, SECRET, clock=clock,
                           client_factory=lambda: safe_client(allow_http=True, policy=loopback_ok,
                                                              timeout=httpx.Timeout(0.3)))
    refused_job = make_job(f"http://127.0.0.1:{closed_port}/hook")
    slow_job = make_job(receiver.url)
    receiver.delay = 1.0
    outbox.notify(refused_job, "completed", envelope(refused_job))
    outbox.notify(slow_job, "completed", envelope(slow_job))

    assert outbox.deliver_due() == 2
    for job_id in (refused_job, slow_job):
        [state] = outbox.deliveries(job_id)
        assert (state.state, state.attempts, state.last_status) == ("pending", 1, STATUS_NO_RESPONSE)
    assert "timed out" in (outbox.deliveries(slow_job)[0].reason or "")

    receiver.delay = 0.0
    assert outbox.deliver_due(clock.advance(DEFAULT_BACKOFF[0])) == 2
    assert outbox.deliveries(slow_job)[0].state == "delivered"
    assert outbox.deliveries(refused_job)[0].state == "pending"
    ids = {h.headers["webhook-id"] for h in receiver.hits}
    assert ids == {stable_message_id(slow_job, "completed")}


# 3. best-effort events and the filter


def test_start_output_and_logs_are_best_effort(outbox: WebhookOutbox, receiver: Receiver, make_job: Any,
                                               clock: FakeClock) -> None:
    receiver.fail_first = 100
    job_id = make_job(receiver.url)
    for event in ("start", "output", "logs"):
        outbox.notify(job_id, event, envelope(job_id, "processing"))

    assert outbox.deliver_due() == 3
    assert outbox.deliver_due(clock.advance(100_000)) == 0
    assert len(receiver.hits) == 3
    states = outbox.deliveries(job_id)
    assert [(s.event, s.state, s.attempts, s.last_status) for s in states] == [
        ("start", "failed", 1, 500), ("output", "failed", 1, 500), ("logs", "failed", 1, 500)]


def test_events_filter_is_honoured(outbox: WebhookOutbox, receiver: Receiver, make_job: Any) -> None:
    job_id = make_job(receiver.url, events=["completed"])
    assert outbox.record(job_id, "start", envelope(job_id, "processing")) is None
    assert outbox.record(job_id, "output", envelope(job_id, "processing")) is None
    assert outbox.record(job_id, "completed", envelope(job_id)) == stable_message_id(job_id, "completed")

    assert outbox.deliver_due() == 1
    assert [h.json["status"] for h in receiver.hits] == ["succeeded"]
    assert [s.event for s in outbox.deliveries(job_id)] == ["completed"]


def test_no_filter_means_every_event(outbox: WebhookOutbox, receiver: Receiver, make_job: Any) -> None:
    job_id = make_job(receiver.url)
    for event in ("start", "output", "logs", "completed"):
        assert outbox.record(job_id, event, envelope(job_id)) == stable_message_id(job_id, event)
    assert outbox.deliver_due() == 4
    assert sorted(h.headers["webhook-id"] for h in receiver.hits) == sorted(
        stable_message_id(job_id, e) for e in ("start", "output", "logs", "completed"))


def test_job_without_webhook_records_nothing(outbox: WebhookOutbox, make_job: Any) -> None:
    job_id = make_job(None)
    assert outbox.record(job_id, "completed", envelope(job_id)) is None
    assert outbox.record("no-such-job", "completed", envelope("no-such-job")) is None
    assert outbox.deliveries(job_id) == []
    assert outbox.deliver_due() == 0


def test_bad_event_or_payload_raises(outbox: WebhookOutbox, receiver: Receiver, make_job: Any) -> None:
    job_id = make_job(receiver.url)
    with pytest.raises(ValueError, match="unknown webhook event"):
        outbox.notify(job_id, "finished", envelope(job_id))
    with pytest.raises(TypeError):
        outbox.notify(job_id, "completed", {"id": job_id, "blob": object()})
    with pytest.raises(TypeError):
        outbox.notify(job_id, "completed", {"id": job_id, "progress": float("nan")})
    assert outbox.deliveries(job_id) == []


def test_malformed_secret_is_refused_at_construction(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookOutbox(sessions, "whsec_not base64!")


# 4. SSRF guard


class CountingTransport(httpx.BaseTransport):
    """Counts the requests that got past the SSRF guard to the real network transport."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                    "http://10.0.0.5/hook", "http://[::ffff:169.254.169.254]/", "file:///etc/passwd"])
def test_unsafe_target_is_refused_without_a_request(sessions: sessionmaker[Session], make_job: Any,
                                                    clock: FakeClock, target: str) -> None:
    counter = CountingTransport()
    outbox = WebhookOutbox(sessions, SECRET, clock=clock,
                           client_factory=lambda: safe_client(allow_http=True, policy=loopback_ok, inner=counter))
    job_id = make_job(target)
    outbox.notify(job_id, "completed", envelope(job_id))

    assert outbox.deliver_due() == 1
    assert counter.calls == 0
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.attempts, state.last_status) == ("failed", 1, STATUS_REFUSED)
    assert state.reason and "refused URL" in state.reason
    assert outbox.deliver_due(clock.advance(100_000)) == 0  # permanent: even ``completed`` is not retried
    assert counter.calls == 0


def test_default_guard_refuses_a_loopback_receiver(sessions: sessionmaker[Session], receiver: Receiver,
                                                   make_job: Any, clock: FakeClock) -> None:
    """With the production address policy the local receiver is unreachable: it sees no request at all."""
    outbox = WebhookOutbox(sessions, SECRET, clock=clock, client_factory=lambda: safe_client(allow_http=True))
    job_id = make_job(receiver.url)
    outbox.notify(job_id, "completed", envelope(job_id))
    assert outbox.deliver_due() == 1
    assert receiver.hits == []
    [state] = outbox.deliveries(job_id)
    assert (state.state, state.last_status) == ("failed", STATUS_REFUSED)
    assert "127.0.0.1" in (state.reason or "")


def test_default_client_requires_https(sessions: sessionmaker[Session], receiver: Receiver, make_job: Any,
                                       clock: FakeClock) -> None:
    outbox = WebhookOutbox(sessions, SECRET, clock=clock)  # production default: safe_client()
    job_id = make_job(receiver.url)
    outbox.notify(job_id, "completed", envelope(job_id))
    assert outbox.deliver_due() == 1
    assert receiver.hits == []
    assert outbox.deliveries(job_id)[0].last_status == STATUS_REFUSED


# 5. duplicates, restarts, concurrency


def test_duplicate_notify_gives_one_delivery(sessions: sessionmaker[Session], outbox: WebhookOutbox,
                                             receiver: Receiver, make_job: Any, clock: FakeClock) -> None:
    job_id = make_job(receiver.url)
    other_process = WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock)
    first = outbox.record(job_id, "completed", envelope(job_id))
    assert outbox.record(job_id, "completed", envelope(job_id)) == first
    assert other_process.record(job_id, "completed", envelope(job_id)) == first
    assert len(outbox.deliveries(job_id)) == 1

    assert outbox.deliver_due() == 1
    assert other_process.deliver_due() == 0
    outbox.notify(job_id, "completed", envelope(job_id))  # after delivery: still nothing new
    assert outbox.deliver_due(clock.advance(100_000)) == 0
    assert len(receiver.hits) == 1


def test_concurrent_notify_gives_one_delivery(sessions: sessionmaker[Session], receiver: Receiver,
                                              make_job: Any, clock: FakeClock) -> None:
    job_id = make_job(receiver.url)
    outboxes = [WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock) for _ in range(4)]
    barrier = threading.Barrier(len(outboxes))
    ids: list[str | None] = []

    def go(o: WebhookOutbox) -> None:
        barrier.wait()
        ids.append(o.record(job_id, "completed", envelope(job_id)))

    threads = [threading.Thread(target=go, args=(o,)) for o in outboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ids == [stable_message_id(job_id, "completed")] * 4
    assert len(outboxes[0].deliveries(job_id)) == 1


def test_pending_duplicate_sends_the_newest_payload(outbox: WebhookOutbox, receiver: Receiver,
                                                    make_job: Any) -> None:
    job_id = make_job(receiver.url)
    outbox.notify(job_id, "output", {"id": job_id, "output": None})
    outbox.notify(job_id, "output", {"id": job_id, "output": "https://example.com/out.png"})
    assert outbox.deliver_due() == 1
    assert [h.json["output"] for h in receiver.hits] == ["https://example.com/out.png"]


def test_payload_is_rebuilt_from_the_job_after_a_restart(sessions: sessionmaker[Session], receiver: Receiver,
                                                         make_job: Any, clock: FakeClock) -> None:
    job_id = make_job(receiver.url)
    before = WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock)
    before.notify(job_id, "completed", envelope(job_id))
    after = WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock)  # empty memory
    assert after.deliver_due() == 1
    [hit] = receiver.hits
    assert hit.verified
    assert hit.headers["webhook-id"] == stable_message_id(job_id, "completed")
    assert hit.json["id"] == job_id
    assert hit.json["status"] == "starting"  # the job row as stored
    assert hit.json["input"] == {"prompt": "make it snowy"}

    job2 = make_job(receiver.url)
    custom = WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock,
                           payload_for=lambda job: {"id": job.id, "custom": True})
    before.notify(job2, "completed", envelope(job2))
    assert custom.deliver_due() == 1
    assert receiver.hits[-1].json == {"id": job2, "custom": True}


def test_concurrent_senders_send_each_attempt_once(sessions: sessionmaker[Session], receiver: Receiver,
                                                   make_job: Any, clock: FakeClock) -> None:
    receiver.delay = 0.2
    job_ids = [make_job(receiver.url) for _ in range(3)]
    senders = [WebhookOutbox(sessions, SECRET, client_factory=loopback_client, clock=clock) for _ in range(3)]
    for job_id in job_ids:
        senders[0].notify(job_id, "completed", envelope(job_id))
    barrier = threading.Barrier(len(senders))
    counts: list[int] = []

    def go(o: WebhookOutbox) -> None:
        barrier.wait()
        counts.append(o.deliver_due())

    threads = [threading.Thread(target=go, args=(o,)) for o in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 3
    assert sorted(h.headers["webhook-id"] for h in receiver.hits) == sorted(
        stable_message_id(j, "completed") for j in job_ids)


# 6. the sender thread


def test_sender_thread_wakes_on_notify(sessions: sessionmaker[Session], make_job: Any) -> None:
    receiver = Receiver(time.time)
    try:
        outbox = WebhookOutbox(sessions, SECRET, client_factory=loopback_client)  # real clock
        sender = WebhookSender(outbox, interval_ms=60_000)  # only a wake-up can make it deliver in time
        sender.start()
        try:
            assert sender.running
            time.sleep(0.05)  # let the first (empty) poll pass
            job_id = make_job(receiver.url)
            outbox.notify(job_id, "completed", envelope(job_id))
            deadline = time.monotonic() + 5
            while not receiver.hits and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(receiver.hits) == 1 and receiver.hits[0].verified
        finally:
            sender.stop()
        assert not sender.running
        with pytest.raises(ValueError):
            WebhookSender(outbox, interval_ms=0)
    finally:
        receiver.close()
