"""Settings an administrator enters in the studio, on SQLite and PostgreSQL: the BFL API key switches the hosted
models on at once and after a restart, is stored encrypted, is never sent back, and only administrators may
change it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.storage.fake import MemoryStorage
from tests.service.test_api import SECRET, Client

KEY = "bfl-test-key-7c1f0e"


def hosted(app: Any) -> dict[str, bool]:
    models = TestClient(app).get("/v1/models").json()["results"]
    return {m["tier"]: m["configured"] for m in models if m.get("tier") in ("pro", "max")}


def test_bfl_key_from_the_studio(engine: Engine, accounts: SqlAccounts) -> None:
    def app() -> Any:
        return create_app(engine, MemoryStorage(), Editor({"diffusers": FakeBackend(resolution=64)}), SECRET,
                          start_worker=False)

    first = app()
    admin = accounts.create_user(f"admin-{id(first)}@example.com", "Admin", is_admin=True)
    someone = accounts.create_user(f"user-{id(first)}@example.com", "User")
    boss, _ = Client(first, accounts.create_api_key(admin.id)[0]), None
    user = Client(first, accounts.create_api_key(someone.id)[0])
    assert hosted(first) == {"pro": False, "max": False}

    refused = user.http.put("/v1/admin/settings/bfl-api-key", json={"key": KEY}, headers=user.headers)
    assert refused.status_code == 403 and "administrator" in refused.json()["detail"]
    assert user.get("/v1/admin/settings").status_code == 403
    bad = boss.http.put("/v1/admin/settings/bfl-api-key", json={"key": "two words"}, headers=boss.headers)
    assert bad.status_code == 422 and "one word" in bad.json()["detail"]

    assert boss.http.put("/v1/admin/settings/bfl-api-key", json={"key": KEY}, headers=boss.headers).status_code == 204
    assert hosted(first) == {"pro": True, "max": True}  # at once
    shown = boss.get("/v1/admin/settings")
    assert shown.json()["bfl_api_key"]["set"] is True and KEY not in shown.text
    with engine.connect() as c:
        stored = bytes(c.execute(text("SELECT value FROM server_settings WHERE name = 'bfl_api_key'")).scalar_one())
    assert KEY.encode() not in stored  # encrypted at rest

    # A restart (a new app on the same database) finds the key again.
    second = app()
    assert hosted(second) == {"pro": True, "max": True}
    again = Client(second, accounts.create_api_key(admin.id)[0])
    assert again.http.delete("/v1/admin/settings/bfl-api-key", headers=again.headers).status_code == 204
    assert hosted(second) == {"pro": False, "max": False}
    assert hosted(app()) == {"pro": False, "max": False}
