"""R4: schemathesis over the OpenAPI schema, two users, on SQLite and PostgreSQL, bounded for CI: no 5xx, no
schema violations; then every operation again with hostile values in its body and query (non-finite numbers,
lone surrogates, NUL, deep JSON): still no 5xx."""

from __future__ import annotations

import json
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


def _app(tmp_path: Any, engine: Engine | None = None) -> tuple[Any, list[str]]:
    if engine is None:
        engine = make_engine(f"sqlite:///{tmp_path / 'fuzz.db'}")
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


def test_no_server_errors_on_any_operation(tmp_path: Any, engine: Engine) -> None:
    app, keys = _app(tmp_path, engine)
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


# Values no client should send, each of which once answered 500 somewhere.
HOSTILE_NUMBERS = ("Infinity", "-Infinity", "NaN", "1e400", "-1e400", "123456789012345678901234567890")
HOSTILE_TEXT = ("\\ud800", "a\\u0000b", "\\udfff\\ud800", "../../etc/passwd", "x" * 5000)


def _hostile_bodies(body: Any) -> list[str]:
    """JSON texts derived from a valid body: each number, then each string, replaced by hostile values, and
    the whole body nested deep."""
    base = json.dumps(body)
    out = []
    marker = "__HOSTILE__"

    def replace_all(value: Any, kind: type) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, kind):
            return marker
        if isinstance(value, dict):
            return {k: replace_all(v, kind) for k, v in value.items()}
        if isinstance(value, list):
            return [replace_all(v, kind) for v in value]
        return value

    numbers = json.dumps(replace_all(body, (int, float)))  # type: ignore[arg-type]
    strings = json.dumps(replace_all(body, str))
    for literal in HOSTILE_NUMBERS:
        out.append(numbers.replace(f'"{marker}"', literal))
    for text in HOSTILE_TEXT:
        out.append(strings.replace(f'"{marker}"', f'"{text}"'))
    out.append("[" * 5000 + base + "]" * 5000)
    out.append('{"input": ' * 200 + base + "}" * 200)
    return out


def test_hostile_values_on_every_operation_are_never_a_server_error(tmp_path: Any, engine: Engine) -> None:
    from fastapi.testclient import TestClient

    app, keys = _app(tmp_path, engine)
    http = TestClient(app, raise_server_exceptions=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        hostile_operation(operation, http, keys[0], failures)
    assert failures == []


def hostile_operation(operation: Any, http: Any, key: str, failures: list[str]) -> None:
    @settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        headers = {"Authorization": f"Bearer {key}", "x-key": key, "content-type": "application/json"}
        bodies = _hostile_bodies(case.body) if isinstance(case.body, dict | list) else ['"\\ud800"', "1e400"]
        # Query values: NUL in strings, 1e400 in numbers, and a UTF-8-encoded lone surrogate (bytes no client
        # library would produce from text, so they are written percent-encoded by hand).
        query = "&".join(f"{k}=" + ("%00%ED%A0%80" if isinstance(v, str) else "1e400")
                         for k, v in (case.query or {}).items())
        for text in bodies:
            r = http.request(case.method, case.formatted_path, params=case.query, headers=headers,
                             content=text.encode("utf-8", "surrogatepass"))
            if r.status_code >= 500:
                failures.append(f"{operation.label} body {text[:80]!r}: {r.status_code} {r.text[:200]}")
        r = http.request(case.method, f"{case.formatted_path}?{query}", headers=headers)
        if r.status_code >= 500:
            failures.append(f"{operation.label} query {query!r}: {r.status_code} {r.text[:200]}")

    check()
