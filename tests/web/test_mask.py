"""Painting the pixel-lock mask in real Chromium: the brush paints over the first reference, the mask goes to
the API at the reference's natural size (white = the area to edit), and the result says the mask lock ran."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from playwright.sync_api import expect

from tests.web.conftest import Studio, picture
from tests.web.test_studio_flow import upload, wait_checked, wait_result


def test_paint_a_mask_and_edit_with_it(page: Any, studio: Studio, tmp_path: Path,
                                       shot: Callable[[Any, str], Path]) -> None:
    page.goto(studio.url + "/")
    upload(page, picture(tmp_path / "box.png", (200, 120, 90), size=(640, 480)))
    wait_checked(page, 1)
    page.fill("#prompt", "make the circle blue")
    page.locator("label.tier", has_text="Kontext Fast").click()

    page.locator("details.advanced summary").click()
    editor = page.get_by_test_id("mask-editor")
    expect(editor).to_be_hidden()
    page.select_option("#pixel_lock", "mask")
    expect(editor).to_be_visible()
    status = page.get_by_test_id("mask-status")
    expect(status).to_have_text("Nothing painted yet.")
    # The stage has the picture's shape (reserved from its natural size), drawn smaller than 640 px.
    canvas = page.get_by_test_id("mask-canvas")
    box = canvas.bounding_box()
    assert box is not None and box["width"] < 640
    assert abs(box["height"] - box["width"] * 480 / 640) < 2

    # Nothing painted: the form says what to do instead of sending a lock with no mask.
    page.get_by_test_id("generate").click()
    expect(page.get_by_test_id("form-error")).to_contain_text("Paint the area to change")

    # The brush size is a labelled slider, usable from the keyboard.
    brush = page.get_by_label("Brush size")
    brush.focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#mask-brush-value")).to_have_text("7 %")

    # One horizontal stroke through the middle of the picture (mouse positions are in the viewport).
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=12)
    page.mouse.up()
    expect(status).to_have_text("1 stroke painted; the mask is sent at 640×480.")

    with page.expect_response(lambda r: r.url.endswith("/v1/predictions") and r.request.method == "POST") as resp:
        page.get_by_test_id("generate").click()
    sent = resp.value.request.post_data_json["input"]
    assert "pixel_lock" not in sent  # the mask is the lock
    assert sent["lock_mask"].startswith("data:image/png;base64,")
    painted = Image.open(io.BytesIO(base64.b64decode(sent["lock_mask"].split(",", 1)[1]))).convert("L")
    assert painted.size == (640, 480)  # exported at the reference's natural size, not the display size
    assert painted.getpixel((320, 240)) == 255 and painted.getpixel((240, 240)) == 255  # under the stroke
    assert painted.getpixel((20, 20)) == 0 and painted.getpixel((320, 60)) == 0 and painted.getpixel((600, 240)) == 0
    assert painted.histogram()[255] > 640 * 480 // 50  # a real stroke, not a few stray pixels

    wait_result(page)
    expect(page.get_by_test_id("pixel-lock")).to_contain_text("your painted mask")
    pid = resp.value.json()["id"]
    pred = httpx.get(f"{studio.url}/v1/predictions/{pid}").json()  # loopback, single-user: the same account
    assert pred["input"]["lock_mask"].startswith("uploads/")
    assert pred["result"]["recipe"]["pixel_lock"] == "mask"
    assert pred["result"]["recipe"]["references"][0]["size"] == [640, 480]
    assert pred["result"]["pixel_lock"]["mode"] == "mask"
    page.locator("#mask-editor").scroll_into_view_if_needed()
    shot(page, "14-mask")

    # Clear empties the mask; at phone width the editor fits without sideways scrolling.
    page.get_by_test_id("mask-clear").click()
    expect(status).to_have_text("Nothing painted yet.")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(100)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    phone = canvas.bounding_box()
    assert phone is not None and phone["width"] <= 390 and abs(phone["height"] - phone["width"] * 0.75) < 2
