"""Composition: settings → backends → Editor. The faces (CLI, service) build their engine here."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kontext_studio.core.backends.base import EditBackend
from kontext_studio.core.catalogue import CATALOGUE, Catalogue, Family, ModelEntry
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import WeightsNotFound
from kontext_studio.core.fidelity_base import Fidelity
from kontext_studio.core.provenance.credentials import (
    ContentCredentials,
    CredentialConfig,
    use_content_credentials,
)
from kontext_studio.core.warm import WarmPool
from kontext_studio.core.weights import ModelSource
from kontext_studio.settings import Settings


def model_source(settings: Settings) -> ModelSource:
    """Where Kontext [dev] (and fast) weights are: ``KONTEXT_MODEL``, else ``KONTEXT_WEIGHTS`` for it."""
    where = settings.model or settings.weights_for("black-forest-labs/flux-kontext-dev", "flux-kontext-dev", "dev",
                                                   "kontext")
    return ModelSource.parse(where, base=settings.base_model)


def build_editor(settings: Settings, on_status: Callable[[str], None] | None = None) -> Editor:
    """An Editor whose local tiers run on the diffusers backend (built on first use).

    The hosted tiers (pro, max) run on the BFL API when ``BFL_API_KEY`` is set; otherwise selecting them
    raises TierNotConfigured naming what is missing.
    """

    def diffusers_backend() -> EditBackend:
        quiet_third_party_logs()
        compile_cache_dir(settings.home)
        from kontext_studio.core.backends.diffusers_kontext import DiffusersKontextBackend

        return DiffusersKontextBackend(
            model_source(settings),
            device=settings.device,
            dtype=settings.dtype,
            memory_mode=settings.memory_mode,
            token=settings.hf_token,
            allow_download=settings.allow_download,
            cache_dir=settings.home / "cache",
            on_status=on_status,
            precision=settings.precision,
            text_encoder_precision=settings.text_encoder_precision,
        )

    install_content_credentials(settings)
    factories: dict[str, Callable[[], EditBackend]] = {"diffusers": diffusers_backend}
    for entry in catalogue(settings).local():
        if entry.family is not Family.KONTEXT and family_available(settings, entry):
            factories[entry.key] = functools.partial(family_backend, settings, entry, on_status)
    if settings.bfl_api_key:
        factories["bfl_api"] = lambda: bfl_backend(settings)
    return Editor(backend_factories=factories, fidelity=build_fidelity(settings),
                  warm=WarmPool(max_models=settings.warm_models))


def catalogue(settings: Settings) -> Catalogue:
    """The model catalogue with the installation's prices (``KONTEXT_PRICES``)."""
    return CATALOGUE.with_prices(dict(settings.prices)) if settings.prices else CATALOGUE


def family_source(settings: Settings, entry: ModelEntry) -> ModelSource:
    """Where ``entry``'s weights are: ``KONTEXT_WEIGHTS`` for it, else its hub repo (a single file's other parts:
    ``KONTEXT_BASES`` for it, else the hub repo)."""
    names = (entry.name, entry.short_name, entry.key)
    where = settings.weights_for(*names)
    return ModelSource.parse(where or entry.weights.hub, base=settings.base_for(*names) or entry.weights.hub)


def family_available(settings: Settings, entry: ModelEntry) -> bool:
    """Whether this installation offers ``entry``: its weights are configured (``KONTEXT_WEIGHTS``), already on
    this machine, or may be downloaded on first use. Nothing is loaded or downloaded here."""
    from kontext_studio.core.weights import locate

    if settings.weights_for(entry.name, entry.short_name, entry.key) or settings.allow_download:
        return True
    return locate(family_source(settings, entry), settings.hf_token, download=False).found


def family_backend(settings: Settings, entry: ModelEntry,
                   on_status: Callable[[str], None] | None = None) -> EditBackend:
    """The local backend of a non-Kontext catalogue model (built on first use, loads on first edit)."""
    quiet_third_party_logs()
    from kontext_studio.core.backends.diffusers_family import DiffusersFamilyBackend

    cls: type[DiffusersFamilyBackend]
    if entry.family is Family.KLEIN:
        from kontext_studio.core.backends.diffusers_flux2 import Flux2KleinBackend as cls
    elif entry.family is Family.FLUX2:
        from kontext_studio.core.backends.diffusers_flux2 import Flux2DevBackend as cls
    elif entry.family is Family.QWEN:
        from kontext_studio.core.backends.diffusers_qwen import QwenImageEditBackend as cls
    else:
        raise ValueError(f"no local backend for the {entry.family.value} family")
    return cls(entry, family_source(settings, entry), device=settings.device, dtype=settings.dtype,
               memory_mode=settings.memory_mode, token=settings.hf_token, allow_download=settings.allow_download,
               cache_dir=settings.home / "cache", on_status=on_status, precision=settings.precision,
               text_encoder_precision=settings.text_encoder_precision)


def content_credentials(settings: Settings) -> ContentCredentials:
    """The installation's content-credentials signer: an organisation's chain when ``signing_cert`` and
    ``signing_key`` are set, else the local CA kept in ``home/credentials``. One instance per configuration
    and process, so its loaded chain and C2PA signer are reused."""
    return _credentials_for(CredentialConfig(folder=Path(settings.home) / "credentials",
                                             cert_chain=settings.signing_cert, key=settings.signing_key))


