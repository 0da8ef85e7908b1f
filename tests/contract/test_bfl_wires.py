"""The BFL backend's answers to BFL's failures, the same over both wires: a real socket to the fake BFL
server, and an httpx transport injected into the backend (no server at all). Each failure must reach the
user as the engine's error tree (a code, an exit code, a sentence) and must never be paid for twice."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kontext_studio.core.backends.bfl_api import (
    BflModerated,
    BflOutOfCredits,
    BflRateLimited,
    BflSampleExpired,
    BflTaskFailed,
    BflUnauthorized,
    ContentModerated,
    RequestModerated,
)
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import KontextError, TierNotConfigured
from kontext_studio.core.types import EditRequest, Reference
from kontext_studio.testing.fake_bfl import FakeBflServer, FakeBflUpstream, Scenario
from tests.conftest import noise_image
from tests.contract.conftest import BFL_KEY, bfl_backend

WIRES = ["server", "transport"]


@contextmanager
def upstream(wire: str, **kw: Any) -> Iterator[FakeBflUpstream]:
    if wire == "server":
        with FakeBflServer(BFL_KEY, **kw) as server:
            yield server
    else:
        yield FakeBflUpstream(BFL_KEY, **kw)


def edit(up: FakeBflUpstream, wire: str, sleeps: list[float] | None = None, **config: Any) -> None:
    backend = bfl_backend(up, transport=wire == "transport", sleep=(sleeps if sleeps is not None else []).append,
                          **config)
    result = Editor({"bfl_api": backend}).edit(EditRequest([Reference(noise_image(200, 150))], "make it snowy",
                                                           tier="pro", seed=3))
    assert result.image.size == (200, 150)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(("setup", "error", "base", "code", "words"), [
    ({"api_key": "wrong"}, BflUnauthorized, TierNotConfigured, "bfl_unauthorized", "BFL_API_KEY"),
    ({"credits": 1.0}, BflOutOfCredits, KontextError, "bfl_insufficient_credits", "no credits left"),
    ({"final_status": "Request Moderated"}, RequestModerated, BflModerated, "request_moderated", "moderation"),
    ({"final_status": "Content Moderated"}, ContentModerated, BflModerated, "content_moderated", "moderation"),
    ({"final_status": "Error"}, BflTaskFailed, KontextError, "bfl_task_failed", "reported an error"),
    ({"submit_statuses": [429] * 5}, BflRateLimited, KontextError, "bfl_rate_limited", "rate-limiting"),
], ids=["401", "402", "request-moderated", "content-moderated", "task-error", "429-forever"])
def test_failures_map_to_the_error_tree(wire: str, setup: dict[str, Any], error: type[KontextError],
                                        base: type[KontextError], code: str, words: str) -> None:
    setup = dict(setup)
    config = {"api_key": setup.pop("api_key")} if "api_key" in setup else {}
    server_kw = {"credits": setup.pop("credits")} if "credits" in setup else {}
    with upstream(wire, scenario=Scenario(**setup), **server_kw) as up, pytest.raises(error) as caught:
        edit(up, wire, max_submit_retries=2, **config)
    assert isinstance(caught.value, base) and caught.value.code == code and words in str(caught.value)
    assert caught.value.exit_code in (3, 4)  # configuration (3) or the model's failure (4): never a crash
    assert len(up.submissions) <= 1  # at most one charge, whatever happened


@pytest.mark.parametrize("wire", WIRES)
def test_429_is_retried_after_its_retry_after_and_charged_once(wire: str) -> None:
    sleeps: list[float] = []
    with upstream(wire, scenario=Scenario(submit_statuses=[429, 429], retry_after=2.5)) as up:
        edit(up, wire, sleeps)
    assert [code for _, code in up.submit_attempts] == [429, 429, 200] and sleeps[:2] == [2.5, 2.5]
    assert len(up.submissions) == 1


@pytest.mark.parametrize("wire", WIRES)
def test_a_5xx_or_a_429_while_polling_is_retried_on_the_same_task(wire: str) -> None:
    sleeps: list[float] = []
    with upstream(wire, scenario=Scenario(pending_polls=2, poll_faults={1: "503", 2: "429", 3: "drop"},
                                          retry_after=4)) as up:
        edit(up, wire, sleeps)
    assert 4.0 in sleeps and len(up.submissions) == 1 and {t for t, _ in up.polls} == {"fake-task-1"}


@pytest.mark.parametrize("wire", WIRES)
def test_a_5xx_to_the_submission_is_never_resent(wire: str) -> None:
    from kontext_studio.core.backends.bfl_api import BflSubmissionUnknown

    with upstream(wire, scenario=Scenario(submit_statuses=[503])) as up, pytest.raises(BflSubmissionUnknown):
        edit(up, wire)
    assert len(up.submit_attempts) == 1


@pytest.mark.parametrize("wire", WIRES)
def test_an_expired_result_link_says_so_and_is_not_resubmitted(wire: str) -> None:
    with upstream(wire, scenario=Scenario(sample_ttl=-1.0)) as up, pytest.raises(BflSampleExpired) as caught:
        edit(up, wire)
    assert "expired" in str(caught.value) and caught.value.code == "bfl_sample_expired"
    assert [code for _, code in up.downloads] == [403] and len(up.submissions) == 1
