"""Shared fixtures: the tiny Kontext model (real diffusers classes, random weights) and test images.

Tests never reach a model hub: HF_HUB_OFFLINE is forced on and the tiny model is built locally once per
session from ``kontext_studio.testing``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny FLUX.1 Kontext pipeline folder (about 1 MB, random weights)."""
    from kontext_studio.bootstrap import quiet_third_party_logs
    from kontext_studio.testing.tiny_model import build_tiny_model

    quiet_third_party_logs()
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-kontext")


@pytest.fixture(scope="session")
def tiny_family_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Saved tiny pipelines of every family (kontext, klein, flux2, qwen), built once per session."""
    from kontext_studio.testing.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("family-models")
    dirs = {"kontext": tiny_model_dir}
    for family in ("klein", "flux2", "qwen"):
        dirs[family] = build_tiny_model(root / f"tiny-{family}", family=family)
    return dirs


@pytest.fixture(scope="session")
def backend(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """One warm diffusers backend on the tiny model, shared by the engine tests."""
    from kontext_studio.core.backends.diffusers_kontext import DiffusersKontextBackend
    from kontext_studio.core.weights import ModelSource

    b = DiffusersKontextBackend(ModelSource.parse(str(tiny_model_dir)))
    b.load()
    return b


@pytest.fixture()
def editor(backend):  # type: ignore[no-untyped-def]
    from kontext_studio.core.engine import Editor

    backend.loras.apply([])  # every test starts without adapters
    return Editor({"diffusers": backend})


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB test picture with structure (gradient + noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(1, width - 1), y * 255 / max(1, height - 1), np.full_like(x, 128)], -1)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype("uint8")
    return Image.fromarray(pixels, "RGB")


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    """A 1000x700 JPEG on disk."""
    p = tmp_path / "photo.jpg"
    noise_image(1000, 700).save(p, quality=92)
    return p


REDIS_URL = os.environ.get("KONTEXT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis(what: str) -> str:
    """The test Redis, or a skip (a failure when ``CI`` is set, naming ``what`` must run) saying why it is
    unusable."""
    from benchmarks.chaos_soak import redis_problem

    problem = redis_problem(REDIS_URL)
    if problem is not None:
        message = (f"Redis is not reachable at {REDIS_URL} ({problem}). Start it or point KONTEXT_TEST_REDIS_URL "
                   "at one.")
        if os.environ.get("CI"):
            pytest.fail(f"{message} CI is set, so {what} must run.", pytrace=False)
        pytest.skip(message)
    return REDIS_URL
