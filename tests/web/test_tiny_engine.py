"""The studio in real Chromium against the real service running the tiny diffusers model (the real pipeline
with random weights, so pictures are noise but every step is the product's own): a first visit with a sample
photo to a result, 4 variations and picking one, switching model with the same settings, a series, a share
link opened signed out and then revoked, and a keyboard-only pass through the main flow. After every flow the
credits shown equal the API's balance and the ledger's sum."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import TinyStudio, accessible, credits_agree, no_overflow, opened, wait_until

RESULT_TIMEOUT = 90_000  # the tiny model runs on CPU, shared with the browser and the other tests


@pytest.fixture()
def maker(browser: Any, tiny_studio: TinyStudio) -> Iterator[Any]:
    """A desktop browser signed in as the tiny studio's user (through the sign-in page, with the API key)."""
    with opened(browser, tiny_studio.url, tiny_studio.key, accept_downloads=True) as page:
        yield page


def wait_done(page: Any) -> None:
    expect(page.get_by_test_id("result")).to_be_visible(timeout=RESULT_TIMEOUT)
    expect(page.get_by_test_id("job-status")).to_contain_text("Done")


def test_sample_photo_to_result_variations_and_model_switch(maker: Any, tiny_studio: TinyStudio,
                                                            shot: Callable[[Any, str], Path]) -> None:
    page = maker
    start = credits_agree(page, tiny_studio)

    # First visit: samples and example instructions; one click each, then Generate.
    expect(page.get_by_test_id("empty")).to_be_visible()
    page.get_by_role("button", name="Use the sample photo: astronaut").click()
    expect(page.get_by_test_id("canvas-image")).to_be_visible()
    expect(page.get_by_test_id("ref")).to_have_count(1)
    page.get_by_test_id("examples").get_by_role("button").first.click()  # an example instruction, one click
    expect(page.locator("#prompt")).to_have_value(re.compile("watercolour"))
    page.locator("label.model", has_text="Kontext Fast").click()
    page.get_by_test_id("generate").click()
    wait_done(page)
    expect(page.get_by_test_id("compare")).to_be_visible()
    expect(page.locator("#result-meta")).to_contain_text("flux-kontext-fast")
    shot(page, "tiny-01-first-result")
    after_first = credits_agree(page, tiny_studio)
    assert after_first == start - 4

    # Four variations of the same settings: a grid, each charged; pick the third to continue.
    page.get_by_test_id("variations-button").click()
    tiles = page.get_by_test_id("variation")
    expect(tiles).to_have_count(4, timeout=RESULT_TIMEOUT)
    for i in range(4):
        expect(tiles.nth(i)).to_have_attribute("data-status", "succeeded", timeout=RESULT_TIMEOUT)
    seeds = {tiles.nth(i).inner_text() for i in range(4)}
    assert len(seeds) == 4  # four different seeds
    wait_until(page, "Array.from(document.querySelectorAll('#variations img')).every(i => i.naturalWidth > 0)")
    shot(page, "tiny-02-variations")
    assert credits_agree(page, tiny_studio) == after_first - 4 * 4
    newest = tiny_studio.api("GET", "/v1/predictions?limit=1")["results"][0]  # one prediction, num_outputs 4
    assert newest["input"]["num_outputs"] == 4 and len(newest["output"]) == 4 and newest["cost"] == 16
    third = tiles.nth(2).inner_text()
    tiles.nth(2).get_by_role("button").click()
    expect(page.get_by_test_id("compare")).to_be_visible()
    expect(page.locator("#result-meta")).to_contain_text(third.split("seed ")[1])
    expect(page.get_by_test_id("back-to-grid")).to_be_visible()

    # Try another model with the same settings: the dev model re-renders this recipe.
    page.get_by_test_id("try-model").select_option("dev")
    page.get_by_test_id("try-model-go").click()
    expect(page.locator("#result-meta")).to_contain_text("flux-kontext-dev", timeout=RESULT_TIMEOUT)
    wait_done(page)
    expect(page.locator('input[name="tier"][value="dev"]')).to_be_checked()
    assert credits_agree(page, tiny_studio) == after_first - 16 - 5

    # Download in another format: converted in the browser.
    page.get_by_test_id("download-format").select_option("webp")
    with page.expect_download() as got:
        page.get_by_test_id("download").click()
    path = got.value.path()
    assert path is not None and Path(path).read_bytes()[8:12] == b"WEBP"
    assert got.value.suggested_filename.endswith(".webp")


