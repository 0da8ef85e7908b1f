"""The hosted tiers (Kontext [pro] and [max]) through BFL's REST API.

BFL's protocol is asynchronous: ``POST /v1/flux-kontext-pro`` (or ``-max``) with the ``x-key`` header
answers ``{id, polling_url, cost}``; the client polls ``polling_url`` until the status is ``Ready`` (the
result's ``sample`` is a signed URL valid for 10 minutes), ``Error``, ``Request Moderated`` or
``Content Moderated``. The same protocol is spoken by Kontext Studio's own BFL-compatible routes, so the
base URL may point at another Kontext Studio server.

Every submission costs money, so the rules here are about never sending one twice:

- A request is only re-sent when it certainly never reached the upstream: a refused connection, or a 429
  (which BFL answers before accepting anything), a bounded number of times, honouring ``Retry-After``.
- Anything ambiguous (an answer lost after the body was sent, a 5xx to the submission) is never re-sent:
  the edit fails with a message saying so.
- With a ``RemoteTaskLog`` (the service passes the job's), the request is reserved before it is sent and
  the task id recorded as soon as it is known, so a worker that restarts resumes polling that task.
- Polling is free: 5xx answers, timeouts and dropped connections while polling are retried with backoff.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from kontext_studio.core.backends.base import (
    CancelFn,
    EditBackend,
    GenerationOutput,
    GenerationPlan,
    ProgressFn,
    RemoteTaskLog,
)
from kontext_studio.core.errors import Canceled, InvalidRequest, KontextError, TierNotConfigured
from kontext_studio.core.resolution import MAX_RATIO, MIN_RATIO, parse_aspect_ratio

logger = logging.getLogger("kontext_studio.bfl_api")

DEFAULT_BASE_URL = "https://api.bfl.ai"
ENDPOINTS = {"pro": "flux-kontext-pro", "max": "flux-kontext-max", "flux2-pro": "flux-2-pro",
             "flux2-flex": "flux-2-flex", "flux2-max": "flux-2-max"}
IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4", "input_image_5", "input_image_6",
                "input_image_7", "input_image_8")
MAX_IMAGES = {"pro": 1, "max": 4, "flux2-pro": 8, "flux2-flex": 8, "flux2-max": 8}
# FLUX.2 takes an exact width and height (multiples of 16, up to 4 MP) instead of an aspect ratio.
EXPLICIT_SIZE = frozenset({"flux2-pro", "flux2-flex", "flux2-max"})
FLUX2_MAX_PIXELS = 4_000_000
FLUX2_MULTIPLE = 16
# BFL accepts images up to 20 MB; its model works at about 1 MP, so more than 2 MP only costs upload time.
MAX_INPUT_PIXELS = 2_000_000
MAX_INPUT_BYTES = 20 * 2**20
SAMPLE_LIFETIME_S = 600  # BFL's signed result URLs expire after 10 minutes
PENDING_STATUSES = frozenset({"Pending", "Queued", "Processing"})
# How a reference's role reads in the prompt clause sent to Max (documented in docs/bfl.md).
ROLE_WORDS = {
    "subject": "the subject",
    "garment": "the garment",
    "style": "the style reference",
    "background": "the background",
    "object": "the object",
}


# -- errors -------------------------------------------------------------------------------------------
class BflError(KontextError):
    """BFL could not produce the edit; the message says what happened and whether BFL charged for it."""

    code = "bfl_error"
    exit_code = 4


class BflUnauthorized(TierNotConfigured):
    """BFL refused the API key (401/403)."""

    code = "bfl_unauthorized"


class BflOutOfCredits(BflError):
    """BFL answered 402: the BFL account has no credits left."""

    code = "bfl_insufficient_credits"


class BflRateLimited(BflError):
    """BFL kept answering 429 after the bounded retries."""

    code = "bfl_rate_limited"


class BflRejected(InvalidRequest):
    """BFL refused the request's fields (4xx other than 401/402/429); nothing was started."""

    code = "bfl_rejected"


