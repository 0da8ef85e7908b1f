"""The service's parts, each typed by its interface, in one container.

``composition.build_services`` fills it (for ``kontext serve``, the tests and the benchmarks); routers
read it from ``request.app.state.services`` through ``api.deps``. To add a service: give it a class (its
interface in ``*_base.py`` when it has more than one implementation), add a field here, build it in
``composition.build_services``, and call it from a router in ``service/api/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_studio.core.engine import Editor
from kontext_studio.service.accounts.accounts_base import AccountsBase
from kontext_studio.service.background import BackgroundService
from kontext_studio.service.jobs.dispatch_base import Dispatcher
from kontext_studio.service.jobs.edit_sessions import EditSessions
from kontext_studio.service.jobs.jobs_sql import JobStore
from kontext_studio.service.jobs.predictions import PredictionService
from kontext_studio.service.jobs.series import SeriesService
from kontext_studio.service.limits import LimiterFactory, memory_limiters
from kontext_studio.service.security.ssrf import AddressPolicy, is_public_address
from kontext_studio.service.storage.file_service import FileService
from kontext_studio.service.storage.signed_urls import UrlSigner
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.webhooks.webhooks_base import Notifier
from kontext_studio.settings import TRAINING_PRICE

if TYPE_CHECKING:
    from kontext_studio.service.jobs.worker import InProcessWorker
    from kontext_studio.service.models import ModelCatalogue
    from kontext_studio.service.security.remote_images import ImageFetcher
    from kontext_studio.service.training.service import TrainingService
    from kontext_studio.web.auth import StudioAuth


@dataclass
class ServiceOptions:
    """How this server behaves (every option of ``create_app``).

    Attributes:
        free: switch credit prices off (private installs).
        local_user_id: the user that requests from this machine without a key act as (single-user mode).
        local_port: the port the server is bound to; only ``localhost``/loopback Host headers on it get the
            single-user rights (None: any port, as in tests).
        start_worker: run the in-process worker and training runner (off in tests that drive jobs by hand).
        public_url: how clients reach this server (used in webhook payloads, which have no request).
        webhook_policy, allow_http_webhooks: which webhook targets are acceptable.
        rate_limit: submissions per user per minute (0: unlimited).
        limits_redis_url: count the rate limits (submits, free tools) in this Redis, shared by every API
            process (the installation's ``KONTEXT_BROKER_URL``); None: in this process's memory (one API
            process).
        limits_key_prefix: put before every rate-limit key in that Redis (``KONTEXT_BROKER_PREFIX``), so
            several installations share one Redis.
        max_active_per_user: waiting + running predictions a user may have at once.
        dispatcher: send jobs to Celery workers instead of the in-process worker.
        image_urls: accept image URLs in inputs through this SSRF-guarded fetcher (None: refused).
        training_dir: LoRA training's work folder.
        max_json_body: cap on JSON request bodies in bytes (413 above it, before parsing).
        prices: credit prices replacing the model catalogue's (``KONTEXT_PRICES``), by any model name.
        training_price: credits a LoRA training run holds at submit (``KONTEXT_TRAINING_PRICE``).
    """

    free: bool = False
    local_user_id: int | None = None
    local_port: int | None = None
    start_worker: bool = True
    public_url: str = "http://127.0.0.1:8000"
    webhook_policy: AddressPolicy = is_public_address
    allow_http_webhooks: bool = False
    rate_limit: int = 60
    limits_redis_url: str | None = None
    limits_key_prefix: str = ""
    max_active_per_user: int = 8
    dispatcher: Dispatcher | None = None
    image_urls: ImageFetcher | None = None
    training_dir: Path | None = None
    max_json_body: int = 64 * 2**20  # four 12 MB images inline as base64, with room
    prices: tuple[tuple[str, int], ...] = ()
    training_price: int = TRAINING_PRICE


@dataclass
class Services:
    """Everything the routers, the pages and the background threads use."""

    options: ServiceOptions
    accounts: AccountsBase
    jobs: JobStore
    storage: Storage
    signer: UrlSigner
    editor: Editor
    predictions: PredictionService
    files: FileService
    edit_sessions: EditSessions
    series: SeriesService
    models: ModelCatalogue
    training: TrainingService
    studio_auth: StudioAuth
    notifier: Notifier
    worker: InProcessWorker
    background: list[BackgroundService] = field(default_factory=list)
    limiters: LimiterFactory = memory_limiters  # builds each rate limit (in Redis with several API processes)
    extras: dict[str, Any] = field(default_factory=dict)  # parts other modules register by name

    @property
    def local_user_id(self) -> int | None:
        """The single-user mode's user (None: every request needs a key or a studio session)."""
        return self.options.local_user_id

    @property
    def free(self) -> bool:
        return self.options.free
