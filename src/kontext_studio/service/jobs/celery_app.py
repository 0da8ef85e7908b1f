"""Entry for the ``celery`` command line, configured from the environment.

    KONTEXT_DATABASE_URL=postgresql://... KONTEXT_STORAGE_DIR=/shared/kontext \\
        celery -A kontext_studio.service.jobs.celery_app worker --pool=solo --concurrency=1

Worker processes started by the ``celery`` command get their configuration nowhere else, so this module,
like ``kontext_studio.settings``, reads the environment, once, at import. Import it only from that command;
code that builds an app itself calls ``dispatch_celery.make_celery`` with arguments.

Variables:
    KONTEXT_DATABASE_URL: the service database (required).
    KONTEXT_STORAGE_DIR: the folder of inputs and outputs, shared by the API and every worker (required).
    KONTEXT_BROKER_URL: the Redis broker (default ``redis://127.0.0.1:6379/0``).
    KONTEXT_EDITOR_FACTORY: ``package.module:callable`` returning the worker's Editor (default: the
        installation's engine from ``Settings.from_env()``).
    KONTEXT_LEASE_SECONDS: lease of a claim, renewed by each progress report (default 600).
    KONTEXT_VISIBILITY_TIMEOUT: seconds before Redis redelivers an unacknowledged message; above the
        longest job (default 7200).
    KONTEXT_QUEUE: queue name (default ``kontext``).
    KONTEXT_BROKER_PREFIX: prefix of every Redis key the broker uses (default none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kontext_studio.service.jobs.dispatch_celery import DEFAULT_QUEUE, DEFAULT_VISIBILITY_TIMEOUT, make_celery
from kontext_studio.service.jobs.jobs_common import LEASE_SECONDS


def config_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``make_celery`` arguments from ``KONTEXT_*`` variables.

    Raises:
        RuntimeError: a required variable is missing, naming it.
    """
    missing = [name for name in ("KONTEXT_DATABASE_URL", "KONTEXT_STORAGE_DIR") if not env.get(name)]
    if missing:
        raise RuntimeError(f"set {' and '.join(missing)} for the kontext Celery worker (see "
                           "kontext_studio.service.jobs.celery_app)")
    config: dict[str, Any] = {
        "broker_url": env.get("KONTEXT_BROKER_URL") or "redis://127.0.0.1:6379/0",
        "database_url": env["KONTEXT_DATABASE_URL"],
        "storage_root": env["KONTEXT_STORAGE_DIR"],
        "lease_seconds": int(env.get("KONTEXT_LEASE_SECONDS") or LEASE_SECONDS),
        "visibility_timeout": int(env.get("KONTEXT_VISIBILITY_TIMEOUT") or DEFAULT_VISIBILITY_TIMEOUT),
        "queue": env.get("KONTEXT_QUEUE") or DEFAULT_QUEUE,
        "key_prefix": env.get("KONTEXT_BROKER_PREFIX") or "",
    }
    if env.get("KONTEXT_EDITOR_FACTORY"):
        config["editor_factory"] = env["KONTEXT_EDITOR_FACTORY"]
    return config


app = make_celery(**config_from_env(os.environ))
app.set_current()  # the worker's app: `celery -A` finds it as `app`
