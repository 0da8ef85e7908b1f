"""The library and usage API on SQLite and PostgreSQL: search, kinds, favourites, removal, share links (public,
showing only what the owner chose, unguessable, revocable, dead once the result is removed), tenant isolation,
usage rows that match the ledger, and the library tables in the migrated schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import Base
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, png, user_client
from tests.service.test_studio_api import submit, upload

LIBRARY_TABLES = ("library_marks", "share_links")


@pytest.fixture()
def service(engine: Engine, accounts: SqlAccounts) -> Iterator[Any]:
    backend = FakeBackend(step_seconds=0.002, resolution=128)
    app = create_app(engine, MemoryStorage(), Editor({"diffusers": backend}), SECRET, rate_limit=0,
                     max_active_per_user=50)
    with TestClient(app):
        yield app


def test_library_tables_match_the_migrations(engine: Engine) -> None:
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert [d for d in diff if any(t in repr(d) for t in LIBRARY_TABLES)] == []


def test_library_search_favourites_remove_and_usage(service: Any, accounts: SqlAccounts) -> None:
    me, _ = user_client(service, accounts)
    other, _ = user_client(service, accounts)
    f = upload(me, png())
    beach = submit(me, f, "put it on a beach")
    snow = submit(me, f, "make it snowy")
    for pid in (beach, snow):
        assert me.wait(pid)["status"] == "succeeded"

    items = me.get("/v1/library").json()["results"]
    assert [i["id"] for i in items] == [snow, beach] and all(i["kind"] == "edit" for i in items)
    assert items[0]["output"] and not items[0]["favourite"] and items[0]["share"] is None
    assert [i["id"] for i in me.get("/v1/library?q=snowy").json()["results"]] == [snow]
    assert other.get("/v1/library").json()["results"] == []  # someone else's library is empty
    bad = me.get("/v1/library?kind=photos")
    assert bad.status_code == 422 and "kind must be one of edit, series, session" in bad.json()["detail"]

    marked = me.http.put(f"/v1/library/{beach}/favourite", json={"favourite": True}, headers=me.headers)
    assert marked.status_code == 200
    assert [i["id"] for i in me.get("/v1/library?favourites=true").json()["results"]] == [beach]
    assert other.http.put(f"/v1/library/{beach}/favourite", json={"favourite": True},
                          headers=other.headers).status_code == 404

    assert other.http.delete(f"/v1/library/{snow}", headers=other.headers).status_code == 404
    assert me.http.delete(f"/v1/library/{snow}", headers=me.headers).status_code == 204
    assert [i["id"] for i in me.get("/v1/library").json()["results"]] == [beach]

    # Usage still counts the removed edit: one row per job, what each cost, totals per day = the ledger.
    usage = me.get("/v1/usage").json()
    assert [r["id"] for r in usage["results"]] == [snow, beach]
    assert [r["credits"] for r in usage["results"]] == [4, 4]
    assert sum(d["credits"] for d in usage["days"]) == 8 and sum(d["jobs"] for d in usage["days"]) == 2
    spent = 100 - me.get("/v1/account").json()["credits"]["available"]
    assert spent == 8


def test_share_link_public_revocable_and_only_what_was_chosen(service: Any, accounts: SqlAccounts) -> None:
    me, _ = user_client(service, accounts)
    other, _ = user_client(service, accounts)
    pid = submit(me, upload(me, png()), "put it on a beach")
    assert me.wait(pid)["status"] == "succeeded"

    assert other.post(f"/v1/library/{pid}/share", {}).status_code == 404  # only the owner shares
    made = me.post(f"/v1/library/{pid}/share", {"show_prompt": False, "show_model": False})
    assert made.status_code == 201, made.text
    link = made.json()
    token = link["url"].rsplit("/s/", 1)[1]
    assert len(token) > 40  # an id and a signature: not guessable, not enumerable

    public = TestClient(service)  # no key, no cookie
    page = public.get(f"/s/{token}")
    assert page.status_code == 200 and "/v1/files/outputs/" in page.text
    assert "put it on a beach" not in page.text and "flux-kontext" not in page.text
    assert page.headers["x-robots-tag"] == "noindex"

    # Choosing to show the prompt updates the same link.
    again = me.post(f"/v1/library/{pid}/share", {"show_prompt": True}).json()
    assert again["id"] == link["id"]
    assert "put it on a beach" in public.get(f"/s/{token}").text
    assert me.get("/v1/library").json()["results"][0]["share"]["url"] == link["url"]

    # A forged token (right id, wrong signature) and a revoked link both answer 404.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert public.get(f"/s/{forged}").status_code == 404
    assert other.http.delete(f"/v1/shares/{link['id']}", headers=other.headers).status_code == 404
    assert me.http.delete(f"/v1/shares/{link['id']}", headers=me.headers).status_code == 204
    gone = public.get(f"/s/{token}", headers={"Accept": "text/html"})
    assert gone.status_code == 404 and "switched off" in gone.text

    # Removing a result from the library ends its new link too; a failed job has nothing to share.
    token2 = me.post(f"/v1/library/{pid}/share", {}).json()["url"].rsplit("/s/", 1)[1]
    assert public.get(f"/s/{token2}").status_code == 200
    me.http.delete(f"/v1/library/{pid}", headers=me.headers)
    assert public.get(f"/s/{token2}").status_code == 404
    assert me.post(f"/v1/library/{pid}/share", {}).status_code == 404
