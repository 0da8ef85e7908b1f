"""The BFL backend through an injected httpx transport, with BFL's answers scripted request by request:
what only a transport can show (which host got which request and header, answers a socket fake does not
script) while no socket is ever opened."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kontext_studio.core.backends.bfl_api import BflApiBackend, BflConfig, BflSampleExpired
from kontext_studio.core.engine import Editor
from kontext_studio.core.types import EditRequest, Reference
from tests.conftest import noise_image

BASE = "https://api.bfl.ai"
POLL = "https://api.eu1.bfl.ai/v1/get_result?id=t1"  # BFL answers with a regional polling host
SAMPLE = "https://delivery-eu1.bfl.ai/results/t1/sample.png?se=signed"  # and a signed delivery URL
KEY = "transport-key"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or connect fails the test: every answer must come from the transport."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the BFL backend opened a network connection despite the injected transport")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    noise_image(*size).save(buf, format="PNG")
    return buf.getvalue()


class Script:
    """BFL's answers in order, one per request, and every request kept for the checks."""

    def __init__(self, *answers: httpx.Response | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer

    def seen(self) -> list[tuple[str, str, bool]]:
        """(method, URL without query, whether the key was sent) of every request."""
        return [(r.method, str(r.url.copy_with(query=None)), "x-key" in r.headers) for r in self.requests]


def submitted(polling_url: str = POLL) -> httpx.Response:
    return httpx.Response(200, json={"id": "t1", "polling_url": polling_url, "cost": 4.0})


def status(name: str, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"id": "t1", "status": name, **extra})


READY = status("Ready", result={"sample": SAMPLE, "seed": 3})


def run(script: Script, sleeps: list[float] | None = None, **kw: Any) -> Any:
    backend = BflApiBackend(BflConfig(api_key=KEY, base_url=BASE, poll_initial=0.5), sleep=(
        sleeps if sleeps is not None else []).append, transport=httpx.MockTransport(script))
    return Editor({"bfl_api": backend}).edit(
        EditRequest([Reference(noise_image(200, 150))], "make it snowy", tier="pro", seed=3), **kw)


def test_submit_poll_download_with_the_key_only_where_it_belongs() -> None:
    script = Script(submitted(), status("Pending", progress=0.5), READY,
                    httpx.Response(200, content=png(), headers={"content-type": "image/png"}))
    progress: list[tuple[int, int]] = []
    result = run(script, on_progress=lambda phase, d, t: progress.append((d, t)) if phase == "denoise" else None)
    assert script.seen() == [
        ("POST", f"{BASE}/v1/flux-kontext-pro", True),
        ("GET", "https://api.eu1.bfl.ai/v1/get_result", True),  # a sibling of api.bfl.ai: the key may go
        ("GET", "https://api.eu1.bfl.ai/v1/get_result", True),
        ("GET", SAMPLE.split("?")[0], False),  # the signed link carries its own signature
    ]
    assert progress == [(50, 100), (100, 100)]
    assert result.image.size == (200, 150) and result.recipe["hosted"]["returned_size"] == [64, 48]
    assert result.recipe["hosted"]["task_id"] == "t1" and result.recipe["hosted"]["cost"] == 4.0


def test_a_polling_url_on_a_foreign_host_never_gets_the_key() -> None:
    script = Script(submitted("https://collector.example/v1/get_result?id=t1"), READY,
                    httpx.Response(200, content=png()))
    run(script)
    assert [sent for _, _, sent in script.seen()] == [True, False, False]


def test_a_retry_after_given_as_a_date_falls_back_to_the_backoff() -> None:
    sleeps: list[float] = []
    script = Script(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}), submitted(),
                    READY, httpx.Response(200, content=png()))
    run(script, sleeps)
    assert sleeps == [0.5] and [m for m, _, _ in script.seen()].count("POST") == 2


def test_a_server_error_on_the_download_is_retried_and_a_gone_link_is_expired() -> None:
    sleeps: list[float] = []
    script = Script(submitted(), READY, httpx.Response(502), httpx.Response(200, content=png()))
    assert run(script, sleeps).image.size == (200, 150) and sleeps == [0.5]
    gone = Script(submitted(), READY, httpx.Response(410, text="Gone"))
    with pytest.raises(BflSampleExpired, match="link has expired"):
        run(gone)
    assert [m for m, _, _ in gone.seen()].count("POST") == 1


def test_an_answer_that_is_not_an_image_is_a_clear_failure() -> None:
    from kontext_studio.core.backends.bfl_api import BflTaskFailed

    with pytest.raises(BflTaskFailed, match="is not an image"):
        run(Script(submitted(), READY, httpx.Response(200, text="<html>maintenance</html>")))


def test_without_a_transport_the_backend_goes_to_the_network() -> None:
    backend = BflApiBackend(BflConfig(api_key=KEY, base_url=BASE, max_submit_retries=0))
    with pytest.raises(AssertionError, match="opened a network connection"):
        Editor({"bfl_api": backend}).edit(EditRequest([Reference(noise_image(64, 64))], "x", tier="pro"))
