"""R1 chaos soak at CI scale: the HTTP service + real PostgreSQL + Redis + 3 Celery worker processes, workers
and the API process killed under load.

60 predictions over all tiers from 6 client threads, through HTTP with each user's API key (the API process
gets ``kill -9`` and is started again once half of them are submitted; clients retry dropped connections with
the same Idempotency-Key); 10 % resent with the same Idempotency-Key, 10 % cancelled at a random moment,
5 % failing in the model, and one wipe of the broker's waiting messages (Redis restarted without
persistence). A random busy worker gets
``kill -9`` when 10, 30, 50 and 70 % of the jobs have finished (4 kills whatever the machine's speed) and
is replaced at once; the reaper runs every 0.5 s with 3 s leases. Pass: no lost job, no job with two
outputs, no double settlement, the ledger sums to 0 and audits clean, every balance = initial - prices of
the succeeded jobs, no 5xx answer, no worker process left. Runs in the normal suite (about a minute); the
full size is ``benchmarks/chaos_soak.py``. Skipped without Redis or PostgreSQL, failed instead when ``CI`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.chaos_soak import SoakConfig, run_soak

from tests.service.test_celery import pg_url, redis_url  # noqa: F401  (fixtures)

CI_SCALE = SoakConfig(
    jobs=60, clients=6, workers=3, users=4, steps=10, step_min=0.05, step_max=0.2,
    resend=0.10, cancel=0.10, fail=0.05, lose=0.05, queue_wipes=1,
    kill_every=0, kill_at=(0.1, 0.3, 0.5, 0.7), min_kills=3,
    lease=3, reap_interval=0.5, stale_after=6.0,
    submit_span=3.0, cancel_window=4.0, timeout=80.0,
    seed=int(os.environ.get("KONTEXT_SOAK_SEED", "7")),
    worker_modes=("python", "python", "cli"),
)


def test_chaos_soak_ci_scale(pg_url: str, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    result = run_soak(CI_SCALE, pg_url, redis_url, tmp_path, log=print)
    report = result.table()
    print(report)
    assert result.leftover_pids == [], f"worker processes left running: {result.leftover_pids}"
    assert result.ok, f"{report}\n\n{result.worker_logs}"
