"""The API the web studio is built on, on SQLite and PostgreSQL: reference checks, prompt coach, API keys,
prediction search, queue position, recipes and promotion, edit sessions, series, the studio's cookie
sessions with CSRF, and the studio's tables in the migrated schema."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, inspect

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import Base
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, Client, png, user_client

STUDIO_TABLES = {"edit_sessions", "edit_turns", "series"}


@pytest.fixture()
def service(engine: Engine, accounts: SqlAccounts) -> Iterator[Any]:
    # The fake backend stands in for the local diffusers backend only: pro and max stay unconfigured.
    backend = FakeBackend(step_seconds=0.005, resolution=128)
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET, rate_limit=0,
                     max_active_per_user=50)
    with TestClient(app):
        yield app


def upload(client: Client, data: bytes) -> str:
    r = client.http.post("/v1/files", content=data, headers=client.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def submit(client: Client, file_id: str, prompt: str = "put it on a beach", tier: str = "fast", **extra: Any) -> str:
    r = client.post("/v1/predictions", {"model": f"flux-kontext-{tier}",
                                        "input": {"prompt": prompt, "input_image": file_id, **extra}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_studio_tables_match_the_migrations(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) >= STUDIO_TABLES
    with engine.connect() as connection:
        from alembic.autogenerate import compare_metadata

        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert [d for d in diff if any(t in repr(d) for t in STUDIO_TABLES)] == []


def test_reference_check_and_coach(service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(service, accounts)
    file_id = upload(client, png(300, 200))
    r = client.post("/v1/tools/check-reference", {"image": file_id})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["size"] == [300, 200] and "low_resolution" in {f["code"] for f in report["findings"]}
    # Another user's upload answers like a missing one.
    other, _ = user_client(service, accounts)
    assert other.post("/v1/tools/check-reference", {"image": file_id}).status_code == 422

    r = client.post("/v1/tools/coach", {"prompt": "A beautiful blonde woman with blue eyes on a beach"})
    assert r.status_code == 200
    body = r.json()
    assert not body["ok"] and body["rewrite"] and "describes_scene" in {f["code"] for f in body["findings"]}


def test_api_keys_create_list_revoke(service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(service, accounts)
    r = client.post("/v1/account/keys", {"name": "laptop"})
    assert r.status_code == 201
    made = r.json()
    assert made["key"].startswith("ks_") and made["name"] == "laptop"
    listed = client.get("/v1/account/keys").json()["results"]
    assert made["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    fresh = Client(service, made["key"])
    assert fresh.get("/v1/account").status_code == 200
    other, _ = user_client(service, accounts)
    assert other.http.delete(f"/v1/account/keys/{made['id']}", headers=other.headers).status_code == 404
    r = client.http.delete(f"/v1/account/keys/{made['id']}", headers=client.headers)
    assert r.status_code == 200 and r.json()["active"] is False
    assert fresh.get("/v1/account").status_code == 401


def test_prediction_search_queue_recipe_and_promote(service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(service, accounts)
    file_id = upload(client, png())
    beach = submit(client, file_id, "put it on a beach at sunset", seed=11)
    snow = submit(client, file_id, "make it snowy", tier="dev")
    assert client.wait(beach)["status"] == "succeeded" and client.wait(snow)["status"] == "succeeded"

    def ids(**query: str) -> list[str]:
        r = client.http.get("/v1/predictions", params=query, headers=client.headers)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["results"]]

    assert ids(q="beach sunset") == [beach]
    assert ids(q="SNOWY") == [snow]
    assert ids(tier="dev") == [snow]
    assert set(ids(status="succeeded")) == {beach, snow}
    assert ids(status="failed") == []
    assert ids(q="100%_") == []  # LIKE wildcards are matched literally
    r = client.http.get("/v1/predictions", params={"tier": "turbo"}, headers=client.headers)
    assert r.status_code == 422 and r.json()["field"] == "tier" and "fast" in r.json()["detail"]

    assert client.get(f"/v1/predictions/{beach}/queue").json() == {"id": beach, "status": "succeeded", "ahead": 0}
    recipe = client.get(f"/v1/predictions/{beach}/recipe").json()
    assert recipe["input"]["input_image"] == file_id and recipe["input"]["seed"] == 11
    assert recipe["image_urls"][0].startswith("http") and recipe["tier"] == "fast"

    # Promote a Fast draft: the same recipe at dev runs with the same seed; pro is refused in words.
    r = client.post(f"/v1/predictions/{beach}/promote", {"tier": "dev"})
    assert r.status_code == 201, r.text
    promoted = client.wait(r.json()["id"])
    assert promoted["model"] == "flux-kontext-dev" and promoted["result"]["seed"] == 11
    assert promoted["input"]["prompt"] == "put it on a beach at sunset"
    before = client.get("/v1/account").json()["credits"]
    r = client.post(f"/v1/predictions/{beach}/promote", {"tier": "pro"})
    assert r.status_code == 501 and "not configured" in r.json()["detail"]
    assert client.get("/v1/account").json()["credits"] == before  # nothing held

    other, _ = user_client(service, accounts)
    for url in (f"/v1/predictions/{beach}/queue", f"/v1/predictions/{beach}/recipe"):
        assert other.get(url).status_code == 404
    assert other.post(f"/v1/predictions/{beach}/promote", {"tier": "dev"}).status_code == 404


def test_queue_position_counts_the_jobs_ahead(engine: Engine, accounts: SqlAccounts) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend()}), SECRET, start_worker=False,
                     rate_limit=0)
    client, _ = user_client(app, accounts)
    file_id = upload(client, png())
    first, second = submit(client, file_id), submit(client, file_id)
    try:
        ahead_first = client.get(f"/v1/predictions/{first}/queue").json()["ahead"]
        ahead_second = client.get(f"/v1/predictions/{second}/queue").json()["ahead"]
        assert ahead_second == ahead_first + 1
    finally:
        for pid in (first, second):
            client.post(f"/v1/predictions/{pid}/cancel")


def test_edit_session_chain_branch_and_drift(service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(service, accounts)
    origin = upload(client, png(320, 240, seed=1))  # big enough for the consistency score to measure
    root = submit(client, origin, "make it snowy")
    assert client.wait(root)["status"] == "succeeded"
    r = client.post("/v1/sessions", {"prediction": root})
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["origin"] == origin and [t["turn"] for t in session["turns"]] == [1]

    def continue_from(parent: str, prompt: str) -> str:
        output = client.get(f"/v1/predictions/{parent}").json()["output"]
        data = client.http.get(output.split("testserver")[-1]).content
        child = submit(client, upload(client, data), prompt)
        assert client.wait(child)["status"] == "succeeded"
        r = client.post(f"/v1/sessions/{session['id']}/turns", {"prediction": child, "parent": parent})
        assert r.status_code == 201, r.text
        return child

    second = continue_from(root, "add a red scarf")
    branch = continue_from(root, "add a blue hat")  # undo the scarf, try a hat instead: a branch
    third = continue_from(second, "at night")
    turns = {t["prediction"]: t for t in client.get(f"/v1/sessions/{session['id']}").json()["turns"]}
    assert turns[second]["parent"] == root and turns[branch]["parent"] == root and turns[third]["parent"] == second
    assert [turns[p]["turn"] for p in (root, second, branch, third)] == [1, 2, 2, 3]
    assert turns[second]["branch"] and turns[branch]["branch"] and not turns[third]["branch"]
    for t in turns.values():
        assert t["drift"] is not None and 0.0 <= t["drift"]["similarity"] <= 1.0, t

    r = client.post(f"/v1/sessions/{session['id']}/turns", {"prediction": third, "parent": root})
    assert r.status_code == 422 and r.json()["field"] == "prediction"
    r = client.post(f"/v1/sessions/{session['id']}/turns", {"prediction": root, "parent": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "parent"
    other, _ = user_client(service, accounts)
    assert other.get(f"/v1/sessions/{session['id']}").status_code == 404


def test_series_grid_and_contact_sheet(service: Any, accounts: SqlAccounts) -> None:
    client, _ = user_client(service, accounts, credits=20)
    file_id = upload(client, png())
    scenes = ["on a beach at sunset", "", "in a snowy forest", "as an oil painting"]
    r = client.post("/v1/series", {"model": "flux-kontext-fast", "input": {"input_image": file_id},
                                   "scenes": scenes})
    assert r.status_code == 201, r.text
    series = r.json()
    assert [i["prompt"] for i in series["items"]] == [s for s in scenes if s]
    finished = [client.wait(i["prediction"]) for i in series["items"]]
    assert {p["status"] for p in finished} == {"succeeded"}
    assert len({p["result"]["seed"] for p in finished}) == 1  # the scenes differ only by their instruction
    view = client.get(f"/v1/series/{series['id']}").json()
    assert view["done"] and all(i["output"] for i in view["items"])
    r = client.get(f"/v1/series/{series['id']}/contact-sheet")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] > 300
    assert client.get("/v1/account").json()["credits"]["available"] == 20 - 3 * 4

    # Not enough credits for the whole series: 402 and nothing queued or held.
    listed = len(client.get("/v1/predictions").json()["results"])
    r = client.post("/v1/series", {"model": "flux-kontext-fast", "input": {"input_image": file_id},
                                   "scenes": ["a", "b", "c"]})
    assert r.status_code == 402 and "insufficient credits" in r.json()["detail"]
    assert len(client.get("/v1/predictions").json()["results"]) == listed
    r = client.post("/v1/series", {"model": "flux-kontext-fast", "input": {"input_image": file_id},
                                   "scenes": [" "]})
    assert r.status_code == 422 and r.json()["field"] == "scenes"
    other, _ = user_client(service, accounts)
    assert other.get(f"/v1/series/{series['id']}").status_code == 404
    assert other.get(f"/v1/series/{series['id']}/contact-sheet").status_code == 404


def test_a_series_naming_another_family_is_judged_like_its_predictions(service: Any, accounts: SqlAccounts) -> None:
    # A series may name any catalogue model: it is priced and checked from the catalogue (naming a model outside
    # the Kontext tiers was a 500). This server has no FLUX.2 [klein] weights: refused, nothing held or queued.
    client, _ = user_client(service, accounts, credits=10)
    file_id = upload(client, png())
    listed = len(client.get("/v1/predictions").json()["results"])
    r = client.post("/v1/series", {"model": "black-forest-labs/flux-2-klein-4b",
                                   "input": {"input_image": file_id}, "scenes": ["on a beach", "in the snow"]})
    assert r.status_code == 501 and r.json()["code"] == "tier_not_configured", r.text
    assert "--" not in r.json()["detail"]  # said in words, not command-line flags
    assert client.get("/v1/account").json()["credits"]["available"] == 10
    assert len(client.get("/v1/predictions").json()["results"]) == listed


def test_a_series_on_klein_runs_end_to_end_at_its_price(engine: Engine, accounts: SqlAccounts) -> None:
    # Every model runs here (the fake backend stands in for all of them): a series on FLUX.2 [klein] 4B renders
    # every scene on it, recorded under its name, at its catalogue price a scene.
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.005, resolution=128)}),
                     SECRET, rate_limit=0, max_active_per_user=50)
    with TestClient(app):
        client, _ = user_client(app, accounts, credits=10)
        file_id = upload(client, png())
        r = client.post("/v1/series", {"model": "black-forest-labs/flux-2-klein-4b",
                                       "input": {"input_image": file_id, "seed": 9},
                                       "scenes": ["on a beach", "in the snow", "as a watercolour"]})
        assert r.status_code == 201, r.text
        series = r.json()
        finished = [client.wait(i["prediction"]) for i in series["items"]]
        assert {p["status"] for p in finished} == {"succeeded"}
        assert {p["model"] for p in finished} == {"flux-2-klein-4b"} and [p["cost"] for p in finished] == [2, 2, 2]
        assert client.get(f"/v1/series/{series['id']}").json()["done"]
        assert client.get(f"/v1/series/{series['id']}/contact-sheet").status_code == 200
        assert client.get("/v1/account").json()["credits"]["available"] == 10 - 3 * 2


def test_studio_cookie_needs_its_csrf_token(engine: Engine, accounts: SqlAccounts) -> None:
    user = accounts.create_user(f"local-{uuid.uuid4().hex}@example.com")
    accounts.grant(user.id, 10)
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend()}), SECRET, local_user_id=user.id,
                     start_worker=False)
    with TestClient(app) as browser:
        page = browser.get("/")  # single-user mode on loopback: signed in, cookie issued
        assert page.status_code == 200 and "ks_session" in browser.cookies
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert token is not None
        # A state-changing request with the cookie but without the token: 403, nothing created.
        r = browser.post("/v1/account/keys", json={"name": "x"})
        assert r.status_code == 403 and r.json()["code"] == "csrf_failed"
        r = browser.post("/v1/account/keys", json={"name": "x"}, headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403
        assert accounts.list_api_keys(user.id) == []
        r = browser.post("/v1/account/keys", json={"name": "x"}, headers={"X-CSRF-Token": token.group(1)})
        assert r.status_code == 201
        assert browser.get("/v1/account").status_code == 200  # reads need no token
    with TestClient(app) as stranger:
        # Another site's page in the local browser never gets the loopback sign-in.
        r = stranger.post("/v1/account/keys", json={"name": "y"}, headers={"Origin": "https://evil.example",
                                                                           "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 401
        assert stranger.get("/", headers={"Sec-Fetch-Site": "cross-site"}, follow_redirects=False) \
            .headers["location"] == "/sign-in"
        assert len(accounts.list_api_keys(user.id)) == 1


def test_sign_in_with_an_api_key(engine: Engine, accounts: SqlAccounts) -> None:
    user = accounts.create_user(f"remote-{uuid.uuid4().hex}@example.com")
    key, _ = accounts.create_api_key(user.id)
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend()}), SECRET, start_worker=False)
    with TestClient(app) as browser:
        assert browser.get("/", follow_redirects=False).headers["location"] == "/sign-in"
        r = browser.post("/sign-in", data={"api_key": "ks_wrong"})
        assert r.status_code == 401 and "unknown or revoked" in r.text
        r = browser.post("/sign-in", data={"api_key": key}, follow_redirects=False)
        assert r.status_code == 303 and "ks_session" in browser.cookies
        assert user.email in browser.get("/").text
        r = browser.post("/sign-in", data={"api_key": key}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403


def test_a_series_counts_once_toward_the_active_job_cap(engine: Engine, accounts: SqlAccounts) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend()}), SECRET, start_worker=False,
                     rate_limit=0, max_active_per_user=2)
    client, _ = user_client(app, accounts, credits=100)
    file_id = upload(client, png())
    body = {"model": "flux-kontext-fast", "input": {"input_image": file_id}, "scenes": ["a", "b", "c", "d"]}
    r = client.post("/v1/series", body)
    assert r.status_code == 201, r.text
    made = [i["prediction"] for i in r.json()["items"]]
    try:
        assert len(made) == 4
        # Now at the cap: the next series is refused as a whole, nothing queued, nothing held.
        r = client.post("/v1/series", body)
        assert r.status_code == 429 and "waiting or running" in r.json()["detail"]
        assert len(client.get("/v1/predictions").json()["results"]) == 4
        assert client.get("/v1/account").json()["credits"] == {"available": 100 - 16, "held": 16}
    finally:
        for pid in made:
            client.post(f"/v1/predictions/{pid}/cancel")


def test_a_series_is_all_or_nothing(engine: Engine, accounts: SqlAccounts) -> None:
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend()}), SECRET, start_worker=False,
                     rate_limit=3)  # the fourth scene hits the per-minute limit
    client, _ = user_client(app, accounts, credits=100)
    r = client.post("/v1/series", {"model": "flux-kontext-fast", "input": {"input_image": upload(client, png())},
                                   "scenes": ["a", "b", "c", "d"]})
    assert r.status_code == 429
    statuses = {p["status"] for p in client.get("/v1/predictions").json()["results"]}
    assert statuses == {"canceled"}  # the scenes already queued were taken back
    assert client.get("/v1/account").json()["credits"] == {"available": 100, "held": 0}
