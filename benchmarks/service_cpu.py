"""Process CPU time per request of the API's hot paths, the figure a shared machine does not blur: submit
(``POST /v1/predictions`` with an inline PNG data URL, and with an uploaded file id) and status
(``GET /v1/predictions/{id}``), driven in-process through httpx against the ASGI app (fake backend, no
worker, so only the request's own work is counted).

    .venv/bin/python benchmarks/service_cpu.py [--requests 300] [--database-url URL] [--profile] [--json]

CPU time is ``time.process_time`` (every thread of the process, so the work sent off the event loop is
counted); the httpx client's own share is included and is the same before and after a change. Wall-clock
percentiles under load are ``service_latency.py``'s job. ``--profile`` prints a cProfile top 20 (by
cumulative time) per path, with the thread hops run inline so the profile sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import httpx
from service_latency import bench_account, png_bytes
from sqlalchemy import update

from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.service.app import create_app
from kontext_studio.service.db import Job
from kontext_studio.service.storage.fake import MemoryStorage


async def measure(n: int, call: Callable[[int], Awaitable[None]], warmup: int = 20,
                  batches: int = 10) -> dict[str, float]:
    """CPU and wall milliseconds per call over ``n`` sequential calls (after ``warmup`` unmeasured ones).

    The calls run in ``batches``; ``cpu_ms`` is the cheapest batch's CPU per call (other work on a shared
    machine only ever adds to a batch), ``cpu_ms_mean`` the mean over all."""
    for i in range(warmup):
        await call(-1 - i)
    walls = []
    per_batch = []
    size = max(1, n // batches)
    total0 = time.process_time()
    for b in range(0, n, size):
        cpu0 = time.process_time()
        for i in range(b, min(n, b + size)):
            t = time.perf_counter()
            await call(i)
            walls.append(time.perf_counter() - t)
        per_batch.append((time.process_time() - cpu0) / (min(n, b + size) - b))
    mean = (time.process_time() - total0) / n
    return {"cpu_ms": round(min(per_batch) * 1e3, 2), "cpu_ms_mean": round(mean * 1e3, 2),
            "wall_p50_ms": round(statistics.median(walls) * 1e3, 2)}


async def submit_and_run(app: Any, n: int, submit: Callable[[int], Awaitable[None]], ids: list[str],
                         user_id: int) -> dict[str, float]:
    """CPU per prediction with the in-process worker running: the submit, the job on the fake backend (claim,
    progress, output stored, hold captured) and the worker's polling, until all ``n`` have ended."""
    services = app.state.services
    with services.jobs.sessions.begin() as s:  # the earlier measurements' queued jobs are not this figure's
        s.execute(update(Job).where(Job.user_id == user_id, Job.status == "starting").values(status="canceled"))
    parts = [*services.background, services.worker]  # the app was built without starting the worker
    for part in parts:
        part.start()
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        first = len(ids)
        for i in range(n):
            await submit(i)
        mine = ids[first:]
        while True:
            done = await asyncio.to_thread(lambda: all(services.predictions.get(None, j).status in
                                                       ("succeeded", "failed", "canceled", "aborted") for j in mine))
            if done:
                break
            await asyncio.sleep(0.05)
        return {"cpu_ms": round((time.process_time() - cpu0) / n * 1e3, 2),
                "wall_ms": round((time.perf_counter() - t0) / n * 1e3, 2)}
    finally:
        for part in reversed(parts):
            part.stop()


def inline_threads() -> None:
    """Run the thread hops on the event loop's thread, so cProfile (one thread) sees their work."""

    async def run_sync(func: Callable[..., Any], *args: Any, **_kw: Any) -> Any:
        return func(*args)

    async def to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    anyio.to_thread.run_sync = run_sync  # type: ignore[assignment]
    asyncio.to_thread = to_thread


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url, engine, _accounts, user_id, key = bench_account(args.database_url, "cpu")
    app = create_app(engine, MemoryStorage(), Editor({"fake": FakeBackend(step_seconds=0.0, resolution=64)}),
                     b"x" * 32, rate_limit=0, max_active_per_user=10**9, start_worker=False)
    png = png_bytes()
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        r = await client.post("/v1/files", content=png, headers={"content-type": "image/png"})
        r.raise_for_status()
        file_id = r.json()["id"]
        ids: list[str] = []

        async def submit_inline(i: int) -> None:
            r = await client.post("/v1/predictions", json={"input": {"prompt": f"scene {i}", "input_image": data_url,
                                                                     "num_inference_steps": 1}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        async def submit_file(i: int) -> None:
            r = await client.post("/v1/predictions", json={"input": {"prompt": f"scene {i}", "input_image": file_id,
                                                                     "num_inference_steps": 1}})
            assert r.status_code == 201, r.text

        async def status(i: int) -> None:
            r = await client.get(f"/v1/predictions/{ids[i % len(ids)]}")
            assert r.status_code == 200, r.text

        paths = {"submit_inline": submit_inline, "submit_file": submit_file, "status": status}
        result: dict[str, Any] = {"database": url.split(":")[0], "requests": args.requests}
        for name, call in paths.items():
            result[name] = await measure(args.requests, call)
        if args.worker:
            result["submit_and_run"] = await submit_and_run(app, args.requests // 2, submit_inline, ids, user_id)
        if args.profile:
            inline_threads()
            for name, call in paths.items():
                prof = cProfile.Profile()
                prof.enable()
                for i in range(args.requests):
                    await call(i)
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
                result[f"profile_{name}"] = out.getvalue()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="measured requests per path")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile top list per path")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--sort", default="cumulative", help="pstats sort key (cumulative, tottime)")
    ap.add_argument("--worker", action="store_true",
                    help="also: CPU per prediction with the in-process worker running each job to its end")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("profile_")}, indent=2))
    else:
        print(f"CPU per request ({result['database']}, in-process, fake backend, {args.requests} each)")
        for name in ("submit_inline", "submit_file", "status"):
            r = result[name]
            print(f"  {name:14s} {r['cpu_ms']:7.2f} ms CPU (cheapest batch; mean {r['cpu_ms_mean']:.2f})   "
                  f"wall p50 {r['wall_p50_ms']:7.2f} ms")
        if "submit_and_run" in result:
            r = result["submit_and_run"]
            print(f"  submit + job   {r['cpu_ms']:7.2f} ms CPU per prediction with the worker running "
                  f"(wall {r['wall_ms']:.2f} ms each)")
    for key, text in result.items():
        if key.startswith("profile_"):
            print(f"\n=== {key[8:]} ===\n{text}")


if __name__ == "__main__":
    main()
