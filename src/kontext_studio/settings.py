"""The one place that reads the environment. Everything else takes configuration through constructors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
# Credits a service LoRA training run holds: a run takes an accelerator for tens of minutes, many edits' worth.
TRAINING_PRICE = 50


@dataclass(frozen=True)
class Settings:
    """Installation-wide configuration.

    Attributes:
        model: hub repo id, diffusers folder or single-file checkpoint (``KONTEXT_MODEL``).
        base_model: for a single-file checkpoint, where the other parts come from (``KONTEXT_BASE_MODEL``).
        hf_token: token for the gated FLUX.1 Kontext [dev] repo (``HF_TOKEN``).
        home: data folder for caches and outputs (``KONTEXT_HOME``, default ``~/.kontext``).
        device, dtype, memory_mode: ``auto`` unless set (``KONTEXT_DEVICE``, ``KONTEXT_DTYPE``,
            ``KONTEXT_MEMORY_MODE``).
        allow_download: whether missing hub weights may be downloaded (``KONTEXT_ALLOW_DOWNLOAD``; on by
            default, off when ``HF_HUB_OFFLINE`` is set).
        bfl_api_key: key for the hosted Pro/Max tiers (``BFL_API_KEY``).
        bfl_base_url: BFL's API, or another Kontext Studio server's BFL-compatible routes (``BFL_BASE_URL``,
            default ``https://api.bfl.ai``).
        bfl_timeout: seconds to wait for a hosted edit once BFL accepted it (``BFL_TIMEOUT``, default 600).
        face_model: an ArcFace-class ONNX model for identity scores instead of dlib's
            (``KONTEXT_FACE_MODEL``).
        database_url: the service database (``KONTEXT_DATABASE_URL``; default SQLite in ``home``).
        broker_url: Redis URL for Celery workers (``KONTEXT_BROKER_URL``); unset: in-process worker. The API
            processes also count the rate limits there, so every process behind a load balancer shares them.
        broker_prefix: prefix of every Redis key this installation uses, broker and rate limits
            (``KONTEXT_BROKER_PREFIX``), so several installations share one Redis.
        secret: server secret for signed URLs (``KONTEXT_SECRET``; default a random one kept in ``home``).
        free: switch credit prices off for a private install (``KONTEXT_FREE``).
        local_credits: credits granted to the local admin created on first start (``KONTEXT_LOCAL_CREDITS``).
        precision: transformer weight precision on load (``KONTEXT_PRECISION``: auto, bf16, fp8, int8, nf4;
            auto follows the memory planner on a GPU).
        text_encoder_precision: the same for the text encoders (``KONTEXT_TEXT_ENCODER_PRECISION``: auto, bf16,
            fp8, int8).
        allow_image_urls: accept ``https://`` image URLs in prediction inputs, fetched through the SSRF guard
            (``KONTEXT_ALLOW_IMAGE_URLS``; off by default).
        signing_cert, signing_key: an organisation's own certificate chain (PEM, signing certificate first)
            and key to sign content credentials with (``KONTEXT_SIGNING_CERT``, ``KONTEXT_SIGNING_KEY``);
            unset: the installation's own CA in ``home/credentials``, created on first start.
        tool_models: folder of the free tools' model files (``KONTEXT_TOOL_MODELS``; default
            ``<home>/tool-models``).
        weights: where each catalogue model's weights are, by model name or key (``KONTEXT_WEIGHTS``:
            ``klein-4b=/models/klein,qwen-edit=Qwen/Qwen-Image-Edit-2511``); Kontext [dev] uses ``model``.
        bases: for a model whose ``weights`` are a single transformer file (GGUF, fp8), the diffusers folder or
            hub repo with its other parts (``KONTEXT_BASES``: ``qwen-edit=/models/qwen-edit``; default: the
            model's hub repo); Kontext [dev] uses ``base_model``.
        warm_models: how many local models stay loaded at once (``KONTEXT_WARM_MODELS``; ``auto``/None: as
            many as free memory allows).
        prices: credit prices replacing the catalogue's (``KONTEXT_PRICES``: ``klein-4b=2,qwen-edit=5``).
        training_price: credits a LoRA training run on the service holds at submit, captured when it
            succeeds and released when it fails or is canceled (``KONTEXT_TRAINING_PRICE``).
    """

    model: str | None = None
    base_model: str | None = None
    hf_token: str | None = None
    home: Path = Path.home() / ".kontext"
    device: str = "auto"
    dtype: str = "auto"
    memory_mode: str = "auto"
    allow_download: bool = True
    bfl_api_key: str | None = None
    bfl_base_url: str = "https://api.bfl.ai"
    bfl_timeout: float = 600.0
    face_model: str | None = None
    database_url: str | None = None
    broker_url: str | None = None
    broker_prefix: str = ""
    secret: str | None = None
    free: bool = False
    local_credits: int = 1000
    allow_image_urls: bool = False
    signing_cert: Path | None = None
    signing_key: Path | None = None
    tool_models: Path | None = None
    precision: str = "auto"
    text_encoder_precision: str = "auto"
    weights: tuple[tuple[str, str], ...] = ()
    bases: tuple[tuple[str, str], ...] = ()
    warm_models: int | None = None
    prices: tuple[tuple[str, int], ...] = ()
    training_price: int = TRAINING_PRICE

    def weights_for(self, *names: str) -> str | None:
        """The weights location configured for a model (any of its names), if any."""
        table = {k.strip().lower(): v for k, v in self.weights}
        return next((table[n.lower()] for n in names if n.lower() in table), None)

    def base_for(self, *names: str) -> str | None:
        """The base (other parts of a single-file model) configured for a model (any of its names), if any."""
        table = {k.strip().lower(): v for k, v in self.bases}
        return next((table[n.lower()] for n in names if n.lower() in table), None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        offline = e.get("HF_HUB_OFFLINE", "").lower() in _TRUE
        return cls(
            model=e.get("KONTEXT_MODEL") or None,
            base_model=e.get("KONTEXT_BASE_MODEL") or None,
            hf_token=e.get("HF_TOKEN") or e.get("HUGGING_FACE_HUB_TOKEN") or None,
            home=Path(e.get("KONTEXT_HOME", "~/.kontext")).expanduser(),
            device=e.get("KONTEXT_DEVICE", "auto"),
            dtype=e.get("KONTEXT_DTYPE", "auto"),
            memory_mode=e.get("KONTEXT_MEMORY_MODE", "auto"),
            allow_download=not offline and e.get("KONTEXT_ALLOW_DOWNLOAD", "1").lower() in _TRUE,
            bfl_api_key=e.get("BFL_API_KEY") or None,
            bfl_base_url=e.get("BFL_BASE_URL") or "https://api.bfl.ai",
            bfl_timeout=float(e.get("BFL_TIMEOUT") or 600),
            face_model=e.get("KONTEXT_FACE_MODEL") or None,
            database_url=e.get("KONTEXT_DATABASE_URL") or None,
            broker_url=e.get("KONTEXT_BROKER_URL") or None,
            broker_prefix=e.get("KONTEXT_BROKER_PREFIX") or "",
            secret=e.get("KONTEXT_SECRET") or None,
            free=e.get("KONTEXT_FREE", "").lower() in _TRUE,
            local_credits=int(e.get("KONTEXT_LOCAL_CREDITS", "1000")),
            allow_image_urls=e.get("KONTEXT_ALLOW_IMAGE_URLS", "").lower() in _TRUE,
            signing_cert=Path(e["KONTEXT_SIGNING_CERT"]).expanduser() if e.get("KONTEXT_SIGNING_CERT") else None,
            signing_key=Path(e["KONTEXT_SIGNING_KEY"]).expanduser() if e.get("KONTEXT_SIGNING_KEY") else None,
            tool_models=Path(e["KONTEXT_TOOL_MODELS"]).expanduser() if e.get("KONTEXT_TOOL_MODELS") else None,
            precision=e.get("KONTEXT_PRECISION", "auto").lower(),
            text_encoder_precision=e.get("KONTEXT_TEXT_ENCODER_PRECISION", "auto").lower(),
            weights=_pairs(e.get("KONTEXT_WEIGHTS", "")),
            bases=_pairs(e.get("KONTEXT_BASES", "")),
            warm_models=_count(e.get("KONTEXT_WARM_MODELS", "")),
            prices=tuple((k, int(v)) for k, v in _pairs(e.get("KONTEXT_PRICES", ""), "KONTEXT_PRICES")),
            training_price=_price(e.get("KONTEXT_TRAINING_PRICE", ""), "KONTEXT_TRAINING_PRICE"),
        )

    @property
    def service_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'kontext.db'}"


def _pairs(text: str, name: str = "KONTEXT_WEIGHTS") -> tuple[tuple[str, str], ...]:
    """``a=1,b=2`` → (("a", "1"), ("b", "2")); a part without ``=`` is refused, naming the variable."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{name}: expected model=value pairs separated by commas, got {part.strip()!r}")
        if name == "KONTEXT_PRICES" and not value.strip().isdigit():
            raise ValueError(f"{name}: the price of {key.strip()} must be a whole number of credits, got {value!r}")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def _price(text: str, name: str) -> int:
    text = text.strip()
    if text == "":
        return TRAINING_PRICE
    if not text.isdigit():
        raise ValueError(f"{name} must be a whole number of credits (0 or more), got {text!r}")
    return int(text)


def _count(text: str) -> int | None:
    text = text.strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"KONTEXT_WARM_MODELS must be auto or a whole number of models (1 or more), got {text!r}")
    return int(text)
