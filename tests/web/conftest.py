"""Browser tests of the web studio: Playwright for Python drives Debian's Chromium (headless) against the
real service, started with uvicorn on a free port in this process.

The service runs every local tier on the named ``FakeBackend`` (registered as the diffusers backend, so
the hosted Pro/Max tiers stay unconfigured, as on a real install without a BFL key), with the real
analysis toolkit for reference checks and identity scores. Screenshots of the main screens are saved
under ``artifacts/screenshots/`` (git-ignored).

If Chromium or Playwright is missing the tests are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts, UserRecord
from kontext_studio.service.app import create_app
from kontext_studio.service.db import make_engine, make_session_factory, upgrade
from kontext_studio.service.storage.storage_local import LocalStorage

CHROMIUM = os.environ.get("KONTEXT_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
LOCAL_CREDITS = 100


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} CI is set, so the browser tests must run.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if not path:
        _unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium, or set KONTEXT_CHROMIUM).")
    assert path is not None
    return path


@dataclass
class Studio:
    """The running service: its URL, accounts, backend and the local admin it signs in automatically."""

    url: str
    accounts: SqlAccounts
    backend: FakeBackend
    admin: UserRecord
    app: Any

    def new_user(self, credits: int) -> tuple[UserRecord, str]:
        """A user with ``credits`` and an API key (for signing in through the sign-in page)."""
        user = self.accounts.create_user(f"web-{uuid.uuid4().hex[:8]}@example.com", "Web user")
        if credits:
            self.accounts.grant(user.id, credits)
        key, _ = self.accounts.create_api_key(user.id, "browser test")
        return user, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    """The real service (SQLite, local storage, in-process worker) served by uvicorn on 127.0.0.1."""
    from kontext_studio.analysis.fidelity import AnalysisFidelity

    home = tmp_path_factory.mktemp("studio")
    url = f"sqlite:///{home / 'kontext.db'}"
    upgrade(url)
    engine = make_engine(url)
    accounts = SqlAccounts(make_session_factory(engine))
    admin = accounts.create_user("admin@localhost", "Local admin", is_admin=True)
    accounts.grant(admin.id, LOCAL_CREDITS)
    # 0.04 s a step: a 14-step Fast edit takes about half a second, long enough to see progress.
    backend = FakeBackend(step_seconds=0.04, resolution=256)
    editor = Editor({"diffusers": backend}, fidelity=AnalysisFidelity())
    port = _free_port()
    app = create_app(engine, LocalStorage(home / "data"), editor, b"web-test-secret-0123456789abcdef",
                     local_user_id=admin.id, public_url=f"http://127.0.0.1:{port}", rate_limit=0,
                     max_active_per_user=50)
    with serving(app, port):
        yield Studio(f"http://127.0.0.1:{port}", accounts, backend, admin, app)
    engine.dispose()


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (make install-dev installs it).")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any, studio: Studio) -> Iterator[Any]:
    """A fresh browser context (no cookies) on a desktop-sized window; console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    # Generous waits: the whole suite shares two cores with Chromium and the server.
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@contextlib.contextmanager
def opened(browser: Any, url: str, key: str | None = None, **context_options: Any) -> Iterator[Any]:
    """A desktop page on ``url``, signed in through the sign-in page with ``key`` (None: the local admin, who
    needs no sign-in); a JavaScript error on the page fails the test.

    Args:
        context_options: for ``browser.new_context`` (``bypass_csp=True`` where axe-core is injected).
    """
    from playwright.sync_api import expect

    context = browser.new_context(viewport=DESKTOP, **context_options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    if key is not None:
        expect(page).to_have_url(re.compile("/sign-in"))  # a fresh browser is asked to sign in first
        page.fill("#api_key", key)
        page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#credits-available")).to_be_visible()
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@contextlib.contextmanager
def serving(app: Any, port: int) -> Iterator[None]:
    """Run the app under uvicorn on a thread for the duration of the block (started within 20 s).

    Raises:
        RuntimeError: the server did not start.
    """
    import uvicorn  # the service extra; imported here like the fixtures did

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"studio-uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the studio server did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)


def wait_until(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Poll a JavaScript expression until it is true, with a deadline.

    Playwright's ``wait_for_function`` compiles a string predicate inside the page when it has to poll, which
    the studio's Content-Security-Policy (``script-src 'self'``, no eval) rightly refuses; ``evaluate`` runs
    through the browser's debugging protocol, which the page's CSP does not govern.

    Raises:
        AssertionError: the expression is still false at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if page.evaluate(expression):
                return
            problem = "still false"
        except Exception as exc:  # the element may not exist yet (a page still loading): poll again
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{problem} after {timeout:.0f} s: {expression}")
        page.wait_for_timeout(100)


@pytest.fixture()
def shot() -> Callable[[Any, str], Path]:
    """Save a full-page screenshot under artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(pg: Any, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        pg.screenshot(path=str(path), full_page=True)
        return path

    return take


def picture(path: Path, colour: tuple[int, int, int], shape: str = "circle", size: tuple[int, int] = (1024, 768),
            fmt: str = "PNG") -> Path:
    """A photo-like test picture: a soft gradient background and one coloured shape."""
    w, h = size
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img = Image.blend(img, Image.new("RGB", (w, h), (210, 200, 180)), 0.6)
    draw = ImageDraw.Draw(img)
    box = (w // 4, h // 5, 3 * w // 4, 4 * h // 5)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=(20, 20, 20), width=6)
    else:
        draw.rectangle(box, fill=colour, outline=(20, 20, 20), width=6)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return path


AXE = Path(os.environ.get("KONTEXT_AXE", Path(__file__).resolve().parents[2] / "build" / "web-test" / "node_modules"
                          / "axe-core" / "axe.min.js"))
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's browser script (``make axe`` installs it from npm)."""
    if not AXE.is_file():
        _unavailable(f"axe-core is not installed at {AXE} (make axe).")
    return AXE.read_text()


def no_overflow(pg: Any) -> None:
    """Assert nothing on the page scrolls sideways, naming the widest elements when something does."""
    width = pg.evaluate("innerWidth")
    wide = pg.evaluate("w => Array.from(document.querySelectorAll('body *')).filter(e => "
                       "e.getBoundingClientRect().right > w + 1 && getComputedStyle(e).position !== 'fixed')"
                       ".map(e => e.tagName + '.' + e.className + '#' + e.id + ' ' + "
                       "Math.round(e.getBoundingClientRect().right)).slice(0, 8)", width)
    assert pg.evaluate("document.documentElement.scrollWidth") <= width, wide


def accessible(pg: Any, axe_source: str) -> None:
    """Run axe-core in the page: no serious or critical violations (each one named with its first target)."""
    if not pg.evaluate("typeof window.axe !== 'undefined'"):
        pg.add_script_tag(content=axe_source)
    found = pg.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
            .map(v => `${v.id} (${v.impact}): ${v.help} at `
                 + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '));
    }""")
    assert found == [], found


@dataclass
class TinyStudio:
    """The real service on the tiny diffusers model (random weights, real pipeline), with no local sign-in: a
    browser signs in with ``key`` (so a fresh browser context is truly signed out)."""

    url: str
    accounts: SqlAccounts
    user: UserRecord
    key: str
    editor: Any = None  # the engine behind the server (a test may install another model's backend on it)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        r = httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {self.key}"}, timeout=60,
                          **kwargs)
        r.raise_for_status()
        return r.json() if r.content else None


TINY_CREDITS = 300


@pytest.fixture(scope="session")
def tiny_studio(tmp_path_factory: pytest.TempPathFactory, backend: Any) -> Iterator[TinyStudio]:
    """uvicorn serving the service whose local tiers run the tiny Kontext model (``backend`` from tests/conftest)."""
    from kontext_studio.analysis.fidelity import AnalysisFidelity

    home = tmp_path_factory.mktemp("tiny-studio")
    url = f"sqlite:///{home / 'kontext.db'}"
    upgrade(url)
    engine = make_engine(url)
    accounts = SqlAccounts(make_session_factory(engine))
    user = accounts.create_user("maker@example.com", "Maker")
    accounts.grant(user.id, TINY_CREDITS)
    key, _ = accounts.create_api_key(user.id, "browser")
    backend.loras.apply([])
    editor = Editor({"diffusers": backend}, fidelity=AnalysisFidelity())
    port = _free_port()
    app = create_app(engine, LocalStorage(home / "data"), editor, b"tiny-web-secret-0123456789abcdef",
                     public_url=f"http://127.0.0.1:{port}", rate_limit=0, max_active_per_user=50)
    with serving(app, port):
        yield TinyStudio(f"http://127.0.0.1:{port}", accounts, user, key, editor)
    engine.dispose()


@pytest.fixture()
def klein(tiny_studio: TinyStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """FLUX.2 [klein] 4B on its tiny model (random weights, the real pipeline), installed on the server for one
    test and taken away after it."""
    from kontext_studio.core.backends.diffusers_flux2 import Flux2KleinBackend
    from kontext_studio.core.catalogue import get_model
    from kontext_studio.core.weights import ModelSource
    from kontext_studio.testing.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("klein") / "tiny-klein", family="klein")
    backend = Flux2KleinBackend(get_model("klein-4b"), ModelSource.parse(str(folder)))
    tiny_studio.editor.use_backend("klein-4b", backend)
    yield
    tiny_studio.editor.use_backend("klein-4b", None)


def credits_agree(pg: Any, tiny: TinyStudio) -> int:
    """Credits shown in the header = the API's balance = the sum of the ledger's movements on the available
    account; returns that figure."""
    from playwright.sync_api import expect

    api = tiny.api("GET", "/v1/account")["credits"]["available"]
    expect(pg.locator("#credits-available")).to_have_text(str(api))
    ledger = tiny.api("GET", "/v1/account/ledger?limit=500")["results"]
    assert sum(e["amount"] for e in ledger if e["account"] == "available") == api
    return int(api)