class BflModerated(BflError):
    """BFL's moderation stopped the edit; no image exists."""

    code = "moderated"


class RequestModerated(BflModerated):
    """BFL's moderation refused the input (prompt or images) before generating."""

    code = "request_moderated"


class ContentModerated(BflModerated):
    """BFL generated an image but its moderation withheld it."""

    code = "content_moderated"


class BflTaskFailed(BflError):
    """The task ended with BFL's ``Error`` status."""

    code = "bfl_task_failed"


class BflTaskNotFound(BflError):
    """BFL no longer knows the task (tasks are kept for a limited time)."""

    code = "bfl_task_not_found"


class BflSubmissionUnknown(BflError):
    """The request may have been accepted but its answer was lost: it is never sent again."""

    code = "bfl_submission_unknown"


class BflUnavailable(BflError):
    """BFL could not be reached (or kept failing) for longer than the bounded retries allow."""

    code = "bfl_unavailable"


class BflTimeout(BflError):
    """The task was still pending when the wait limit ran out."""

    code = "bfl_timeout"


class BflSampleExpired(BflError):
    """The result's signed URL no longer answers (it lives 10 minutes)."""

    code = "bfl_sample_expired"


# -- configuration and helpers -------------------------------------------------------------------------
@dataclass(frozen=True)
class BflConfig:
    """How to reach BFL (or a BFL-compatible server).

    Attributes:
        api_key: sent as ``x-key`` (``BFL_API_KEY``).
        base_url: BFL's API (default ``https://api.bfl.ai``) or another Kontext Studio server.
        timeout: seconds to wait for a submitted task to finish.
        poll_initial, poll_max: first and longest pause between polls (the pause grows by half each time).
        max_submit_retries: re-sends allowed when the submission certainly never reached the upstream.
        max_poll_errors: consecutive failed polls (5xx, timeouts, dropped connections) before giving up.
        max_retry_after: the longest ``Retry-After`` honoured in one wait.
        request_timeout: seconds for one HTTP exchange.
    """

    api_key: str
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 600.0
    poll_initial: float = 0.5
    poll_max: float = 5.0
    max_submit_retries: int = 3
    max_poll_errors: int = 8
    max_retry_after: float = 60.0
    request_timeout: float = 60.0


