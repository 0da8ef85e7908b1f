"""Speed and Draft in the studio, in real Chromium against the real service (every model, hosted ones too, on the
fake backend): picking Lossless and Draft sends them with the prediction and the result's recipe says draft with
half the steps; Reuse settings brings them back; on a hosted model both are switched off with the reason in words
and nothing of them is sent; the Advanced panel passes axe-core."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import make_engine, make_session_factory, upgrade
from kontext_studio.service.storage.storage_local import LocalStorage
from tests.web.conftest import _free_port, accessible, opened, picture, serving


@pytest.fixture(scope="module")
def speed_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeBackend]]:
    """The service with the fake backend under its own name, so the hosted models are configured too."""
    home = tmp_path_factory.mktemp("speed-studio")
    url = f"sqlite:///{home / 'kontext.db'}"
    upgrade(url)
    engine = make_engine(url)
    accounts = SqlAccounts(make_session_factory(engine))
    admin = accounts.create_user("admin@localhost", "Local admin", is_admin=True)
    accounts.grant(admin.id, 100)
    backend = FakeBackend(step_seconds=0.01, resolution=256)
    port = _free_port()
    app = create_app(engine, LocalStorage(home / "data"), Editor({"fake": backend}),
                     b"speed-test-secret-0123456789abcdef", local_user_id=admin.id,
                     public_url=f"http://127.0.0.1:{port}", rate_limit=0, max_active_per_user=50)
    with serving(app, port):
        yield f"http://127.0.0.1:{port}", backend
    engine.dispose()


@pytest.fixture()
def studio_page(browser: Any, speed_studio: tuple[str, FakeBackend]) -> Iterator[Any]:
    """A desktop browser signed in as the local admin (bypass_csp: axe-core is injected as an inline script)."""
    with opened(browser, speed_studio[0], device_scale_factor=1, bypass_csp=True) as page:
        yield page


def generate(page: Any) -> dict[str, Any]:
    """Click Generate, wait for the result and return the input posted to /v1/predictions."""
    with page.expect_request(lambda r: r.url.endswith("/v1/predictions") and r.method == "POST") as sent:
        page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("result")).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("job-status")).to_contain_text("Done")
    body: dict[str, Any] = sent.value.post_data_json
    return dict(body["input"])


def test_lossless_draft_from_the_studio(studio_page: Any, speed_studio: tuple[str, FakeBackend], tmp_path: Path,
                                        axe_source: str, shot: Callable[[Any, str], Path]) -> None:
    page = studio_page
    url, backend = speed_studio
    page.set_input_files("#file-input", str(picture(tmp_path / "her.png", (200, 120, 90))))
    expect(page.get_by_test_id("ref")).to_have_count(1)
    page.fill("#prompt", "put her on a beach at sunset")
    page.locator("label.model", has_text="Kontext Fast").click()
    page.locator(".advanced summary").click()

    speed = page.get_by_label("Speed")
    draft = page.get_by_label("Draft (half the steps, softer)")
    expect(speed).to_be_enabled()
    expect(speed).to_have_value("")  # Model default: nothing sent
    assert [o.strip() for o in speed.locator("option").all_inner_texts()] == [
        "Model default", "Stock — exact", "Lossless — same picture, faster on a GPU", "Fast — small trade for speed"]
    page.fill("#steps", "8")
    speed.select_option(label="Lossless — same picture, faster on a GPU")
    draft.check()
    # The closed list is narrower than its longest choice: the note under it says the choice in full.
    expect(page.get_by_test_id("speed-note")).to_contain_text("Lossless: the same picture, faster on a GPU.")
    page.locator("#speed-note").scroll_into_view_if_needed()
    shot(page, "speed-01-lossless-draft")
    accessible(page, axe_source)

    sent = generate(page)
    assert sent["acceleration"] == "lossless" and sent["draft"] is True and sent["num_inference_steps"] == 8
    assert backend.last_plan is not None and backend.last_plan.acceleration == "lossless"
    newest = page.request.get(url + "/v1/predictions?limit=1").json()["results"][0]
    assert newest["input"]["acceleration"] == "lossless" and newest["input"]["draft"] is True
    recipe = newest["result"]["recipe"]
    assert recipe["draft"] is True and recipe["steps"] == 4  # half the 8 asked for
    first = newest["id"]

    # Back to the defaults: neither field is sent.
    speed.select_option("")
    draft.uncheck()
    plain = generate(page)
    assert "acceleration" not in plain and "draft" not in plain

    # A hosted model: both switched off, the note says why in words, nothing of them is sent.
    page.get_by_label("Speed").select_option("fast")
    draft.check()
    page.locator("label.model", has_text="Kontext [pro]").click()
    expect(speed).to_be_disabled()
    expect(draft).to_be_disabled()
    note = page.get_by_test_id("speed-note")
    expect(note).to_contain_text("Kontext [pro] runs on Black Forest Labs' servers")
    expect(note).not_to_contain_text("--")
    page.locator("#speed-note").scroll_into_view_if_needed()
    shot(page, "speed-02-hosted-off")
    accessible(page, axe_source)
    hosted = generate(page)
    assert "acceleration" not in hosted and "draft" not in hosted

    # Reuse settings of the first edit: the Fast card, Lossless and Draft come back.
    page.goto(f"{url}/?reuse={first}")
    expect(page.get_by_test_id("ref")).to_have_count(1)
    expect(page.locator('input[name="tier"][value="fast"]')).to_be_checked()
    expect(page.locator("#acceleration")).to_have_value("lossless")
    expect(page.locator("#draft")).to_be_checked()
    expect(page.locator("#acceleration")).to_be_enabled()
