"""Starting the service on one machine: database, secret, local admin, app, uvicorn."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import KontextError
from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.service.db import make_engine, make_session_factory, upgrade
from kontext_studio.settings import Settings

LOCAL_ADMIN = "admin@localhost"


class UnsafeBind(KontextError):
    """Serving on a public address with no account to authenticate against."""

    code = "unsafe_bind"
    exit_code = 2


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_secret(settings: Settings) -> bytes:
    """``KONTEXT_SECRET``, or a random secret created once in the data folder (mode 0600)."""
    if settings.secret:
        return settings.secret.encode()
    path = settings.home / "secret.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


@dataclass
class Prepared:
    engine: Any
    accounts: SqlAccounts
    local_user_id: int | None
    new_key: str | None


def prepare(settings: Settings, host: str) -> Prepared:
    """Migrate the database; in local mode make sure the local admin exists (and hand out its first key).

    Raises:
        UnsafeBind: a non-loopback host while no user exists to authenticate.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.service_database_url)
    upgrade(engine)
    accounts = SqlAccounts(make_session_factory(engine), free=settings.free)
    if not is_loopback(host):
        if accounts.get_user_by_email(LOCAL_ADMIN) is None and not _any_user(engine):
            raise UnsafeBind(
                f"refusing to serve on {host} with no accounts: anyone on the network could spend credits. "
                "Create a user and key first (kontext admin create-user you@example.com --admin), or serve on "
                "127.0.0.1 for single-user mode."
            )
        return Prepared(engine, accounts, None, None)
    admin = accounts.get_user_by_email(LOCAL_ADMIN)
    new_key = None
    if admin is None:
        admin = accounts.create_user(LOCAL_ADMIN, "Local admin", is_admin=True)
        if settings.local_credits and not settings.free:
            accounts.grant(admin.id, settings.local_credits)
        new_key, _ = accounts.create_api_key(admin.id, "first key")
    return Prepared(engine, accounts, admin.id, new_key)


def _any_user(engine: Any) -> bool:
    from sqlalchemy import select

    from kontext_studio.service.db import User

    with make_session_factory(engine)() as s:
        return s.scalar(select(User.id).limit(1)) is not None


def build_app(settings: Settings, host: str, editor_factory: Callable[[], Editor],
              say: Callable[[str], None] = print, port: int | None = None) -> Any:
    """The FastAPI app for ``kontext serve`` (``port``: the bound port; only loopback host names on it get
    the single-user rights)."""
    from kontext_studio.bootstrap import install_content_credentials
    from kontext_studio.service.app import build_app as app_over
    from kontext_studio.service.composition import build_services
    from kontext_studio.service.container import ServiceOptions
    from kontext_studio.service.inputs import MAX_IMAGE_BYTES
    from kontext_studio.service.security.remote_images import ImageFetcher
    from kontext_studio.service.storage.storage_local import LocalStorage

    prepared = prepare(settings, host)
    install_content_credentials(settings)  # every output the service stores is signed by this installation
    if prepared.new_key:
        say(f"created the local admin ({LOCAL_ADMIN}) with {settings.local_credits} credits; its API key "
            f"(shown once): {prepared.new_key}")
    if prepared.local_user_id is not None:
        say("single-user mode: requests from this machine without a key act as the local admin")
    dispatcher = None
    if settings.broker_url:
        from kontext_studio.service.jobs.dispatch_celery import CeleryDispatcher

        dispatcher = CeleryDispatcher(celery_app(settings))
        say(f"jobs go to Celery workers through {settings.broker_url} (start them with `kontext worker`)")
    options = ServiceOptions(free=settings.free, local_user_id=prepared.local_user_id, local_port=port,
                             dispatcher=dispatcher, limits_redis_url=settings.broker_url,
                             limits_key_prefix=settings.broker_prefix,
                             image_urls=ImageFetcher(MAX_IMAGE_BYTES) if settings.allow_image_urls else None,
                             training_dir=Path(settings.home) / "training", prices=settings.prices,
                             training_price=settings.training_price)
    app = app_over(build_services(prepared.engine, LocalStorage(storage_root(settings)), editor_factory(),
                                  server_secret(settings), options))
    app.state.weights_status = lambda: missing_weights(settings)  # the studio's banner
    return app


def missing_weights(settings: Settings) -> str | None:
    """None when the Kontext [dev] weights are where the settings point, else how to get them (no download)."""
    from kontext_studio.bootstrap import model_source
    from kontext_studio.core.weights import locate

    try:
        status = locate(model_source(settings), settings.hf_token, download=False)
    except Exception as exc:  # a broken cache must not take the page down; say what happened instead
        return f"the weights could not be checked: {exc.__class__.__name__}: {exc}"
    return None if status.found else status.message


def storage_root(settings: Settings) -> Path:
    """Inputs and outputs; with Celery workers it must be a folder every machine shares."""
    return Path(settings.home) / "data"


def celery_app(settings: Settings) -> Any:
    """The Celery app of this installation (API and workers build it the same way)."""
    from kontext_studio.service.jobs.dispatch_celery import make_celery

    if not settings.broker_url:
        raise UnsafeBind("set KONTEXT_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run Celery workers")
    return make_celery(settings.broker_url, settings.service_database_url, storage_root=str(storage_root(settings)),
                       key_prefix=settings.broker_prefix)
