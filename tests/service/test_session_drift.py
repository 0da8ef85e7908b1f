"""A session's turns report drift as drift (0 = unchanged, growing away from the origin) beside the similarity."""

from __future__ import annotations

from typing import Any

from kontext_studio.service.accounts import SqlAccounts
from tests.service.test_studio_api import png, service, submit, upload, user_client  # noqa: F401 (fixture)


def test_turn_drift_is_one_minus_similarity(service: Any, accounts: SqlAccounts) -> None:  # noqa: F811
    client, _ = user_client(service, accounts)
    origin = upload(client, png(320, 240, seed=1))
    root = submit(client, origin, "make it snowy")
    assert client.wait(root)["status"] == "succeeded"
    session = client.post("/v1/sessions", {"prediction": root}).json()
    turn = client.get(f"/v1/sessions/{session['id']}").json()["turns"][0]
    drift = turn["drift"]
    assert drift is not None and drift["similarity"] is not None
    assert drift["value"] == round(1 - drift["similarity"], 4)