def request_key(endpoint: str, payload: dict[str, Any]) -> str:
    """The name of one exact request (endpoint + canonical body): equal requests share a task."""
    blob = json.dumps({"endpoint": endpoint, "body": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def flux2_size(size: tuple[int, int]) -> tuple[int, int]:
    """The width and height sent to FLUX.2: multiples of 16, at most 4 MP, the ratio kept."""
    w, h = size
    scale = min(1.0, (FLUX2_MAX_PIXELS / (w * h)) ** 0.5)
    return (max(FLUX2_MULTIPLE, int(w * scale) // FLUX2_MULTIPLE * FLUX2_MULTIPLE),
            max(FLUX2_MULTIPLE, int(h * scale) // FLUX2_MULTIPLE * FLUX2_MULTIPLE))


def role_clause(roles: list[str | None]) -> str:
    """The sentence that tells Max which image plays which part, e.g. ``Image 1 is the subject; image 2 is
    the garment.`` Empty for one reference or when no role was given."""
    parts = [f"image {i + 1} is {ROLE_WORDS.get(str(r), str(r))}" for i, r in enumerate(roles) if r]
    if len(roles) < 2 or not parts:
        return ""
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def bfl_aspect_ratio(aspect: str, input_size: tuple[int, int]) -> tuple[str, str | None]:
    """BFL's ``aspect_ratio`` for our request: the requested ratio, or the input's own for
    ``match_input_image``; kept within BFL's 21:9 ... 9:21.

    Returns:
        ("W:H", a warning when the ratio had to be approximated or clamped, else None).
    """
    requested = parse_aspect_ratio(aspect)
    ratio = requested if requested is not None else Fraction(*input_size)
    warning = None
    if ratio > MAX_RATIO or ratio < MIN_RATIO:
        clamped = min(max(ratio, MIN_RATIO), MAX_RATIO)
        warning = (f"the input's ratio {input_size[0]}:{input_size[1]} is outside BFL's 21:9 ... 9:21; asked BFL "
                   f"for {clamped.numerator}:{clamped.denominator} (the geometry lock restores your size)")
        ratio = clamped
    simple = ratio.limit_denominator(32)
    return f"{simple.numerator}:{simple.denominator}", warning


def encode_reference(image: Image.Image, index: int) -> tuple[str, tuple[int, int], str | None]:
    """One reference as BFL wants it: base64 JPEG of the upright pixels, no metadata, within the limits.

    Args:
        image: the normalised reference (EXIF orientation already applied).
        index: its position (for the warning).

    Returns:
        (base64 text, the size sent, a warning when it was downscaled).
    """
    rgb = image.convert("RGB")
    w, h = rgb.size
    warning = None
    if w * h > MAX_INPUT_PIXELS:
        scale = math.sqrt(MAX_INPUT_PIXELS / (w * h))
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        warning = (f"reference {index + 1} ({w}x{h}) sent to BFL at {size[0]}x{size[1]} "
                   f"(at most {MAX_INPUT_PIXELS / 1e6:.0f} MP; the model works at about 1 MP)")
    for quality in (95, 90, 80, 70):
        buf = io.BytesIO()
        # A fresh encode of the pixels: no EXIF, GPS, ICC or comments reach BFL.
        rgb.save(buf, format="JPEG", quality=quality, subsampling=0)
        if buf.tell() <= MAX_INPUT_BYTES:
            break
    return base64.b64encode(buf.getvalue()).decode("ascii"), rgb.size, warning


def _retry_after(response: httpx.Response, fallback: float, cap: float) -> float:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = fallback
    return max(0.0, min(cap, seconds))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "title"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)[:300]
    return json.dumps(body)[:300]


def key_may_go_to(url: str, base_url: str) -> bool:
    """Whether the API key may be sent to ``url`` (a polling URL the upstream returned).

    Only to the base URL's host or its sibling hosts (``api.bfl.ai`` → ``api.us1.bfl.ai``), never over
    plain http unless the base URL itself is http.
    """
    target, base = urlsplit(url), urlsplit(base_url)
    if not target.hostname or not base.hostname:
        return False
    if target.scheme != base.scheme and target.scheme != "https":
        return False
    if target.hostname == base.hostname:
        return True
    try:
        ipaddress.ip_address(base.hostname)
        return False  # an address has no siblings
    except ValueError:
        pass
    labels = base.hostname.split(".")
    parent = ".".join(labels[1:]) if len(labels) > 2 else base.hostname
    return target.hostname.endswith("." + parent)


class MemoryTaskLog(RemoteTaskLog):
    """A ``RemoteTaskLog`` held in this process: library callers that retry an edit in the same process
    resume the task instead of paying for it twice. The service keeps its log on the job row instead."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if key in self.entries:
                return dict(self.entries[key])
            self.entries[key] = {"state": "sending", "at": time.time()}
            return None

    def record(self, key: str, task: dict[str, Any]) -> None:
        with self._lock:
            self.entries[key] = {**task, "state": "sent"}

    def release(self, key: str) -> None:
        with self._lock:
            self.entries.pop(key, None)


# -- the backend ----------------------------------------------------------------------------------------
class BflApiBackend(EditBackend):
    """Runs the pro and max tiers on BFL's API (or a BFL-compatible Kontext Studio server).

    Args:
        config: key, base URL, timeouts and retry bounds.
        sleep: how to wait (tests record the waits instead of sleeping).
        clock: monotonic seconds (for the task deadline).
        transport: the httpx transport every request goes through (None: httpx's own network transport);
            tests pass an ``httpx.MockTransport`` to script BFL's answers without a server.
    """

    name = "bfl_api"
    separate_references = True

    def __init__(self, config: BflConfig, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, transport: httpx.BaseTransport | None = None):
        if not config.api_key:
            raise TierNotConfigured("the BFL API needs a key: set BFL_API_KEY (from https://api.bfl.ai)")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._sleep = sleep
        self._clock = clock
        self._transport = transport

    @property
    def resolution(self) -> int:
        return 1024  # the hosted models work at about 1 MP, like [dev]

    def model_info(self) -> dict[str, Any]:
        return {"backend": self.name, "source": self.base_url, "kind": "hosted", "random_weights": False,
                "resolution": self.resolution}

    # -- request ----------------------------------------------------------------------------------------
    def build_request(self, plan: GenerationPlan) -> tuple[str, dict[str, Any], dict[str, Any], list[str]]:
        """What would be sent for ``plan``, without sending it.

        Returns:
            (endpoint, JSON body, facts for the recipe, warnings).

        Raises:
            TierNotConfigured: the plan's tier is not a hosted one.
            InvalidRequest: LoRAs, or more references than the tier takes.
        """
        endpoint = ENDPOINTS.get(plan.tier)
        if endpoint is None:
            raise TierNotConfigured(f"the BFL API runs the pro and max tiers, not {plan.tier!r}")
        if plan.loras:
            raise InvalidRequest("loras: the hosted models (Kontext [pro], [max]) cannot apply LoRAs; pick Kontext "
                                 "[dev] or [fast] for LoRAs", field="loras")
        n, most = len(plan.references), MAX_IMAGES[plan.tier]
        least = 0 if plan.tier in EXPLICIT_SIZE else 1  # FLUX.2 also generates from text alone
        if not least <= n <= most:
            raise InvalidRequest(
                f"references: Kontext [{plan.tier}] on BFL takes {'exactly 1' if most == 1 else f'1 to {most}'} "
                f"reference image(s), got {n}; Kontext [max] takes several references", field="references")
        warnings: list[str] = []
        clause = role_clause(plan.roles) if plan.tier in ("max", *EXPLICIT_SIZE) and n > 1 else ""
        prompt = f"{clause} {plan.instruction}".strip()
        body: dict[str, Any] = {"prompt": prompt}
        sent: list[dict[str, Any]] = []
        for i, ref in enumerate(plan.references):
            data, size, warning = encode_reference(ref.image, i)
            body[IMAGE_FIELDS[i]] = data
            sent.append({"field": IMAGE_FIELDS[i], "size": list(size), "sha256": ref.sha256,
                         "role": plan.roles[i] if i < len(plan.roles) else None})
            if warning:
                warnings.append(warning)
        size_facts: dict[str, Any]
        if plan.tier in EXPLICIT_SIZE:
            width, height = flux2_size(plan.output_size or plan.model_size)
            body["width"], body["height"] = width, height
            size_facts = {"width": width, "height": height}
            if plan.tier == "flux2-flex":
                body["steps"], body["guidance"] = int(plan.steps), float(plan.guidance)
                size_facts.update(steps=body["steps"], guidance=body["guidance"])
        else:
            aspect, warning = bfl_aspect_ratio(plan.aspect_ratio, plan.references[0].image.size)
            if warning:
                warnings.append(warning)
            body["aspect_ratio"] = aspect
            size_facts = {"aspect_ratio": aspect}
        body["seed"] = int(plan.seed)
        # BFL returns png or jpeg; webp is written from the png here.
        body["output_format"] = "jpeg" if plan.output_format == "jpeg" else "png"
        if plan.safety_tolerance is not None:
            body["safety_tolerance"] = int(plan.safety_tolerance)
        body["prompt_upsampling"] = bool(plan.prompt_upsampling)
        facts = {"provider": "bfl", "base_url": self.base_url, "endpoint": endpoint, "prompt": prompt,
                 "role_clause": clause or None, **size_facts, "output_format": body["output_format"],
                 "safety_tolerance": body.get("safety_tolerance", 2),
                 "prompt_upsampling": body["prompt_upsampling"], "input_images": sent}
        return endpoint, body, facts, warnings

    # -- generate ---------------------------------------------------------------------------------------
    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        """Submit the plan to BFL (or resume its task), wait for it, and download the result.

        Args:
            plan: the engine's plan; ``tier``, ``instruction``, ``references``, ``roles``, ``seed``,
                ``aspect_ratio``, ``output_format``, ``safety_tolerance``, ``prompt_upsampling`` and
                ``remote_tasks`` are used.
            on_step: called after every poll with (percent done, 100); BFL's ``progress`` when it sends one.
            cancel: polled before the submission (True then: nothing is sent) and before each poll; True
                stops waiting (BFL has no cancel: the task still runs).

        Returns:
            The image as BFL returned it (BFL picks the size; the engine's geometry lock restores the
            user's), with the task id, BFL's cost and what was sent in ``info["hosted"]``.

        Raises:
            InvalidRequest, TierNotConfigured: before anything is sent.
            BflError (and subclasses): what BFL answered, in words.
            Canceled: ``cancel()`` returned True, or this attempt is no longer current.
        """
        timings: dict[str, float] = {}
        t = time.perf_counter()
        endpoint, body, facts, warnings = self.build_request(plan)
        key = request_key(endpoint, body)
        timings["encode"] = time.perf_counter() - t
        log = plan.remote_tasks
        if cancel is not None and cancel():  # a job canceled while queued must cost nothing upstream
            raise Canceled("canceled before the request was sent to BFL (nothing was charged)")
        with httpx.Client(timeout=httpx.Timeout(self.config.request_timeout, connect=10.0),
                          follow_redirects=False, transport=self._transport) as client:
            t = time.perf_counter()
            entry = log.reserve(key) if log is not None else None
            if entry is None:
                task = self._submit(client, endpoint, body, key, log)
                resumed = False
            elif entry.get("state") == "sent" and entry.get("id"):
                task, resumed = entry, True
                logger.info("resuming BFL task %s instead of sending the request again", entry["id"])
            else:
                raise BflSubmissionUnknown(
                    "an earlier attempt sent this request to BFL but stopped before BFL answered, so BFL may "
                    "have started (and charged for) it; it is not sent again. Submit the edit again to start a "
                    "new one.")
            timings["submit"] = time.perf_counter() - t
            t = time.perf_counter()
            result = self._poll(client, task, on_step, cancel)
            timings["generate"] = time.perf_counter() - t
            t = time.perf_counter()
            image = self._download(client, result, task)
            timings["download"] = time.perf_counter() - t
        if resumed:
            warnings.append(f"resumed BFL task {task['id']} started by an earlier attempt (not sent again)")
        hosted = {**facts, "task_id": task["id"], "cost": task.get("cost"), "input_mp": task.get("input_mp"),
                  "output_mp": task.get("output_mp"), "resumed": resumed, "returned_size": list(image.size),
                  "returned_seed": (result.get("result") or {}).get("seed")}
        return GenerationOutput(image=image, timings=timings, info={"hosted": hosted, "loras": []},
                                warnings=warnings)

    # -- protocol steps ---------------------------------------------------------------------------------
    def _headers(self, url: str) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if key_may_go_to(url, self.base_url):
            headers["x-key"] = self.config.api_key
        return headers

    def _submit(self, client: httpx.Client, endpoint: str, body: dict[str, Any], key: str,
                log: RemoteTaskLog | None) -> dict[str, Any]:
        """POST the request; retried only while it certainly never reached BFL."""
        url = f"{self.base_url}/v1/{endpoint}"
        cfg = self.config
        for attempt in range(cfg.max_submit_retries + 1):
            last = attempt == cfg.max_submit_retries
            try:
                response = client.post(url, json=body, headers={**self._headers(url), "content-type":
                                                                "application/json"})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # refused or unreachable: nothing sent
                if last:
                    self._forget(log, key)
                    raise BflUnavailable(f"could not reach {self.base_url} ({exc.__class__.__name__}) after "
                                         f"{attempt + 1} tries; nothing was sent") from None
                self._sleep(min(cfg.poll_max, cfg.poll_initial * 2**attempt))
                continue
            except httpx.HTTPError as exc:
                # The body went out and the answer was lost: BFL may have accepted it. Never send it twice.
                raise BflSubmissionUnknown(
                    f"the connection to {self.base_url} failed after the request was sent "
                    f"({exc.__class__.__name__}); BFL may have started (and charged for) the edit, so it is not "
                    "sent again") from None
            status = response.status_code
            if status == 429:
                if last:
                    self._forget(log, key)
                    raise BflRateLimited(f"BFL is rate-limiting this key (429 after {attempt + 1} tries); try "
                                         "again in a minute or lower the number of parallel edits")
                self._sleep(_retry_after(response, cfg.poll_initial * 2**attempt, cfg.max_retry_after))
                continue
            if status in (401, 403):
                self._forget(log, key)
                raise BflUnauthorized(f"BFL refused the API key ({status}: {_detail(response)}); check "
                                      "BFL_API_KEY")
            if status == 402:
                self._forget(log, key)
                raise BflOutOfCredits("BFL answered 402: the BFL account behind BFL_API_KEY has no credits left; "
                                      "top it up at https://api.bfl.ai (nothing was charged here)")
            if 400 <= status < 500:
                self._forget(log, key)
                raise BflRejected(f"BFL refused the request ({status}): {_detail(response)}", field="input")
            if status >= 500:
                raise BflSubmissionUnknown(
                    f"BFL answered {status} to the submission ({_detail(response)}); it may still have started "
                    "the edit, so it is not sent again. Try again later.")
            try:
                answer = response.json()
                task = {"id": str(answer["id"]), "polling_url": answer.get("polling_url")
                        or f"{self.base_url}/v1/get_result?id={answer['id']}"}
            except (ValueError, KeyError, TypeError):
                raise BflSubmissionUnknown(f"BFL accepted the request ({status}) but its answer has no task id; "
                                           "it is not sent again") from None
            for extra in ("cost", "input_mp", "output_mp"):
                if isinstance(answer.get(extra), int | float):
                    task[extra] = answer[extra]
            task["endpoint"], task["submitted_at"] = endpoint, time.time()
            if log is not None:
                log.record(key, task)
            return task
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _forget(log: RemoteTaskLog | None, key: str) -> None:
        if log is not None:
            log.release(key)

    def _poll(self, client: httpx.Client, task: dict[str, Any], on_step: ProgressFn | None,
              cancel: CancelFn | None) -> dict[str, Any]:
        """Poll until a final status; transient failures are retried (polling charges nothing)."""
        cfg = self.config
        url = str(task["polling_url"])
        deadline = self._clock() + cfg.timeout
        delay, errors, done = cfg.poll_initial, 0, 0
        while True:
            if cancel is not None and cancel():
                raise Canceled(f"stopped waiting for BFL task {task['id']} (BFL has no cancel: it may still run)")
            if self._clock() > deadline:
                raise BflTimeout(f"BFL task {task['id']} was still pending after {cfg.timeout:.0f} s; it was not "
                                 "sent again (no second charge)")
            try:
                response: httpx.Response | None = client.get(url, headers=self._headers(url))
                problem = None
            except httpx.HTTPError as exc:
                response, problem = None, exc.__class__.__name__
            if response is not None and response.status_code == 429:
                self._sleep(_retry_after(response, delay, cfg.max_retry_after))
                continue
            if response is not None and response.status_code >= 500:
                problem = f"HTTP {response.status_code}"
            if problem is not None:
                errors += 1
                if errors > cfg.max_poll_errors:
                    raise BflUnavailable(f"lost contact with BFL while waiting for task {task['id']} ({problem}, "
                                         f"{errors} times in a row); it was not sent again")
                logger.warning("polling BFL task %s failed (%s); retrying", task["id"], problem)
                self._sleep(delay)
                delay = min(cfg.poll_max, delay * 1.5)
                continue
            assert response is not None
            if response.status_code in (401, 403):
                raise BflUnauthorized(f"BFL refused the API key while polling ({response.status_code}); check "
                                      "BFL_API_KEY")
            try:
                answer = response.json()
                status = str(answer.get("status") or f"HTTP {response.status_code}: {_detail(response)}")
            except (ValueError, AttributeError):
                answer, status = {}, f"HTTP {response.status_code}"
            errors = 0
            if status == "Ready":
                if on_step is not None:
                    on_step(100, 100)
                return dict(answer)
            if status in PENDING_STATUSES:
                done = max(done, _percent(answer.get("progress")))
                if on_step is not None:
                    on_step(done, 100)  # also the job's heartbeat: keeps its lease and notices a cancel
                self._sleep(delay)
                delay = min(cfg.poll_max, delay * 1.5)
                continue
            details = answer.get("details") or answer.get("error") or ""
            suffix = f": {details}" if details else ""
            if status == "Request Moderated":
                raise RequestModerated(f"BFL's moderation refused the request (prompt or input image) for task "
                                       f"{task['id']}{suffix}; no image was made and your credits were released")
            if status == "Content Moderated":
                raise ContentModerated(f"BFL's moderation withheld the generated image of task {task['id']}"
                                       f"{suffix}; your credits were released")
            if status == "Error":
                raise BflTaskFailed(f"BFL reported an error for task {task['id']}{suffix}")
            if status == "Task not found":
                raise BflTaskNotFound(f"BFL no longer knows task {task['id']} (tasks are kept for a limited time); "
                                      "it was not sent again")
            raise BflTaskFailed(f"BFL answered an unexpected status {status!r} for task {task['id']}")

    def _download(self, client: httpx.Client, result: dict[str, Any], task: dict[str, Any]) -> Image.Image:
        """Fetch ``result.sample`` at once (its signed URL expires after 10 minutes)."""
        sample = (result.get("result") or {}).get("sample")
        if not sample:
            raise BflTaskFailed(f"BFL reported task {task['id']} ready but sent no result URL")
        age = time.time() - float(task.get("submitted_at") or time.time())
        for attempt in range(3):
            try:
                # No x-key: the sample URL carries its own signature and may live on a delivery host.
                response = client.get(str(sample), follow_redirects=True)
            except httpx.HTTPError as exc:
                if attempt == 2:
                    raise BflUnavailable(f"could not download the result of BFL task {task['id']} "
                                         f"({exc.__class__.__name__})") from None
                self._sleep(self.config.poll_initial)
                continue
            if response.status_code in (401, 403, 404, 410):
                late = f" (the task was submitted {age / 60:.0f} minutes ago)" if age > SAMPLE_LIFETIME_S else ""
                raise BflSampleExpired(
                    f"the result of BFL task {task['id']} could not be downloaded: its link has expired "
                    f"(BFL keeps results for 10 minutes){late}. BFL did run the edit; submit it again for a new one")
            if response.status_code >= 500 and attempt < 2:
                self._sleep(self.config.poll_initial)
                continue
            if response.status_code != 200:
                raise BflUnavailable(f"downloading the result of BFL task {task['id']} failed "
                                     f"(HTTP {response.status_code})")
            try:
                with Image.open(io.BytesIO(response.content)) as img:
                    return img.convert("RGB")
            except (UnidentifiedImageError, OSError):
                raise BflTaskFailed(f"the result of BFL task {task['id']} is not an image") from None
        raise AssertionError("unreachable")  # pragma: no cover


def _percent(value: Any) -> int:
    """BFL's ``progress`` (a fraction, or a percentage on some servers) as 0-99 while pending."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    fraction = value / 100 if value > 1 else float(value)
    return min(99, int(fraction * 100))
