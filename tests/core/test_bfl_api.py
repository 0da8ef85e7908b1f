"""The BFL API backend against the fake BFL server: the protocol, every failure a user can meet, and the
rule that no retry ever sends (and pays for) a request twice."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kontext_studio.core.backends.bfl_api import (
    BflApiBackend,
    BflConfig,
    BflOutOfCredits,
    BflRateLimited,
    BflSampleExpired,
    BflSubmissionUnknown,
    BflTaskFailed,
    BflTimeout,
    BflUnauthorized,
    BflUnavailable,
    ContentModerated,
    MemoryTaskLog,
    RequestModerated,
    bfl_aspect_ratio,
    key_may_go_to,
    role_clause,
)
from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import Canceled, InvalidRequest
from kontext_studio.core.types import EditRequest, Reference
from kontext_studio.testing.fake_bfl import FakeBflServer, Scenario
from tests.conftest import noise_image

KEY = "fake-bfl-key"


class Sleeps:
    """Records the backend's waits and sleeps a token amount, so retry timing is asserted, not endured."""

    def __init__(self, real: float = 0.0) -> None:
        self.waits: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        import time

        self.waits.append(seconds)
        if self.real:
            time.sleep(min(self.real, seconds))


def backend(fake: FakeBflServer, sleeps: Sleeps | None = None, **config: Any) -> BflApiBackend:
    key = config.pop("api_key", KEY)
    cfg = {"poll_initial": 0.01, "poll_max": 0.05, **config}
    return BflApiBackend(BflConfig(api_key=key, base_url=fake.url, **cfg), sleep=sleeps or Sleeps())


@pytest.fixture()
def fake() -> Iterator[FakeBflServer]:
    with FakeBflServer(KEY) as server:
        yield server


def scripted(**scenario: Any) -> FakeBflServer:
    return FakeBflServer(KEY, Scenario(**scenario))


def sent_image(body: dict[str, Any], field: str = "input_image") -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body[field])))


def request(tier: str = "pro", n: int = 1, **kw: Any) -> EditRequest:
    refs = [Reference(noise_image(1000 - 100 * i, 700, seed=i)) for i in range(n)]
    return EditRequest(refs, "put her on a beach at sunset", tier=tier, seed=kw.pop("seed", 11), **kw)


def test_pending_then_ready_gives_the_exact_input_size_and_records_the_task(fake: FakeBflServer) -> None:
    result = Editor({"bfl_api": backend(fake)}).edit(request(output_format="jpeg", safety_tolerance=4))
    assert result.image.size == (1000, 700)  # BFL answered at its own size; the geometry lock restored ours
    assert len(fake.submissions) == 1 and len(fake.polls) >= 2
    body = fake.submissions[0]
    assert body["prompt"] == "put her on a beach at sunset" and body["seed"] == 11
    assert body["aspect_ratio"] == "10:7" and body["output_format"] == "jpeg" and body["safety_tolerance"] == 4
    assert body["prompt_upsampling"] is False and "input_image_2" not in body
    hosted = result.recipe["hosted"]
    assert hosted["task_id"] == "fake-task-1" and hosted["cost"] == 4.0 and hosted["endpoint"] == "flux-kontext-pro"
    assert hosted["returned_size"] != [1000, 700] and hosted["resumed"] is False
    assert result.recipe["tier"] == "pro" and result.recipe["steps"] is None and result.recipe["seed"] == 11
    assert result.recipe["model"]["backend"] == "bfl_api" and result.recipe["safety_tolerance"] == 4