def test_series_share_signed_out_and_revoke(maker: Any, browser: Any, tiny_studio: TinyStudio, axe_source: str,
                                            shot: Callable[[Any, str], Path]) -> None:
    page = maker
    before = credits_agree(page, tiny_studio)
    page.get_by_role("link", name="Series", exact=True).click()
    page.set_input_files("#file-input", str(Path(__file__).parents[2] / "src" / "kontext_studio" / "web" / "static"
                                            / "samples" / "cat.jpg"))
    expect(page.get_by_test_id("ref")).to_have_count(1)
    page.fill("#scenes", "# two looks\nas a pencil sketch\nin neon light")
    page.select_option("#series-tier", "fast")
    expect(page.get_by_test_id("series-submit")).to_have_text("Render 2 scenes · 8 credits")
    page.get_by_test_id("series-submit").click()
    scenes = page.get_by_test_id("scene")
    expect(scenes).to_have_count(2)
    for i in range(2):
        expect(scenes.nth(i)).to_have_attribute("data-status", "succeeded", timeout=RESULT_TIMEOUT)
    expect(page.get_by_test_id("contact-sheet")).to_be_visible()
    shot(page, "tiny-03-series")
    assert credits_agree(page, tiny_studio) == before - 8

    # Share the neon scene from the library: the public page shows the picture, and the prompt only once ticked.
    page.get_by_role("link", name="Library", exact=True).click()
    item = page.get_by_test_id("library-item").filter(has_text="in neon light")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("series")
    item.get_by_test_id("share").click()
    item.get_by_test_id("share-create").click()
    url = item.get_by_test_id("share-url")
    expect(url).to_have_value(re.compile(r"/s/[\w-]{40,}$"))
    link = url.input_value()
    item.get_by_test_id("favourite").click()
    expect(item.get_by_test_id("favourite")).to_have_attribute("aria-pressed", "true")
    shot(page, "tiny-04-library-share")

    outsider = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)  # CSP: for axe
    public = outsider.new_page()
    try:
        public.goto(link)
        expect(public.get_by_test_id("shared-image")).to_be_visible()
        wait_until(public, "document.querySelector('[data-testid=shared-image]').naturalWidth > 0")
        expect(public.locator("body")).not_to_contain_text("in neon light")
        expect(public.locator("body")).not_to_contain_text("maker@example.com")
        expect(public.locator("#credits-available")).to_have_count(0)  # nobody is signed in there
        item.get_by_label("the instruction").check()
        item.get_by_test_id("share-create").click()
        expect(item.get_by_test_id("share-status")).to_contain_text("what you ticked")
        expect(url).to_have_value(link)  # the same link, now showing the instruction
        public.reload()
        expect(public.get_by_test_id("shared-prompt")).to_have_text("“in neon light”")
        no_overflow(public)
        accessible(public, axe_source)
        shot(public, "tiny-05-shared-signed-out")

        item.get_by_test_id("share-revoke").click()
        expect(url).to_be_hidden()
        public.reload()
        expect(public.get_by_test_id("not-found")).to_contain_text("switched off")
        expect(public.get_by_test_id("shared-image")).to_have_count(0)
    finally:
        outsider.close()

    # Favourites filter; credits still agree.
    page.get_by_label("Favourites only").check()
    expect(page.get_by_test_id("library-item")).to_have_count(1)
    credits_agree(page, tiny_studio)


def test_keyboard_only_main_flow(maker: Any, tiny_studio: TinyStudio) -> None:
    page = maker

    def tab_to(selector: str, limit: int = 80) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
                assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
                return
        raise AssertionError(f"Tab never reached {selector}")

    page.goto(tiny_studio.url + "/")
    before = credits_agree(page, tiny_studio)
    tab_to('[data-sample*="cat"]')
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("canvas-image")).to_be_visible()
    tab_to("[data-example]")
    page.keyboard.press("Enter")  # the example instruction goes into the box, and focus with it
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.press("Control+Enter")
    wait_done(page)
    tab_to("#compare-range")
    page.keyboard.press("Home")
    assert page.input_value("#compare-range") == "0"
    tab_to("#use-input")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("session")).to_be_visible()
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("make the background plain white, keep the subject")
    tab_to("#submit")
    page.keyboard.press("Enter")
    wait_done(page)
    expect(page.get_by_test_id("turn")).to_have_count(2)
    assert credits_agree(page, tiny_studio) == before - 2 * 5


def test_tool_result_goes_into_the_canvas_and_is_edited(maker: Any, tiny_studio: TinyStudio,
                                                        shot: Callable[[Any, str], Path]) -> None:
    import httpx

    if httpx.get(tiny_studio.url + "/v1/tools").status_code == 404:
        pytest.skip("this server has no tools API")
    page = maker
    before = credits_agree(page, tiny_studio)
    page.get_by_role("button", name="Use the sample photo: coffee").click()
    expect(page.get_by_test_id("canvas-image")).to_be_visible()
    tools = page.get_by_test_id("tools")
    expect(tools).to_be_visible()
    expect(tools.locator('[data-tool="denoise"]')).to_contain_text("free")
    tools.locator('[data-tool="denoise"]').click()
    expect(page.get_by_test_id("tool-status")).to_contain_text("done (free)", timeout=RESULT_TIMEOUT)
    expect(page.get_by_test_id("canvas-image")).to_have_attribute("alt", re.compile("result, shown large"))
    tool_output = page.get_by_test_id("canvas-image").get_attribute("src")
    assert credits_agree(page, tiny_studio) == before  # free tools cost nothing
    shot(page, "tiny-06-tool-result")

    page.fill("#prompt", "make it look like a pencil drawing, keep the cup")
    page.get_by_test_id("generate").click()
    wait_done(page)
    assert page.get_attribute("#before", "src") == tool_output  # the tool's result was the edit's input
    assert credits_agree(page, tiny_studio) == before - 5
