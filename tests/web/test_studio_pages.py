"""The studio's error paths, series, account and layout in real Chromium: wrong file type, over-size
upload, insufficient credits (signed in with an API key), series grid with contact sheet, API keys shown
once and revoked, the missing-weights banner, and a phone-width layout."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.web.conftest import Studio, picture


def test_upload_errors_are_shown_in_words(page: Any, studio: Studio, tmp_path: Path,
                                          shot: Callable[[Any, str], Path]) -> None:
    page.goto(studio.url + "/")
    fake_png = tmp_path / "notes.png"
    fake_png.write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    page.set_input_files("#file-input", str(fake_png))
    error = page.get_by_test_id("upload-error")
    expect(error).to_contain_text("notes.png")
    expect(error).to_contain_text(re.compile("PNG, JPEG|not a supported|image", re.I))
    assert "{" not in error.inner_text()
    expect(page.get_by_test_id("ref")).to_have_count(0)

    huge = tmp_path / "huge.png"
    huge.write_bytes(picture(tmp_path / "small.png", (10, 10, 10)).read_bytes() + b"\0" * (21 * 2**20))
    page.set_input_files("#file-input", str(huge))
    expect(error).to_contain_text("huge.png")
    expect(error).to_contain_text(re.compile("too large", re.I))
    expect(page.get_by_test_id("ref")).to_have_count(0)

    # Drag and drop: a real drop event carrying a PNG adds it like the file picker does.
    data = list(picture(tmp_path / "dropped.png", (40, 140, 80), size=(320, 240)).read_bytes())
    page.evaluate("""bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
        document.querySelector("main").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    }""", data)
    expect(page.get_by_test_id("ref")).to_have_count(1)
    expect(page.get_by_role("img", name="Reference 1: dropped.png", exact=True)).to_be_visible()
    expect(page.get_by_test_id("canvas-image")).to_have_attribute("alt", "Reference 1: dropped.png, shown large")
    page.get_by_role("button", name="Remove reference 1").click()
    expect(page.get_by_test_id("ref")).to_have_count(0)

    # With no photo, Kontext [dev] (it generates) turns the canvas into the aspect frame and Generate stays on;
    # Ctrl+Enter with an empty instruction says what is missing.
    expect(page.get_by_test_id("aspect-frame")).to_be_visible()
    expect(page.get_by_test_id("generate")).to_have_attribute("aria-disabled", "false")
    page.keyboard.press("Control+Enter")
    expect(page.get_by_test_id("form-error")).to_contain_text("Type what should change")
    shot(page, "08-upload-errors")

    # Keyboard: the model cards are a radio group (focus ring drawn on the card), arrows pick a model and the
    # button's price follows.
    page.focus('[data-testid="add-photo"]')
    for _ in range(40):  # past the tools, to the model cards
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "tier":
            break
    assert page.evaluate("document.activeElement.name + '=' + document.activeElement.value") == "tier=dev"
    assert page.evaluate("getComputedStyle(document.activeElement.closest('label')).outlineStyle") == "solid"
    page.keyboard.press("ArrowLeft")
    expect(page.locator('input[name="tier"][value="fast"]')).to_be_checked()
    expect(page.locator("#price")).to_have_text("4 credits")


def test_insufficient_credits_is_refused_before_anything_runs(page: Any, studio: Studio, tmp_path: Path,
                                                              shot: Callable[[Any, str], Path]) -> None:
    user, key = studio.new_user(credits=3)
    page.goto(studio.url + "/sign-in")  # a fresh browser: no cookie yet, so the form is shown
    page.fill("#api_key", key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".email")).to_have_text(user.email)
    expect(page.locator("#credits-available")).to_have_text("3")
    page.set_input_files("#file-input", str(picture(tmp_path / "p.png", (90, 160, 90))))
    expect(page.get_by_test_id("ref")).to_have_count(1)
    page.fill("#prompt", "make it snowy, keep everything else the same")
    # A LoRA that is not one of the user's: the API names the field and the fix, shown under the form.
    page.locator("details.advanced summary").click()
    expect(page.locator("#lora-list")).to_have_text("You have no trained LoRAs yet.")
    page.fill("#loras", "golden-hour:0.8")
    page.get_by_test_id("generate").click()
    error = page.get_by_test_id("form-error")
    expect(error).to_contain_text("is not a LoRA id; list yours with GET /v1/loras")
    page.fill("#loras", "")
    page.get_by_test_id("generate").click()
    expect(error).to_have_text("Insufficient credits: 5 required, 3 available")
    expect(page.get_by_test_id("job")).to_be_hidden()
    expect(page.locator("#credits-available")).to_have_text("3")
    shot(page, "09-insufficient-credits")


def test_series_grid_and_contact_sheet(page: Any, studio: Studio, tmp_path: Path,
                                       shot: Callable[[Any, str], Path]) -> None:
    page.goto(studio.url + "/series")
    page.set_input_files("#file-input", str(picture(tmp_path / "hero.png", (180, 60, 60))))
    expect(page.get_by_test_id("ref")).to_have_count(1)
    expect(page.get_by_test_id("contact-sheet")).to_be_hidden()  # no sheet before there are scenes
    page.fill("#scenes", "# holiday set\non a beach at sunset\n\nin a snowy forest\n# not a scene\nas an oil painting")
    page.select_option("#series-aspect", "1:1")
    page.select_option("#series-tier", "fast")
    page.fill("#series-seed", "5")
    expect(page.get_by_test_id("series-submit")).to_have_text("Render 3 scenes · 12 credits")
    page.get_by_test_id("series-submit").click()
    scenes = page.get_by_test_id("scene")
    expect(scenes).to_have_count(3)
    for i in range(3):
        expect(scenes.nth(i)).to_have_attribute("data-status", "succeeded", timeout=30_000)
        expect(scenes.nth(i)).to_contain_text("seed 5")
    assert [scenes.nth(i).locator(".caption").inner_text() for i in range(3)] == [
        "1. on a beach at sunset", "2. in a snowy forest", "3. as an oil painting"]  # comments are not scenes
    # Each scene downloads on its own, square as asked.
    with page.expect_download() as one:
        scenes.nth(1).get_by_test_id("scene-download").click()
    scene_path = one.value.path()
    assert scene_path is not None
    from PIL import Image
    with Image.open(scene_path) as im:
        assert im.width == im.height
    sheet = page.get_by_test_id("contact-sheet")
    expect(sheet).to_be_visible()
    with page.expect_download() as download:
        sheet.click()
    path = download.value.path()
    assert path is not None and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot(page, "10-series")


def test_api_key_is_shown_once_and_revoked(page: Any, studio: Studio, shot: Callable[[Any, str], Path]) -> None:
    page.goto(studio.url + "/account")
    page.fill("#key-name", "script on my laptop")
    page.get_by_test_id("create-key").click()
    shown = page.locator("#new-key-value")
    expect(shown).to_have_text(re.compile(r"^ks_"))
    key = shown.inner_text()
    assert httpx.get(studio.url + "/v1/account", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    expect(page.get_by_text("No API keys yet")).to_have_count(0)
    shot(page, "11-account-new-key")
    row = page.locator("tr", has_text="script on my laptop")
    page.once("dialog", lambda d: d.dismiss())  # asked first: dismissing keeps the key
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".state")).to_have_text("active")
    assert httpx.get(studio.url + "/v1/account", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".state")).to_have_text("revoked")
    assert httpx.get(studio.url + "/v1/account", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    page.reload()
    expect(page.locator("body")).not_to_contain_text(key)  # never shown again


@pytest.fixture()
def missing_weights(studio: Studio) -> Iterator[None]:
    studio.app.state.weights_status = lambda: "the Kontext [dev] weights are not in the Hugging Face cache."
    yield
    studio.app.state.weights_status = None


def test_missing_weights_banner_and_phone_layout(browser: Any, studio: Studio, missing_weights: None, tmp_path: Path,
                                                 shot: Callable[[Any, str], Path]) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        page.goto(studio.url + "/")
        banner = page.get_by_test_id("weights-banner")
        expect(banner).to_contain_text("weights are not on this server")
        # Everything that needs no weights still works: uploads, the checker, the coach.
        page.set_input_files("#file-input", str(picture(tmp_path / "p.png", (60, 90, 200))))
        expect(page.get_by_test_id("findings")).to_contain_text(re.compile(r"\w"), timeout=30_000)
        page.fill("#prompt", "A beautiful blonde woman with blue eyes on a beach")
        expect(page.get_by_test_id("coach-hints")).to_be_visible()
        # Nothing sticks out sideways at phone width.
        wide = page.evaluate("Array.from(document.querySelectorAll('body *')).filter(e => "
                             "e.getBoundingClientRect().right > 391).map(e => e.tagName + '.' + e.className + "
                             "'#' + e.id + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 8)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide
        shot(page, "12-phone-banner")
        page.goto(studio.url + "/history")
        # Keyboard: Tab reaches the skip link first, with a visible focus ring, then the navigation.
        page.keyboard.press("Tab")
        focused = page.evaluate("[document.activeElement.textContent, "
                                "getComputedStyle(document.activeElement).outlineStyle]")
        assert focused == ["Skip to content", "solid"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "13-phone-history")
    finally:
        context.close()


def test_admin_enters_the_bfl_key_in_settings(page: Any, studio: Studio, shot: Callable[[Any, str], Path]) -> None:
    page.goto(studio.url + "/")
    pro = page.locator('[data-model="pro"]')
    expect(pro.locator('input[name="tier"]')).to_be_disabled()
    expect(pro.get_by_test_id("model-unavailable")).to_contain_text("under Settings")
    page.get_by_role("link", name="Settings", exact=True).click()
    expect(page.get_by_test_id("bfl-state")).to_have_text("No key is stored here.")
    page.get_by_label("BFL API key").fill("bfl-browser-key-123")
    page.get_by_test_id("bfl-save").click()
    expect(page.get_by_test_id("bfl-state")).to_contain_text("A key is stored")
    expect(page.get_by_label(re.compile("key", re.I)).first).to_have_value("")
    shot(page, "15-settings")
    page.reload()
    expect(page.locator("body")).not_to_contain_text("bfl-browser-key-123")  # never shown back
    page.goto(studio.url + "/")
    expect(pro.locator('input[name="tier"]')).to_be_enabled()
    expect(pro.get_by_test_id("model-unavailable")).to_have_count(0)
    # Kontext [pro] only edits: with no photo it says so, the frame goes and Generate is off.
    pro.click()
    expect(page.get_by_test_id("t2i-note")).to_contain_text("Kontext [pro] edits a photo")
    expect(page.get_by_test_id("aspect-frame")).to_be_hidden()
    expect(page.get_by_test_id("generate")).to_have_attribute("aria-disabled", "true")
    page.keyboard.press("Control+Enter")
    expect(page.get_by_test_id("form-error")).to_contain_text("Add a photo first")

    # Removing it (after a confirmation) makes the hosted models unavailable again.
    page.goto(studio.url + "/settings")
    page.once("dialog", lambda d: d.accept())
    page.get_by_test_id("bfl-remove").click()
    expect(page.get_by_test_id("bfl-state")).to_have_text("No key is stored here.")
    page.goto(studio.url + "/")
    expect(pro.locator('input[name="tier"]')).to_be_disabled()

    # Someone who is not an administrator finds no settings page.
    _user, key = studio.new_user(credits=0)
    other = page.context.browser.new_context()
    try:
        p2 = other.new_page()
        p2.goto(studio.url + "/sign-in")
        p2.fill("#api_key", key)
        p2.get_by_role("button", name="Sign in").click()
        expect(p2.get_by_role("link", name="Settings")).to_have_count(0)
        assert p2.goto(studio.url + "/settings").status == 404
    finally:
        other.close()