def test_the_reference_goes_up_upright_without_its_metadata(fake: FakeBflServer, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the upright picture is 300 wide, 400 tall
    exif[0x010F] = "SecretCam"
    exif[0x8825] = {2: (48.0, 51.0, 24.0)}  # GPS
    path = tmp_path / "phone.jpg"
    noise_image(400, 300).save(path, exif=exif)
    result = Editor({"bfl_api": backend(fake)}).edit(EditRequest([Reference(path)], "make it snowy", tier="pro"))
    raw = base64.b64decode(fake.submissions[0]["input_image"])
    assert b"SecretCam" not in raw and b"GPS" not in raw
    sent = sent_image(fake.submissions[0])
    assert sent.size == (300, 400) and not sent.getexif()
    assert fake.submissions[0]["aspect_ratio"] == "3:4" and result.image.size == (300, 400)


def test_a_huge_reference_is_sent_within_the_limit(fake: FakeBflServer) -> None:
    Editor({"bfl_api": backend(fake)}).edit(EditRequest([Reference(noise_image(2400, 1600))], "x", tier="pro"))
    w, h = sent_image(fake.submissions[0]).size
    assert w * h <= 2_000_000 and abs(w / h - 1.5) < 0.01


@pytest.mark.parametrize(("status", "error", "code"), [
    ("Request Moderated", RequestModerated, "request_moderated"),
    ("Content Moderated", ContentModerated, "content_moderated"),
    ("Error", BflTaskFailed, "bfl_task_failed"),
])
def test_final_failures_are_reported_as_such_and_never_resent(status: str, error: type[Exception],
                                                              code: str) -> None:
    with scripted(final_status=status) as fake, pytest.raises(error) as caught:
        Editor({"bfl_api": backend(fake)}).edit(request())
    assert caught.value.code == code  # type: ignore[attr-defined]
    if "Moderated" in status:
        assert "moderation" in str(caught.value) and "credits were released" in str(caught.value)
    assert len(fake.submissions) == 1


def test_429_on_submit_honours_retry_after_then_succeeds_with_one_charge() -> None:
    sleeps = Sleeps()
    with scripted(submit_statuses=[429, 429], retry_after=2.5) as fake:
        result = Editor({"bfl_api": backend(fake, sleeps)}).edit(request())
    assert [code for _, code in fake.submit_attempts] == [429, 429, 200]
    assert sleeps.waits[:2] == [2.5, 2.5]  # BFL's Retry-After, not our own backoff
    assert len(fake.submissions) == 1 and result.recipe["hosted"]["task_id"] == "fake-task-1"


def test_429_retries_are_bounded_and_release_the_reservation() -> None:
    log = MemoryTaskLog()
    with scripted(submit_statuses=[429] * 10, retry_after=1) as fake, pytest.raises(BflRateLimited):
        Editor({"bfl_api": backend(fake, max_submit_retries=2)}).edit(request(), remote_tasks=log)
    assert len(fake.submit_attempts) == 3 and fake.submissions == []
    assert log.entries == {}  # nothing was accepted, so a later try may send it


def test_429_while_polling_waits_and_keeps_the_same_task() -> None:
    sleeps = Sleeps()
    with scripted(poll_faults={1: "429"}, retry_after=3) as fake:
        Editor({"bfl_api": backend(fake, sleeps)}).edit(request())
    assert 3.0 in sleeps.waits and len(fake.submissions) == 1


def test_a_slow_task_is_waited_for_with_growing_pauses() -> None:
    sleeps = Sleeps(real=1.0)
    with scripted(pending_polls=0, pending_seconds=0.6) as fake:
        result = Editor({"bfl_api": backend(fake, sleeps, poll_initial=0.05, poll_max=0.2)}).edit(request())
    assert result.image.size == (1000, 700) and len(fake.submissions) == 1
    assert len(fake.polls) >= 3
    assert sleeps.waits == sorted(sleeps.waits) and max(sleeps.waits) <= 0.2 and sleeps.waits[0] == 0.05


def test_a_task_that_never_finishes_times_out_without_a_second_submission() -> None:
    with scripted(pending_polls=10**6) as fake, pytest.raises(BflTimeout) as caught:
        Editor({"bfl_api": backend(fake, Sleeps(real=0.02), timeout=0.3)}).edit(request())
    assert "not sent again" in str(caught.value) and len(fake.submissions) == 1


def test_an_expired_sample_is_a_clear_error() -> None:
    with scripted(sample_ttl=0.0) as fake, pytest.raises(BflSampleExpired) as caught:
        Editor({"bfl_api": backend(fake, Sleeps(real=0.01))}).edit(request())
    assert "expired" in str(caught.value) and "10 minutes" in str(caught.value)
    assert fake.downloads and fake.downloads[0][1] == 403 and len(fake.submissions) == 1


def test_a_dropped_connection_and_a_503_mid_poll_are_retried_on_the_same_task() -> None:
    with scripted(pending_polls=2, poll_faults={2: "drop", 3: "503"}) as fake:
        result = Editor({"bfl_api": backend(fake)}).edit(request())
    assert result.image.size == (1000, 700) and len(fake.submissions) == 1
    assert {task for task, _ in fake.polls} == {"fake-task-1"}


def test_polling_gives_up_after_bounded_errors() -> None:
    with scripted(pending_polls=50, poll_faults=dict.fromkeys(range(2, 40), "drop")) as fake, \
            pytest.raises(BflUnavailable) as caught:
        Editor({"bfl_api": backend(fake, max_poll_errors=3)}).edit(request())
    assert "not sent again" in str(caught.value) and len(fake.submissions) == 1


def test_an_interrupted_edit_resumes_the_same_task_from_the_log() -> None:
    log = MemoryTaskLog()
    with scripted(pending_polls=3) as fake:
        editor = Editor({"bfl_api": backend(fake)})
        polls = {"n": 0}

        def stop_after_first_poll() -> bool:  # the worker dies while the task is pending
            polls["n"] += 1
            return polls["n"] > 1

        with pytest.raises(Canceled):
            editor.edit(request(), cancel=stop_after_first_poll, remote_tasks=log)
        assert len(fake.submissions) == 1 and [e["state"] for e in log.entries.values()] == ["sent"]
        result = editor.edit(request(), remote_tasks=log)
    assert len(fake.submissions) == 1  # resumed, not re-sent: charged once
    assert result.recipe["hosted"]["resumed"] is True and result.recipe["hosted"]["task_id"] == "fake-task-1"
    assert any("resumed BFL task fake-task-1" in w for w in result.warnings)


def test_a_lost_submission_answer_is_never_resent() -> None:
    log = MemoryTaskLog()
    with scripted(lose_submit_answer=True) as fake:
        editor = Editor({"bfl_api": backend(fake)})
        with pytest.raises(BflSubmissionUnknown) as caught:
            editor.edit(request(), remote_tasks=log)
        assert "not sent again" in str(caught.value)
        with pytest.raises(BflSubmissionUnknown):  # a retry of the job finds the reservation
            editor.edit(request(), remote_tasks=log)
    assert len(fake.submit_attempts) == 1 and len(fake.submissions) == 1


def test_a_5xx_to_the_submission_is_not_resent() -> None:
    with scripted(submit_statuses=[502]) as fake, pytest.raises(BflSubmissionUnknown) as caught:
        Editor({"bfl_api": backend(fake)}).edit(request())
    assert "502" in str(caught.value) and len(fake.submit_attempts) == 1


def test_an_unreachable_server_is_retried_then_reported(fake: FakeBflServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes
    sleeps = Sleeps()
    b = BflApiBackend(BflConfig(api_key=KEY, base_url=closed, max_submit_retries=2, poll_initial=0.01), sleep=sleeps)
    log = MemoryTaskLog()
    with pytest.raises(BflUnavailable) as caught:
        Editor({"bfl_api": b}).edit(request(), remote_tasks=log)
    assert "nothing was sent" in str(caught.value) and len(sleeps.waits) == 2 and log.entries == {}


def test_bad_key_and_no_credits() -> None:
    with scripted() as fake:
        with pytest.raises(BflUnauthorized) as caught:
            Editor({"bfl_api": backend(fake, api_key="wrong")}).edit(request())
        assert caught.value.exit_code == 3 and "BFL_API_KEY" in str(caught.value)
    with FakeBflServer(KEY, credits=1.0) as fake, pytest.raises(BflOutOfCredits) as out:
        Editor({"bfl_api": backend(fake)}).edit(request())
    assert "no credits left" in str(out.value) and fake.submissions == []


def test_max_sends_four_references_with_their_roles(fake: FakeBflServer) -> None:
    roles = ["subject", "garment", "background", "style"]
    refs = [Reference(noise_image(600 + 50 * i, 500, seed=i), role) for i, role in enumerate(roles)]
    result = Editor({"bfl_api": backend(fake)}).edit(
        EditRequest(refs, "she wears the suit in front of the house", tier="max", seed=2))
    body = fake.submissions[0]
    assert [sent_image(body, f).size for f in ("input_image", "input_image_2", "input_image_3", "input_image_4")] \
        == [(600, 500), (650, 500), (700, 500), (750, 500)]  # each on its own, not stitched
    assert body["prompt"] == ("Image 1 is the subject; image 2 is the garment; image 3 is the background; image 4 "
                              "is the style reference. she wears the suit in front of the house")
    assert result.image.size == (600, 500) and result.recipe["hosted"]["endpoint"] == "flux-kontext-max"
    assert [r["role"] for r in result.recipe["hosted"]["input_images"]] == roles


def test_pro_with_two_references_is_refused_before_anything_is_sent(fake: FakeBflServer) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Editor({"bfl_api": backend(fake)}).edit(request(n=2))
    assert caught.value.field == "references" and "tier pro takes at most 1" in str(caught.value)
    assert "Kontext [max] (hosted, up to 4) or [dev] take several references" in str(caught.value)
    assert fake.submit_attempts == []


def test_loras_are_refused_on_hosted_tiers(fake: FakeBflServer) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Editor({"bfl_api": backend(fake)}).edit(request(loras=["style.safetensors:0.8"]))
    assert caught.value.field == "loras" and fake.submit_attempts == []


def test_hosted_tiers_refuse_several_guard_candidates(fake: FakeBflServer) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Editor({"bfl_api": backend(fake)}).edit(request(identity_guard=0.7, candidates=4))
    assert caught.value.field == "candidates" and "charged by BFL" in str(caught.value)
    assert fake.submit_attempts == []


def test_safety_tolerance_is_validated_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        request(safety_tolerance=9).validate()
    assert caught.value.field == "safety_tolerance" and "0 (strictest) to 6" in str(caught.value)


def test_the_same_post_processing_as_a_local_tier(fake: FakeBflServer) -> None:
    from kontext_studio.analysis.fidelity import AnalysisFidelity

    fidelity = AnalysisFidelity()
    image = noise_image(640, 480, seed=4)
    hosted = Editor({"bfl_api": backend(fake)}, fidelity=fidelity).edit(
        EditRequest([Reference(image, "subject")], "make it snowy", tier="pro", seed=5))
    local = Editor({"fake": FakeBackend(resolution=256)}, fidelity=fidelity).edit(
        EditRequest([Reference(image, "subject")], "make it snowy", tier="dev", seed=5, steps=2))
    assert hosted.image.size == local.image.size == (640, 480)
    assert set(hosted.recipe) == set(local.recipe)
    assert hosted.identity is not None and set(hosted.identity) == set(local.identity or {})
    assert hosted.pixel_lock is not None and set(hosted.pixel_lock) >= {"mode", "applied", "reason"}
    assert hosted.recipe["references"][0]["sha256"] == local.recipe["references"][0]["sha256"]
    assert np.asarray(hosted.image).shape == (480, 640, 3)


def test_helpers() -> None:
    assert role_clause(["subject"]) == "" and role_clause([None, None]) == ""
    assert role_clause(["subject", None]) == "Image 1 is the subject."
    assert bfl_aspect_ratio("16:9", (10, 10)) == ("16:9", None)
    assert bfl_aspect_ratio("match_input_image", (1920, 1080)) == ("16:9", None)
    ratio, warning = bfl_aspect_ratio("match_input_image", (3000, 1000))
    assert ratio == "7:3" and warning and "21:9" in warning
    assert key_may_go_to("https://api.us1.bfl.ai/v1/get_result?id=1", "https://api.bfl.ai")
    assert not key_may_go_to("https://evil.example/v1/get_result", "https://api.bfl.ai")
    assert not key_may_go_to("http://api.bfl.ai/v1/get_result", "https://api.bfl.ai")
    assert key_may_go_to("http://127.0.0.1:9/v1/get_result", "http://127.0.0.1:9")
    assert not key_may_go_to("http://127.0.0.2:9/x", "http://127.0.0.1:9")
