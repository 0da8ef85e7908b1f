"""The series page and the studio's AI tools offer the whole catalogue, in real Chromium against the real service
on the tiny diffusers models with FLUX.2 [klein] 4B installed: the series' model list is every model that edits,
priced a scene, those this server cannot run disabled; a series and a one-click AI tool run on klein at its
price, sent under its catalogue name. Credits shown = API = ledger throughout."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import TinyStudio, credits_agree, opened

RESULT_TIMEOUT = 90_000  # the tiny models run on CPU, shared with the browser and the other tests
SAMPLES = Path(__file__).parents[2] / "src" / "kontext_studio" / "web" / "static" / "samples"


@pytest.fixture()
def maker(browser: Any, tiny_studio: TinyStudio) -> Iterator[Any]:
    """A desktop browser signed in as the tiny studio's user (through the sign-in page, with the API key)."""
    with opened(browser, tiny_studio.url, tiny_studio.key) as page:
        yield page


def test_series_lists_the_catalogue_and_runs_on_klein(klein: None, maker: Any, tiny_studio: TinyStudio,
                                                      shot: Callable[[Any, str], Path]) -> None:
    page = maker
    before = credits_agree(page, tiny_studio)
    page.get_by_role("link", name="Series", exact=True).click()

    # One option per catalogue model that edits, with its price a scene; what cannot run here is disabled.
    editors = [m for m in tiny_studio.api("GET", "/v1/models")["results"] if "edit" in m["tasks"]]
    options = page.locator("#series-tier option")
    expect(options).to_have_count(len(editors))
    for m in editors:
        option = page.locator(f'#series-tier option[value="{m["tier"]}"]')
        expect(option).to_have_attribute("data-model", m["full_name"])
        expect(option).to_contain_text(f"{m['title']} · {m['credits']} cr a scene")
        if m["configured"]:
            expect(option).to_be_enabled()
            expect(option).not_to_contain_text("not available here")
        else:
            expect(option).to_be_disabled()
            expect(option).to_contain_text("(not available here)")
    expect(page.locator('#series-tier option[value="klein-4b"]')).to_be_enabled()  # installed for this test
    expect(page.locator('#series-tier option[value="qwen-edit"]')).to_be_disabled()

    page.set_input_files("#file-input", str(SAMPLES / "cat.jpg"))
    expect(page.get_by_test_id("ref")).to_have_count(1)
    # Scene texts of its own: the studio (and its library) is shared with the other browser tests.
    page.fill("#scenes", "as a charcoal drawing\nunder a blue sky")
    page.select_option("#series-tier", "klein-4b")
    expect(page.get_by_test_id("series-submit")).to_have_text("Render 2 scenes · 4 credits")
    expect(page.locator('#series-tier option[value="pro"]')).to_have_attribute("data-hosted", "yes")
    page.get_by_test_id("series-draft").check()  # a quick look at every scene: half the steps
    with page.expect_request(lambda r: r.url.endswith("/v1/series") and r.method == "POST") as sent:
        page.get_by_test_id("series-submit").click()
    assert sent.value.post_data_json["model"] == "black-forest-labs/flux-2-klein-4b"
    assert sent.value.post_data_json["input"]["draft"] is True
    scenes = page.get_by_test_id("scene")
    expect(scenes).to_have_count(2)
    for i in range(2):
        expect(scenes.nth(i)).to_have_attribute("data-status", "succeeded", timeout=RESULT_TIMEOUT)
    newest = tiny_studio.api("GET", "/v1/predictions?limit=2")["results"]
    assert {p["model"] for p in newest} == {"flux-2-klein-4b"} and {p["cost"] for p in newest} == {2}
    assert all(p["input"]["draft"] is True for p in newest)
    page.locator("#series-tier").scroll_into_view_if_needed()
    shot(page, "catalogue-01-series-on-klein")
    assert credits_agree(page, tiny_studio) == before - 4


def test_ai_tools_follow_the_chosen_model_onto_klein(klein: None, maker: Any, tiny_studio: TinyStudio,
                                                     shot: Callable[[Any, str], Path]) -> None:
    page = maker
    before = credits_agree(page, tiny_studio)
    page.get_by_role("button", name="Use the sample photo: coffee").click()
    expect(page.get_by_test_id("canvas-image")).to_be_visible()
    colorize = page.get_by_test_id("tools").locator('[data-tool="colorize"]')
    expect(colorize).to_contain_text("5 cr")  # Kontext [dev], the default card
    expect(colorize).to_have_attribute("data-model", "black-forest-labs/flux-kontext-dev")

    # Picking the klein card moves the AI tools onto klein, at its price.
    page.locator("label.model", has_text="FLUX.2 [klein] 4B").click()
    expect(colorize).to_contain_text("2 cr")
    expect(colorize).to_have_attribute("title", re.compile(r"Runs as an edit on FLUX\.2 \[klein\] 4B"))
    page.get_by_test_id("tools").scroll_into_view_if_needed()
    shot(page, "catalogue-02-tools-on-klein")
    with page.expect_request(lambda r: r.url.endswith("/v1/tools/colorize") and r.method == "POST") as sent:
        colorize.click()
    assert sent.value.post_data_json["model"] == "black-forest-labs/flux-2-klein-4b"
    expect(page.get_by_test_id("tool-status")).to_contain_text("running as an edit on FLUX.2 [klein] 4B (2 credits)")
    expect(page.get_by_test_id("result")).to_be_visible(timeout=RESULT_TIMEOUT)
    expect(page.locator("#result-meta")).to_contain_text("flux-2-klein-4b", timeout=RESULT_TIMEOUT)
    expect(page.get_by_test_id("job-status")).to_contain_text("Done", timeout=RESULT_TIMEOUT)
    newest = tiny_studio.api("GET", "/v1/predictions?limit=1")["results"][0]
    assert newest["model"] == "flux-2-klein-4b" and newest["cost"] == 2
    assert newest["input"]["prompt"].startswith("Colorize this black-and-white photograph")
    shot(page, "catalogue-03-tool-result-on-klein")
    assert credits_agree(page, tiny_studio) == before - 2
