"""R5: service latency with the fake backend — submit and status p50/p95 at a target request rate on one
API process (uvicorn on loopback), and the claim query's time with many queued rows.

    .venv/bin/python benchmarks/service_latency.py [--rate 100] [--seconds 10] [--queued 10000] [--json]

Runs against SQLite in a temp folder by default (``--database-url`` for PostgreSQL). Only loopback traffic.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from PIL import Image

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.app import create_app
from kontext_studio.service.db import Job, make_engine, make_session_factory, upgrade
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.storage.fake import MemoryStorage


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values[0] if values else 0.0)


def png_bytes() -> bytes:
    """A small PNG upload."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def bench_account(database_url: str | None, name: str) -> tuple[str, Any, SqlAccounts, int, str]:
    """A migrated database (``database_url``, else SQLite in a temporary folder) with one user holding plenty
    of credits: (url, engine, accounts, the user's id, the user's API key)."""
    url = database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / f'{name}.db'}"
    engine = make_engine(url)
    upgrade(engine)
    accounts = SqlAccounts(make_session_factory(engine))
    user = accounts.create_user(f"{name}-{time.time_ns()}@example.com", name)
    accounts.grant(user.id, 10_000_000)
    key, _ = accounts.create_api_key(user.id)
    return url, engine, accounts, user.id, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(url: str, port: int) -> None:
    """The API process: one uvicorn worker, the in-process job worker, the named fake backend."""
    engine = make_engine(url)
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.0, resolution=64)}),
                     b"x" * 32, rate_limit=0, max_active_per_user=10**9)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second (half submits, half status)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--queued", type=int, default=10_000, help="queued rows for the claim-query timing")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    url, engine, accounts, user_id, key = bench_account(args.database_url, "bench")
    # The server runs in its own process: a load generator sharing its interpreter (and GIL) would measure
    # itself, not the API.
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(url, port), daemon=True)
    server.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit("the API process did not start") from None
            time.sleep(0.2)

    image = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    headers = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{port}"
    submit_lat: list[float] = []
    status_lat: list[float] = []
    errors: list[int] = []
    ids: list[str] = []
    client = httpx.Client(base_url=base, headers=headers, timeout=30)

    def submit(i: int) -> None:
        t = time.perf_counter()
        r = client.post("/v1/predictions", json={"input": {"prompt": f"scene {i}", "input_image": image,
                                                           "num_inference_steps": 1}})
        submit_lat.append(time.perf_counter() - t)
        if r.status_code >= 500 or r.status_code not in (200, 201):
            errors.append(r.status_code)
        else:
            ids.append(r.json()["id"])

    def status(_i: int) -> None:
        if not ids:
            return
        t = time.perf_counter()
        r = client.get(f"/v1/predictions/{ids[-1]}")
        status_lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            errors.append(r.status_code)

    n = int(args.rate * args.seconds)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for i in range(n):
            due = start + i / args.rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(submit if i % 2 == 0 else status, i)
    elapsed = time.perf_counter() - start
    server.terminate()
    server.join(10)

    # Claim query against a deep queue.
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        s.add_all(Job(user_id=user_id, model="flux-kontext-dev", tier="dev", input={"images": []})
                  for _ in range(args.queued))
    store = JobStore(sessions, accounts)
    claim_times = []
    for _ in range(20):
        t = time.perf_counter()
        claim = store.claim("bench")
        claim_times.append(time.perf_counter() - t)
        assert claim is not None
    result: dict[str, Any] = {
        "database": url.split(":")[0], "target_rate": args.rate, "achieved_rate": round(n / elapsed, 1),
        "requests": n, "errors": errors[:10], "error_count": len(errors),
        "submit_ms": {"p50": round(pct(submit_lat, 50) * 1e3, 1), "p95": round(pct(submit_lat, 95) * 1e3, 1)},
        "status_ms": {"p50": round(pct(status_lat, 50) * 1e3, 1), "p95": round(pct(status_lat, 95) * 1e3, 1)},
        "claim_ms_with_queue": {"queued": args.queued, "p50": round(pct(claim_times, 50) * 1e3, 2),
                                "max": round(max(claim_times) * 1e3, 2)},
        "targets": "submit p95 < 100 ms, status p95 < 30 ms at 100 req/s; claim < 10 ms with 10 000 queued",
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"service latency ({result['database']}, one API process, fake backend, {n} requests "
          f"at {result['achieved_rate']} req/s)")
    sub, sta, cla = result["submit_ms"], result["status_ms"], result["claim_ms_with_queue"]
    print(f"  submit  p50 {sub['p50']:7.1f} ms   p95 {sub['p95']:7.1f} ms  (target < 100)")
    print(f"  status  p50 {sta['p50']:7.1f} ms   p95 {sta['p95']:7.1f} ms  (target < 30)")
    print(f"  claim   p50 {cla['p50']:7.2f} ms   max {cla['max']:7.2f} ms with {args.queued} queued  (target < 10)")
    print(f"  errors  {len(errors)} (5xx or unexpected statuses)")


if __name__ == "__main__":
    main()
