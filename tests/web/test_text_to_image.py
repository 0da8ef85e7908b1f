"""Text to image in the studio, in real Chromium against the real service on the tiny diffusers models: the
model cards are the catalogue (every model, the ones this server cannot run greyed with the reason in words), an
empty studio on a model that generates shows the aspect frame, Generate makes a picture from words alone under
the catalogue name, and switching to another card (FLUX.2 [klein] 4B, on its tiny model) renders on that model.
Credits shown = API = ledger throughout; no sideways scrolling at 390 px and no serious axe-core findings."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import DESKTOP, PHONE, TinyStudio, accessible, credits_agree, no_overflow, opened, wait_until

RESULT_TIMEOUT = 90_000  # the tiny model runs on CPU, shared with the browser and the other tests


@pytest.fixture()
def signed_in(browser: Any, tiny_studio: TinyStudio) -> Iterator[Any]:
    """A desktop browser signed in with the API key (bypass_csp: axe-core is injected as an inline script)."""
    with opened(browser, tiny_studio.url, tiny_studio.key, device_scale_factor=1, bypass_csp=True) as page:
        yield page


def generate(page: Any, model: str) -> dict[str, Any]:
    """Click Generate, wait for the result made on ``model`` and return the body posted to /v1/predictions."""
    with page.expect_request(lambda r: r.url.endswith("/v1/predictions") and r.method == "POST") as sent:
        page.get_by_test_id("generate").click()
    body: dict[str, Any] = sent.value.post_data_json
    expect(page.get_by_test_id("result")).to_be_visible(timeout=RESULT_TIMEOUT)
    expect(page.locator("#result-meta")).to_contain_text(model, timeout=RESULT_TIMEOUT)
    expect(page.get_by_test_id("job-status")).to_contain_text("Done", timeout=RESULT_TIMEOUT)
    return body


def test_cards_are_the_catalogue_and_text_to_image_from_an_empty_studio(
        klein: None, signed_in: Any, tiny_studio: TinyStudio, axe_source: str,
        shot: Callable[[Any, str], Path]) -> None:
    page = signed_in
    start = credits_agree(page, tiny_studio)

    # Every catalogue model is a card; what this server cannot run is disabled, the reason in browser words.
    listed = tiny_studio.api("GET", "/v1/models")["results"]
    cards = page.get_by_test_id("model-card")
    expect(cards).to_have_count(len(listed))
    for row in listed:
        card = page.locator(f'[data-model="{row["tier"]}"]')
        expect(card.locator('input[name="tier"]')).to_have_attribute("data-model", row["full_name"])
        expect(card).to_contain_text(f"commercial use: {'yes' if row['commercial_use'] else 'no'}")
        if row["configured"]:
            expect(card.locator('input[name="tier"]')).to_be_enabled()
        else:
            expect(card.locator('input[name="tier"]')).to_be_disabled()
            why = card.get_by_test_id("model-unavailable").inner_text()
            assert why and not re.search(r"--|[A-Z]{3,}_[A-Z]{3,}|kontext ", why), why  # no flags or settings
    klein_card = page.locator('[data-model="klein-4b"]')
    expect(klein_card.locator('input[name="tier"]')).to_be_enabled()  # installed for this test
    expect(klein_card).to_contain_text("FLUX.2 [klein] 4B")
    expect(klein_card).to_contain_text("up to 4 references")
    expect(klein_card).to_contain_text("Apache-2.0")
    expect(page.locator('[data-model="qwen-edit"]')).to_contain_text("edits a photo")

    # An empty studio on Kontext [dev] (it generates): the canvas is a frame of the chosen shape.
    expect(page.locator('input[name="tier"][value="dev"]')).to_be_checked()
    frame = page.get_by_test_id("aspect-frame")
    expect(frame).to_be_visible()
    expect(page.get_by_test_id("t2i-lead")).to_be_visible()
    expect(page.get_by_test_id("generate")).to_have_attribute("aria-disabled", "false")
    page.locator("label.aspect", has_text="16:9").click()
    expect(frame).to_contain_text("16:9")
    box = frame.bounding_box()
    assert box is not None and abs(box["width"] / box["height"] - 16 / 9) < 0.05
    no_overflow(page)
    accessible(page, axe_source)
    shot(page, "t2i-01-empty-frame")
    page.set_viewport_size(PHONE)
    expect(frame).to_be_visible()
    no_overflow(page)
    shot(page, "t2i-02-empty-frame-phone")
    page.set_viewport_size(DESKTOP)

    # Generate from words alone: the catalogue name is sent, no image, a 16:9 picture comes back.
    page.fill("#prompt", "a red lighthouse on a cliff at dusk")
    body = generate(page, "flux-kontext-dev")
    assert body["model"] == "black-forest-labs/flux-kontext-dev"
    assert not any(k.startswith("input_image") for k in body["input"]) and body["input"]["aspect_ratio"] == "16:9"
    meta = page.locator("#result-meta").inner_text()
    assert "flux-kontext-dev" in meta
    w, h = map(int, re.search(r"(\d+)×(\d+)", meta).groups())  # type: ignore[union-attr]
    assert w > h
    wait_until(page, "document.querySelector('#after').naturalWidth > 0")
    expect(page.locator("#before")).to_be_hidden()  # nothing to compare a picture from words with
    newest = tiny_studio.api("GET", "/v1/predictions?limit=1")["results"][0]
    assert newest["status"] == "succeeded" and newest["model"].endswith("flux-kontext-dev")
    assert credits_agree(page, tiny_studio) == start - 5
    accessible(page, axe_source)
    shot(page, "t2i-03-result")

    # Switch to another catalogue card, another family: the same words on FLUX.2 [klein] 4B, at its price.
    page.locator("label.model", has_text="FLUX.2 [klein] 4B").click()
    expect(page.locator("#price")).to_have_text("2 credits")
    body = generate(page, "flux-2-klein-4b")
    assert body["model"] == "black-forest-labs/flux-2-klein-4b"
    assert tiny_studio.api("GET", "/v1/predictions?limit=1")["results"][0]["model"].endswith("flux-2-klein-4b")
    assert credits_agree(page, tiny_studio) == start - 5 - 2
    page.set_viewport_size(PHONE)
    no_overflow(page)
    accessible(page, axe_source)
    shot(page, "t2i-04-model-switch-phone")