@functools.lru_cache(maxsize=8)
def _credentials_for(config: CredentialConfig) -> ContentCredentials:
    return ContentCredentials(config)


def install_content_credentials(settings: Settings) -> ContentCredentials:
    """Make the installation's signer sign every output this process writes, creating the local CA on first
    start (certificates only: nothing heavy is imported).

    Raises:
        CredentialsError: a bring-your-own certificate or key is missing or cannot sign.
    """
    credentials = content_credentials(settings)
    try:
        credentials.identity()
    except ImportError:  # no `cryptography`: outputs go unsigned and say so
        logging.getLogger(__name__).warning("content credentials are off: the cryptography package is missing")
    use_content_credentials(credentials)
    return credentials


def bfl_backend(settings: Settings) -> EditBackend:
    """The BFL API backend for the pro and max tiers (needs ``settings.bfl_api_key``).

    Raises:
        TierNotConfigured: no key.
    """
    from kontext_studio.core.backends.bfl_api import BflApiBackend, BflConfig

    return BflApiBackend(BflConfig(api_key=settings.bfl_api_key or "", base_url=settings.bfl_base_url,
                                   timeout=settings.bfl_timeout))


def build_fidelity(settings: Settings) -> Fidelity | None:
    """The analysis package's fidelity analyser, or None when its extras (dlib, OpenCV) are missing.

    Only looks the extras up: OpenCV and dlib are imported by the first check that needs them.
    """
    if importlib.util.find_spec("cv2") is None or importlib.util.find_spec("dlib") is None:
        return None
    from kontext_studio.analysis.fidelity import AnalysisFidelity

    return AnalysisFidelity(face_model=settings.face_model)


def check_weights(settings: Settings, entry: ModelEntry | None = None) -> None:
    """Fail early when the local weights are missing and cannot be fetched (no model is loaded).

    A folder or file that does not exist cannot be downloaded; a hub repo can when downloads are allowed.

    Args:
        settings: where the weights are configured.
        entry: the catalogue model (default: Kontext [dev]).

    Raises:
        WeightsNotFound: with how to get the weights.
    """
    from kontext_studio.core.weights import locate

    kontext = entry is None or entry.family is Family.KONTEXT
    source = model_source(settings) if kontext else family_source(settings, entry)  # type: ignore[arg-type]
    status = locate(source, settings.hf_token, download=False)
    if not status.found and (source.kind != "hub" or not settings.allow_download):
        if kontext:
            raise WeightsNotFound(status.message)
        assert entry is not None
        lic = entry.licence
        raise WeightsNotFound(
            f"{entry.title} weights not found: {status.message.split('. To get')[0]}. To get them: "
            f"{'' if lic.commercial else 'accept the licence on the model page, set HF_TOKEN, '}allow downloads "
            f"(about {entry.weights.download_gb:g} GB from https://huggingface.co/{entry.weights.hub}), or point "
            f"--weights / KONTEXT_WEIGHTS at a local folder. Licence: {lic.name} "
            f"({'commercial use allowed' if lic.commercial else 'non-commercial'}).")


def load_engine_libraries() -> None:
    """Import torch and diffusers (seconds on a CPU), with their console chatter routed to logging."""
    quiet_third_party_logs()
    import kontext_studio.core.backends.diffusers_kontext  # noqa: F401


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """Settings with the non-None CLI overrides applied."""
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


# Libraries that install their own console handler: their records are handed to the application's logging
# (the CLI writes them to its log file; ``kontext -v`` shows them) instead of the terminal.
_OWN_HANDLERS = ("torch", "transformers", "diffusers")
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "BITSANDBYTES_NOWELCOME": "1"}


def compile_cache_dir(home: Path) -> Path:
    """Point torch.compile's caches (Inductor, Triton) at ``<home>/cache/torch_compile`` so that a restart
    reuses the compiled graphs instead of compiling again; an explicitly set ``TORCHINDUCTOR_CACHE_DIR`` wins.

    Returns:
        The folder in use.
    """
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        folder = Path(home).expanduser() / "cache" / "torch_compile"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def quiet_third_party_logs() -> None:
    """Keep torch/transformers/diffusers import chatter (optional torchvision, kernel notices, progress bars)
    off the console; the faces draw their own progress.

    When the application has configured logging (a root handler, as the CLI does), the libraries' records
    go there at their own level; otherwise only their errors are kept.
    """
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    configured = bool(logging.getLogger().handlers)
    if not configured:
        # torchao (optional quantization) logs its missing GPU kernels at import on CPU-only machines.
        logging.getLogger("torchao").setLevel(logging.ERROR)
    import diffusers.utils.logging as diffusers_logging
    import torch  # noqa: F401  (installs torch's console handler, taken back below before anything logs)
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    if not configured:
        transformers_logging.set_verbosity_error()
        diffusers_logging.set_verbosity_error()
        logging.getLogger("torch").setLevel(logging.ERROR)
        return
    for name in _OWN_HANDLERS:
        lib = logging.getLogger(name)
        for handler in list(lib.handlers):
            lib.removeHandler(handler)
        lib.propagate = True
    transformers_logging.set_verbosity_info()
    diffusers_logging.set_verbosity_info()
