"""R4: schemathesis over the OpenAPI schema, two users, bounded for CI: no 5xx, no schema violations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import make_engine, make_session_factory, upgrade
from kontext_studio.service.storage.fake import MemoryStorage

CONFORMANCE = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
               checks.response_schema_conformance]


def _app(tmp_path: Any) -> tuple[Any, list[str]]:
    engine: Engine = make_engine(f"sqlite:///{tmp_path / 'fuzz.db'}")
    upgrade(engine)
    accounts = SqlAccounts(make_session_factory(engine))
    keys = []
    for _ in range(2):
        user = accounts.create_user(f"fuzz-{uuid.uuid4().hex}@example.com", "fuzz")
        accounts.grant(user.id, 10_000)
        keys.append(accounts.create_api_key(user.id)[0])
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend()}), b"f" * 32, start_worker=False,
                     rate_limit=0, max_active_per_user=10**6)
    return app, keys


def test_no_server_errors_on_any_operation(tmp_path: Any) -> None:
    app, keys = _app(tmp_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        fuzz_operation(operation, keys, failures)
    assert failures == []


def fuzz_operation(operation: Any, keys: list[str], failures: list[str]) -> None:
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        for key in keys:
            response = case.call(headers={"Authorization": f"Bearer {key}", "x-key": key})
            if response.status_code >= 500:
                failures.append(f"{operation.label}: {response.status_code} {response.text[:200]}")
                continue
            try:  # the answer is one the schema documents: status code, content type and body shape
                case.validate_response(response, checks=CONFORMANCE)
            except Exception as exc:  # schemathesis raises a FailureGroup naming every violation
                failures.append(f"{operation.label}: {response.status_code} violates the schema: {exc}"[:600])

    check()


@pytest.mark.parametrize("path", ["/v1/predictions/does-not-exist", "/v1/files/../../etc/passwd?expires=1&sig=x",
                                  "/v1/no-such-route", "/v1/files/%F0%9F%98%80%00"])
def test_odd_paths_are_4xx(tmp_path: Any, path: str) -> None:
    from fastapi.testclient import TestClient

    app, keys = _app(tmp_path)
    r = TestClient(app).get(path, headers={"Authorization": f"Bearer {keys[0]}"})
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"] == "application/problem+json" and r.json()["code"]  # routing errors too
