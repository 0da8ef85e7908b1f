"""Several API processes behind a load balancer: built by the composition root on one Redis, they share each
rate limit, so a client gets it once, not once per process (two app instances stand for two processes,
over one database as in a real deployment)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from benchmarks.chaos_soak import delete_keys
from sqlalchemy import Engine

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import build_app, create_app
from kontext_studio.service.composition import build_services
from kontext_studio.service.container import ServiceOptions
from kontext_studio.service.inputs import data_url
from kontext_studio.service.limits import MemoryRateLimiter
from kontext_studio.service.limits.limits_redis import RedisRateLimiter
from kontext_studio.service.storage.fake import MemoryStorage
from tests.conftest import require_redis
from tests.service.test_api import SECRET, png, user_client
from tests.service.test_tools_api import photo_bytes


@pytest.fixture()
def shared_redis() -> Iterator[dict[str, Any]]:
    """The options that put an app's rate limits in the test Redis, under a prefix deleted afterwards."""
    url = require_redis("the Redis rate-limit tests")
    prefix = f"ks-test-{uuid.uuid4().hex[:10]}:"
    yield {"limits_redis_url": url, "limits_key_prefix": prefix}
    delete_keys(url, prefix)


def api_process(engine: Engine, **options: Any) -> Any:
    return create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend()}), SECRET, start_worker=False,
                      **options)


def test_submits_over_the_limit_are_refused_by_every_api_process(engine: Engine, accounts: SqlAccounts,
                                                                  shared_redis: dict[str, Any]) -> None:
    first = api_process(engine, rate_limit=3, **shared_redis)
    second = api_process(engine, rate_limit=3, **shared_redis)
    on_first, uid = user_client(first, accounts, credits=1000)
    on_second, _ = user_client(second, accounts, credits=0)
    on_second.headers = on_first.headers  # the same client, sent to either process by the load balancer
    body = {"input": {"prompt": "x", "input_image": data_url(png())}}
    codes = [client.post("/v1/predictions", body).status_code for client in (on_first, on_second, on_first)]
    assert codes == [201, 201, 201]
    r = on_second.post("/v1/predictions", body)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited" and 1 <= int(r.headers["Retry-After"]) <= 60
    assert on_first.post("/v1/predictions", body).status_code == 429
    assert accounts.balance(uid).held == 3 * 5  # the refused submits held nothing


def test_free_tool_runs_are_counted_across_api_processes(engine: Engine, accounts: SqlAccounts,
                                                         shared_redis: dict[str, Any]) -> None:
    first, second = api_process(engine, **shared_redis), api_process(engine, **shared_redis)
    on_first, _ = user_client(first, accounts, credits=0)
    on_second, _ = user_client(second, accounts, credits=0)
    on_second.headers = on_first.headers
    files = {"images": ("c.jpg", photo_bytes(size=(40, 30)), "image/jpeg")}
    codes = [client.http.post("/v1/tools/resize", files=files, data={"width": "8"}, headers=client.headers)
             .status_code for client in [on_first, on_second] * 16]  # 32 runs; 30 a minute per user
    assert codes == [200] * 30 + [429] * 2


def test_the_composition_root_counts_in_memory_without_redis(engine: Engine) -> None:
    editor = Editor({"fake": FakeBackend()})
    alone = build_services(engine, MemoryStorage(), editor, SECRET, ServiceOptions(start_worker=False))
    assert isinstance(alone.predictions.policy.limiter, MemoryRateLimiter)
    shared = build_services(engine, MemoryStorage(), editor, SECRET,
                            ServiceOptions(start_worker=False, limits_redis_url="redis://127.0.0.1:1/0"))
    assert isinstance(shared.predictions.policy.limiter, RedisRateLimiter)
    assert isinstance(shared.limiters("tools-user", 30, 60.0), RedisRateLimiter)
    build_app(shared)  # Redis is not contacted at start-up: an unreachable one does not stop the service


def test_kontext_serve_with_a_broker_counts_in_its_redis_under_the_installation_prefix(tmp_path: Any) -> None:
    from kontext_studio.service.server import build_app as serve_app
    from kontext_studio.service.server import celery_app
    from kontext_studio.settings import Settings

    settings = Settings.from_env({"KONTEXT_HOME": str(tmp_path), "KONTEXT_BROKER_URL": "redis://127.0.0.1:1/0",
                                  "KONTEXT_BROKER_PREFIX": "site-a:"})
    app = serve_app(settings, "127.0.0.1", lambda: Editor({"fake": FakeBackend()}), say=lambda _line: None)
    limiter = app.state.services.predictions.policy.limiter
    assert isinstance(limiter, RedisRateLimiter) and limiter.key(7) == "site-a:kontext:ratelimit:predictions:7"
    # the broker's keys carry the same prefix, as with `celery -A kontext_studio.service.jobs.celery_app`
    assert celery_app(settings).conf.broker_transport_options["global_keyprefix"] == "site-a:"
