"""Real photographs for the tool tests (scikit-image's and matplotlib's sample data) and the model folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_studio.tools.models import MODELS, models_dir, status


def photo(name: str) -> Image.Image:
    """A sample photograph shipped with scikit-image (astronaut, coffee, chelsea, brick...)."""
    from skimage import data

    arr = getattr(data, name)()
    img = Image.fromarray(arr)
    return img.convert("RGB")


def grace_hopper() -> Image.Image:
    """matplotlib's sample portrait (a real photograph of a face)."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")


def jpeg_bytes(img: Image.Image, quality: int = 95, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="session")
def tool_models() -> Path:
    """The installed tool models (``make install`` puts them there); model tests skip, saying so, without them."""
    missing = [k for k, ok in status().items() if not ok]
    if missing:
        pytest.skip(f"tool models not installed ({', '.join(missing)}): run make install "
                    f"({', '.join(MODELS[k].source for k in missing)})")
    return models_dir()
