"""Every page at desktop (1440×900) and phone (390×844) width: nothing scrolls sideways, axe-core finds no
serious or critical accessibility violation, and a screenshot of each is written to artifacts/screenshots/.
Also: the API docs work with the network cut off, unknown pages answer an HTML page to browsers (and
problem+json to API clients), and the favicon is served."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.web.conftest import DESKTOP, PHONE, Studio, accessible, no_overflow, picture, wait_until


@pytest.fixture(scope="module")
def finished_prediction(studio: Studio, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One succeeded edit of the local admin (through the API), for the pages that show one."""
    png = picture(tmp_path_factory.mktemp("pages") / "p.png", (200, 90, 60), size=(320, 240)).read_bytes()
    up = httpx.post(studio.url + "/v1/files", content=png, headers={"Content-Type": "image/png"}).json()
    body = {"model": "flux-kontext-fast", "input": {"prompt": "make it blue, keep the shape", "input_image": up["id"]}}
    pred = httpx.post(studio.url + "/v1/predictions", headers={"Prefer": "wait=30"}, timeout=60, json=body).json()
    assert pred["status"] == "succeeded", pred
    return str(pred["id"])


@pytest.fixture(params=["desktop", "phone"])
def sized(request: pytest.FixtureRequest, browser: Any) -> Iterator[tuple[str, Any]]:
    viewport = DESKTOP if request.param == "desktop" else PHONE
    # bypass_csp: axe-core is injected as an inline script, which the pages' CSP (rightly) refuses.
    context = browser.new_context(viewport=viewport, device_scale_factor=1, accept_downloads=True, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield request.param, page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_every_page_fits_and_is_accessible(sized: tuple[str, Any], studio: Studio, finished_prediction: str,
                                           axe_source: str, tmp_path: Path,
                                           shot: Callable[[Any, str], Path]) -> None:
    size, page = sized
    pages = {"studio": "/", "series": "/series", "library": "/library", "account": "/account",
             "prediction": f"/predictions/{finished_prediction}", "settings": "/settings", "not-found": "/no/such/page"}
    for name, path in pages.items():
        page.goto(studio.url + path)
        page.wait_for_load_state("networkidle")
        no_overflow(page)
        accessible(page, axe_source)
        shot(page, f"page-{name}-{size}")
        if name == "prediction":  # a Fast edit says what its profile turned on, in words
            expect(page.get_by_test_id("speed")).to_contain_text("fast profile")
    expect(page.get_by_test_id("not-found")).to_contain_text("does not exist")

    # After an upload the picture fills the canvas and Generate (with its price) is on screen.
    page.goto(studio.url + "/")
    page.set_input_files("#file-input", str(picture(tmp_path / "p.png", (60, 120, 200), size=(1200, 900))))
    expect(page.get_by_test_id("canvas-image")).to_be_visible()
    wait_until(page, "document.querySelector('#canvas-image').naturalWidth > 0")
    expect(page.get_by_test_id("generate")).to_have_text(re.compile(r"Generate\s+\d+ credits"))
    button = page.get_by_test_id("generate").bounding_box()
    view = page.viewport_size
    assert button is not None and view is not None
    assert button["y"] >= 0 and button["y"] + button["height"] <= view["height"], button
    assert button["x"] >= 0 and button["x"] + button["width"] <= view["width"], button
    shown = page.get_by_test_id("canvas-image").bounding_box()
    assert shown is not None and shown["width"] >= min(view["width"] - 40, 600) * 0.8, shown  # large, not a thumbnail
    no_overflow(page)
    if size == "desktop":  # the studio is an app on a desktop: no page scroll, the settings column scrolls
        assert page.evaluate("document.documentElement.scrollHeight <= innerHeight")
    accessible(page, axe_source)
    shot(page, f"page-studio-upload-{size}")

    if size == "phone":  # a run started from the settings below the canvas brings the canvas back into view
        page.fill("#prompt", "make it snowy, keep the circle")
        page.locator("label.model", has_text="Kontext Fast").click()
        page.get_by_test_id("generate").click()
        expect(page.get_by_test_id("compare")).to_be_visible(timeout=30_000)
        wait_until(page, "Math.abs(document.querySelector('#canvas').getBoundingClientRect().top) < 2")
        shot(page, "page-studio-result-phone")

    # The dark theme (the system's setting) is as readable: axe checks its contrast too.
    page.emulate_media(color_scheme="dark")
    accessible(page, axe_source)
    shot(page, f"page-studio-upload-{size}-dark")
    page.goto(studio.url + "/library")
    page.wait_for_load_state("networkidle")
    accessible(page, axe_source)
    shot(page, f"page-library-{size}-dark")


def test_sign_in_page_and_signed_out_pages(browser: Any, studio: Studio, axe_source: str,
                                           shot: Callable[[Any, str], Path]) -> None:
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport, bypass_csp=True)
        page = context.new_page()
        page.goto(studio.url + "/sign-in")
        expect(page.get_by_label("API key")).to_be_visible()
        no_overflow(page)
        accessible(page, axe_source)
        shot(page, f"page-sign-in-{label}")
        context.close()


def test_docs_work_offline_and_unknown_urls(page: Any, studio: Studio) -> None:
    outside: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(studio.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(studio.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Kontext Studio", timeout=30_000)
    expect(page.locator(".opblock-summary-path", has_text="/v1/predictions").first).to_be_visible()
    assert outside == []

    # A browser gets a page; an API client gets problem+json; the favicon is there.
    html = httpx.get(studio.url + "/no/such/page", headers={"Accept": "text/html"})
    assert html.status_code == 404 and "text/html" in html.headers["content-type"] and "Open the studio" in html.text
    api = httpx.get(studio.url + "/v1/no-such-thing", headers={"Accept": "text/html,application/json"})
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/problem+json")
    icon = httpx.get(studio.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
