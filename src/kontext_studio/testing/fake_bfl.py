"""A FAKE BFL API server for tests: BFL's documented protocol on 127.0.0.1, with scriptable failures.

``FakeBflServer`` speaks what BFL documents for Kontext: ``POST /v1/flux-kontext-pro|max`` with ``x-key``
answers ``{id, polling_url, cost, input_mp, output_mp}``; ``GET /v1/get_result?id=`` answers ``Pending``
(with ``progress``) and then ``Ready`` with ``result.sample``, a URL that expires, or ``Error``,
``Request Moderated``, ``Content Moderated``, ``Task not found``. It produces no real edit: the "result" is
the first input image resized to the nearest ~1 MP size of the requested aspect ratio (as hosted Kontext
answers) and tinted by the seed, so a test can tell what was sent and check the geometry lock.

A ``Scenario`` scripts what goes wrong: 429s with ``Retry-After``, 5xx, dropped connections (the socket is
closed without an answer), slow tasks, moderation, expired samples, a lost submission answer. Everything
received is recorded (``submissions``, ``polls``, ``downloads``) so a test can count what was charged.

``FakeBflUpstream`` is the same fake without the socket: its ``transport()`` answers in-process, for a
``BflApiBackend`` given an injected httpx transport.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
from PIL import Image

# Hosted Kontext answers at ~1 MP on these sizes (the same list [dev] was trained on).
BFL_SIZES = ((672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
             (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
             (1456, 720), (1504, 688), (1568, 672))
COSTS = {"flux-kontext-pro": 4.0, "flux-kontext-max": 8.0,
         "flux-2-pro": 3.0, "flux-2-flex": 5.0, "flux-2-max": 7.0}  # BFL credits per image, as BFL reports them


@dataclass
class Scenario:
    """What the fake does to each request (counters are per server, 1-based).

    Attributes:
        submit_statuses: answers to the first submissions, in order (429, 402, 500...); later ones succeed.
        retry_after: the ``Retry-After`` header sent with a scripted 429 (seconds).
        lose_submit_answer: accept the first submission, then close the connection without answering.
        pending_polls: polls answered ``Pending`` before the final status.
        pending_seconds: the task also stays ``Pending`` until this long after its submission (a slow task).
        final_status: ``Ready``, ``Error``, ``Request Moderated``, ``Content Moderated`` or ``Task not found``.
        poll_faults: poll number → ``drop`` (close the socket unanswered), ``503`` or ``429``.
        sample_ttl: seconds the sample URL stays valid after the task is ready (BFL: 600).
        output_scale: scale of the returned image against BFL's ~1 MP size (small values keep tests fast).
    """

    submit_statuses: list[int] = field(default_factory=list)
    retry_after: float = 1.0
    lose_submit_answer: bool = False
    pending_polls: int = 1
    pending_seconds: float = 0.0
    final_status: str = "Ready"
    poll_faults: dict[int, str] = field(default_factory=dict)
    sample_ttl: float = 600.0
    output_scale: float = 0.25


@dataclass
class FakeTask:
    id: str
    endpoint: str
    body: dict[str, Any]
    submitted_at: float
    polls: int = 0
    ready_at: float | None = None


class FakeBflUpstream:
    """The fake BFL API's behaviour and records, without a socket: answer it in-process through
    ``transport()`` (an ``httpx.MockTransport`` to inject into ``BflApiBackend``), or on a real port through
    ``FakeBflServer``. Either way the same protocol, scenario and records.

    Args:
        api_key: the only key accepted (anything else gets 401).
        scenario: what goes wrong (default: nothing; one ``Pending`` poll, then ``Ready``).
        credits: BFL credits on the account; a submission that would overdraw it gets 402.
        url: the base URL the polling and sample URLs are built on (no request ever leaves the process).

    Attributes:
        url: the base URL.
        submissions: bodies of the accepted submissions (what would be charged).
        submit_attempts: every submission received, accepted or not, with its time.
        polls: (task id, time) of every poll received.
        downloads: (task id, HTTP status) of every sample download.
    """

    def __init__(self, api_key: str = "fake-bfl-key", scenario: Scenario | None = None, credits: float = 1000.0,
                 url: str = "https://api.bfl.test"):
        self.api_key = api_key
        self.scenario = scenario or Scenario()
        self.credits = credits
        self.url = url.rstrip("/")
        self.tasks: dict[str, FakeTask] = {}
        self.submissions: list[dict[str, Any]] = []
        self.submit_attempts: list[tuple[float, int]] = []
        self.polls: list[tuple[str, float]] = []
        self.downloads: list[tuple[str, int]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def transport(self) -> httpx.MockTransport:
        """An httpx transport that answers every request in this process, as the fake server would.

        A scripted drop (a lost answer) raises ``httpx.RemoteProtocolError``, as a closed socket does.

        Returns:
            The transport, for ``BflApiBackend(..., transport=...)`` or ``httpx.Client(transport=...)``.
        """
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        key = request.headers.get("x-key")
        if request.method == "POST":
            endpoint = path.removeprefix("/v1/") if path.startswith("/v1/") else path
            answer = self.submit(endpoint, key, request.read())
        elif path == "/v1/get_result":
            answer = self.poll(request.url.params.get("id", ""), key)
        elif path.startswith("/results/"):
            code, kind, data = self.sample(path.split("/")[2])
            return httpx.Response(code, headers={"Content-Type": kind}, content=data)
        else:
            answer = (404, {}, {"detail": "Not Found"})
        status, headers, body = answer
        if status == 0:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(status, headers=headers, json=body)


    # -- behaviour --------------------------------------------------------------------------------------
    def submit(self, endpoint: str, key: str | None, raw: bytes) -> tuple[int, dict[str, str], Any]:
        """Answer one submission: (status, headers, JSON body), or status 0 to drop the connection."""
        with self._lock:
            n = len(self.submit_attempts)
            scripted = self.scenario.submit_statuses[n] if n < len(self.scenario.submit_statuses) else None
            self.submit_attempts.append((time.monotonic(), scripted or 200))
        if key != self.api_key:
            return 401, {}, {"detail": "Invalid API key"}
        if scripted == 429:
            return 429, {"Retry-After": f"{self.scenario.retry_after:g}"}, {"detail": "Too many active tasks"}
        if scripted is not None and scripted != 200:
            return scripted, {}, {"detail": f"scripted {scripted}"}
        if endpoint not in COSTS:
            return 404, {}, {"detail": "Not Found"}
        try:
            body = json.loads(raw)
        except ValueError:
            return 422, {}, {"detail": "body is not JSON"}
        problem = _check_body(body)
        if problem:
            return 422, {}, {"detail": problem}
        cost = COSTS[endpoint]
        with self._lock:
            if self.credits < cost:
                return 402, {}, {"detail": "Insufficient credits"}
            self.credits -= cost
            task = FakeTask(f"fake-task-{next(self._ids)}", endpoint, body, time.monotonic())
            self.tasks[task.id] = task
            self.submissions.append(body)
            lose = self.scenario.lose_submit_answer and len(self.submissions) == 1
        if lose:
            return 0, {}, None
        return 200, {}, {"id": task.id, "polling_url": f"{self.url}/v1/get_result?id={task.id}", "cost": cost,
                         "input_mp": 1.0, "output_mp": 1.0}

    def poll(self, task_id: str, key: str | None) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.polls.append((task_id, time.monotonic()))
            n = len(self.polls)
        fault = self.scenario.poll_faults.get(n)
        if fault == "drop":
            return 0, {}, None
        if fault == "503":
            return 503, {}, {"detail": "Service Unavailable"}
        if fault == "429":
            return 429, {"Retry-After": f"{self.scenario.retry_after:g}"}, {"detail": "Too many requests"}
        if key != self.api_key:
            return 401, {}, {"detail": "Invalid API key"}
        task = self.tasks.get(task_id)
        if task is None or self.scenario.final_status == "Task not found":
            return 404, {}, {"id": task_id, "status": "Task not found"}
        task.polls += 1
        slow = time.monotonic() - task.submitted_at < self.scenario.pending_seconds
        if task.polls <= self.scenario.pending_polls or slow:
            progress = min(0.9, task.polls / (self.scenario.pending_polls + 1))
            return 200, {}, {"id": task_id, "status": "Pending", "result": None, "progress": progress}
        status = self.scenario.final_status
        if status != "Ready":
            details = {"Request Moderated": {"moderation_reasons": ["Derivative Works Filter"]},
                       "Content Moderated": {"moderation_reasons": ["NSFW"]}}.get(status, "scripted failure")
            return 200, {}, {"id": task_id, "status": status, "result": None, "details": details}
        if task.ready_at is None:
            task.ready_at = time.monotonic()
        ext = "jpeg" if task.body.get("output_format") == "jpeg" else "png"
        return 200, {}, {"id": task_id, "status": "Ready", "progress": 1.0,
                         "result": {"sample": f"{self.url}/results/{task.id}/sample.{ext}?se=signed",
                                    "prompt": task.body.get("prompt"), "seed": task.body.get("seed")}}

    def sample(self, task_id: str) -> tuple[int, str, bytes]:
        task = self.tasks.get(task_id)
        if task is None or task.ready_at is None:
            code, kind, data = 404, "application/xml", b"<Error><Code>BlobNotFound</Code></Error>"
        elif time.monotonic() - task.ready_at > self.scenario.sample_ttl:
            code, kind, data = 403, "application/xml", (
                b"<Error><Code>AuthenticationFailed</Code><Message>Signed expiry time has passed</Message></Error>")
        else:
            fmt = "JPEG" if task.body.get("output_format") == "jpeg" else "PNG"
            buf = io.BytesIO()
            render(task.body, self.scenario.output_scale).save(buf, format=fmt)
            code, kind, data = 200, f"image/{fmt.lower()}", buf.getvalue()
        with self._lock:
            self.downloads.append((task_id, code))
        return code, kind, data


class FakeBflServer(FakeBflUpstream):
    """The fake BFL API on a free port of 127.0.0.1. Use as a context manager.

    Args:
        api_key: the only key accepted (anything else gets 401).
        scenario: what goes wrong (default: nothing; one ``Pending`` poll, then ``Ready``).
        credits: BFL credits on the account; a submission that would overdraw it gets 402.

    Attributes:
        url: the base URL (``http://127.0.0.1:PORT``); the records are ``FakeBflUpstream``'s.
    """

    def __init__(self, api_key: str = "fake-bfl-key", scenario: Scenario | None = None, credits: float = 1000.0):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        super().__init__(api_key, scenario, credits, url=f"http://127.0.0.1:{self._httpd.server_address[1]}")
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-bfl", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _check_body(body: Any) -> str | None:
    """BFL's validation of the documented fields (422 with a detail, like BFL)."""
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        return "prompt: field required"
    for name in ("input_image", *(f"input_image_{i}" for i in range(2, 9))):
        value = body.get(name)
        if value is None:
            continue
        try:
            Image.open(io.BytesIO(base64.b64decode(value, validate=True))).verify()
        except (binascii.Error, ValueError, OSError):
            return f"{name}: not a base64 image"
    tolerance = body.get("safety_tolerance", 2)
    if not isinstance(tolerance, int) or not 0 <= tolerance <= 6:
        return "safety_tolerance: must be between 0 and 6"
    if body.get("output_format", "png") not in ("png", "jpeg"):
        return "output_format: must be jpeg or png"
    width, height = body.get("width"), body.get("height")
    if width is not None or height is not None:  # FLUX.2: exact size, multiples of 16, at most 4 MP
        if (not (isinstance(width, int) and isinstance(height, int)) or min(width, height) < 64
                or width % 16 or height % 16):
            return "width, height: multiples of 16, at least 64"
        if width * height > 4_000_000:
            return "width x height: at most 4 megapixels"
    ratio = body.get("aspect_ratio")
    if ratio is not None:
        try:
            w, h = (int(p) for p in str(ratio).split(":"))
            if not 9 / 21 <= w / h <= 21 / 9:
                raise ValueError
        except ValueError:
            return "aspect_ratio: must be between 21:9 and 9:21"
    return None


def render(body: dict[str, Any], scale: float = 1.0) -> Image.Image:
    """The fake's "edit": the first input at BFL's ~1 MP size for the ratio asked for (FLUX.2: the exact width
    and height; grey when there is no input), tinted by the seed."""
    if body.get("input_image"):
        first = Image.open(io.BytesIO(base64.b64decode(body["input_image"]))).convert("RGB")
    else:
        first = Image.new("RGB", (int(body.get("width") or 1024), int(body.get("height") or 1024)), (128, 128, 128))
    if body.get("width") and body.get("height"):
        ratio = body["width"] / body["height"]
    elif body.get("aspect_ratio"):
        w, h = (int(p) for p in str(body["aspect_ratio"]).split(":"))
        ratio = w / h
    else:
        ratio = first.width / first.height
    size = min(BFL_SIZES, key=lambda s: abs(s[0] / s[1] - ratio))
    if body.get("width") and body.get("height"):
        size = (int(body["width"]), int(body["height"]))
    size = (max(16, int(size[0] * scale)), max(16, int(size[1] * scale)))
    pixels = np.asarray(first.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
    tint = np.random.default_rng(int(body.get("seed") or 0) % 2**32).integers(-24, 25, size=3, dtype=np.int16)
    return Image.fromarray(np.clip(pixels + tint, 0, 255).astype(np.uint8), "RGB")


def _handler(server: FakeBflUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read the recorded calls instead

        def _json(self, answer: tuple[int, dict[str, str], Any]) -> None:
            status, headers, body = answer
            if status == 0:  # scripted drop: close without a status line
                self.close_connection = True
                return
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            path = urlsplit(self.path).path
            endpoint = path.removeprefix("/v1/") if path.startswith("/v1/") else path
            self._json(server.submit(endpoint, self.headers.get("x-key"), raw))

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/v1/get_result":
                task_id = (parse_qs(parts.query).get("id") or [""])[0]
                self._json(server.poll(task_id, self.headers.get("x-key")))
                return
            if parts.path.startswith("/results/"):
                task_id = parts.path.split("/")[2]
                code, kind, data = server.sample(task_id)
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._json((404, {}, {"detail": "Not Found"}))

    return Handler
