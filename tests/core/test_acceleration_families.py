"""Acceleration profiles on every local family's tiny model (FLUX.2 [klein], FLUX.2 [dev], Qwen-Image-Edit):
what each profile turns on or names as a fallback, exact pixels where the maths is the same, compiled output
within tolerance, the family's step cache, and the recipe's profile replayed to the same pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kontext_studio.core.acceleration import STOCK, Accelerator
from kontext_studio.core.engine import Editor
from tests.conftest import noise_image
from tests.core import test_families
from tests.core.test_families import FAMILIES, px, run

# The same warm tiny backends and editor fixtures as the family tests (module-scoped: this module's own).
backends = test_families.backends
editor = test_families.editor

# Compiled and eager float32 kernels differ only by operation order; on the decoded 8-bit pixels that is at most
# one level (and almost always none).
COMPILE_PIXEL_TOLERANCE = 1
STEP_CACHE = {"klein": None, "flux2": "taylorseer", "qwen": "first_block"}


@pytest.fixture()
def ref(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    noise_image(96, 96, seed=3).save(path)
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lossless_keeps_the_stock_pixels_and_names_what_it_could_not_use(family: str, editor: Editor,
                                                                          ref: Path) -> None:
    stock = run(editor, family, [ref], acceleration="stock")
    lossless = run(editor, family, [ref], acceleration="lossless")
    report = lossless.recipe["acceleration"]
    assert report["profile"] == "lossless" and stock.recipe["acceleration"]["profile"] == "stock"
    fallbacks = " ".join(report["fallbacks"])
    assert "skipped on the CPU" in fallbacks and not report["compiled"]
    if family == "qwen":  # Qwen-Image's attention reads separate projections
        assert not report["fused_qkv"] and "no projections to fuse" in fallbacks
    else:
        assert report["fused_qkv"]
    assert np.array_equal(px(stock.image), px(lossless.image))
    assert not any("ran stock" in w for w in lossless.warnings)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_regional_compile_is_near_identical(family: str, editor: Editor, backends: dict[str, Any],
                                            ref: Path) -> None:
    backend = backends[family]
    stock = run(editor, family, [ref], acceleration="stock")
    saved = backend.accelerator
    backend.accelerator = Accelerator(backend.pipe.transformer, "cpu", compile_on_cpu=True)
    try:
        compiled = run(editor, family, [ref], acceleration="lossless")
        assert compiled.recipe["acceleration"]["compiled"]
        diff = np.abs(px(compiled.image).astype(int) - px(stock.image).astype(int)).max()
        assert diff <= COMPILE_PIXEL_TOLERANCE
        back = run(editor, family, [ref], acceleration="stock")  # uncompiled and unfused again
    finally:
        backend.accelerator.use(STOCK)
        backend.accelerator = saved
    assert np.array_equal(px(back.image), px(stock.image))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fast_runs_the_family_step_cache_and_replay_reproduces_it(family: str, editor: Editor, ref: Path,
                                                                   tmp_path: Path) -> None:
    first = run(editor, family, [ref], acceleration="fast", steps=8)
    report = first.recipe["acceleration"]
    assert report["profile"] == "fast" and report["step_cache"] == STEP_CACHE[family]
    assert first.recipe["step_cache"] == STEP_CACHE[family]
    assert "fp8 matmuls need an Ada, Hopper or Blackwell GPU" in " ".join(report["fallbacks"])
    if family == "flux2":  # TaylorSeer forecasts every step after its warm-up between refreshes: not stock
        stock = run(editor, family, [ref], acceleration="stock", steps=8)
        assert not np.array_equal(px(stock.image), px(first.image))
    saved = first.save(tmp_path / "out.png")
    again, recipe = editor.replay(saved)
    assert recipe["acceleration"]["profile"] == "fast"
    assert again.recipe["acceleration"] == report
    assert np.array_equal(px(Image.open(saved)), px(again.image))
