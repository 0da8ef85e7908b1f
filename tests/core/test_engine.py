"""The engine on the tiny Kontext model: stock parity, geometry modes, references, step cache, series.

Output size, aspect presets, seeds, progress, cancel and reference limits are checked on every backend by
the contract suite (tests/contract).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import TierNotConfigured
from kontext_studio.core.types import EditRequest, Reference
from tests.conftest import noise_image

STEPS = 3


def edit(editor: Editor, refs: list[Image.Image | Path | str], **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("steps", STEPS)
    kw.setdefault("seed", 11)
    return editor.edit(EditRequest(references=[Reference(r) for r in refs],
                                   instruction=str(kw.pop("instruction", "put her on a beach")), **kw))  # type: ignore[arg-type]


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def test_missing_seed_is_drawn_and_reported(editor: Editor) -> None:
    img = noise_image(128, 128)
    r = editor.edit(EditRequest([Reference(img)], "make it snowy", steps=2))
    again = edit(editor, [img], seed=r.seed, steps=2, instruction="make it snowy")
    assert r.recipe["seed"] == r.seed
    assert np.array_equal(pixels(r.image), pixels(again.image))


def test_one_reference_is_bit_identical_to_the_stock_pipeline(tiny_model_dir: Path, editor: Editor) -> None:
    from diffusers import FluxKontextPipeline

    stock = FluxKontextPipeline.from_pretrained(tiny_model_dir)
    stock.set_progress_bar_config(disable=True)
    img = noise_image(144, 112)  # already a preferred size at the tiny model's resolution: no resize anywhere
    expected = stock(image=img, prompt="put her on a beach", height=112, width=144, max_area=144 * 112,
                     _auto_resize=False, num_inference_steps=4, guidance_scale=2.5,
                     generator=torch.Generator().manual_seed(21)).images[0]
    ours = edit(editor, [img], seed=21, steps=4)
    assert ours.image.size == (144, 112)
    assert np.array_equal(pixels(expected), pixels(ours.image))
    assert ours.warnings == []


def test_native_geometry_returns_model_size(editor: Editor) -> None:
    r = edit(editor, [noise_image(1000, 700)], steps=1, geometry="native")
    assert list(r.image.size) == r.recipe["model_size"]
    assert "geometry native" in r.warnings[-1]


@pytest.mark.parametrize("strategy", ["stitch", "offset", "index"])
@pytest.mark.parametrize("count", [2, 3, 4])
def test_several_references_of_mixed_sizes(editor: Editor, strategy: str, count: int) -> None:
    sizes = [(200, 150), (90, 160), (128, 128), (300, 100)][:count]
    refs = [noise_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    r = edit(editor, refs, strategy=strategy, steps=2)
    assert r.image.size == sizes[0]  # the first reference sets the output size
    tokens = r.recipe["model"]  # model section present
    assert tokens["random_weights"] is True
    assert len(r.recipe["references"]) == count
    single = edit(editor, refs[:1], steps=2)
    assert not np.array_equal(pixels(r.image), pixels(single.image)), "the extra references must matter"


def test_strategies_lay_references_out_differently(editor: Editor) -> None:
    refs = [noise_image(128, 128, seed=1), noise_image(96, 176, seed=2)]
    outs = {s: edit(editor, refs, strategy=s, steps=2) for s in ("stitch", "offset", "index")}
    assert not np.array_equal(pixels(outs["offset"].image), pixels(outs["index"].image))
    assert not np.array_equal(pixels(outs["stitch"].image), pixels(outs["offset"].image))


def test_offset_positions_follow_each_width(backend) -> None:  # type: ignore[no-untyped-def]
    from kontext_studio.core.backends.base import PreparedReference
    from kontext_studio.core.multiref import Placement

    a = PreparedReference(noise_image(128, 128), "a", (128, 128), Placement(1, 0, 0))
    b = PreparedReference(noise_image(96, 176, seed=3), "b", (96, 176), Placement(1, 0, 8))
    tokens, ids = backend.encode_references([a, b], torch.float32)
    assert tokens.shape[1] == 8 * 8 + 6 * 11
    first, second = ids[:64], ids[64:]
    assert first[:, 2].max().item() == 7 and second[:, 2].min().item() == 8
    assert second[:, 2].max().item() == 13 and second[:, 1].max().item() == 10
    assert set(ids[:, 0].tolist()) == {1.0}


def test_remote_tiers_are_not_configured_yet(editor: Editor) -> None:
    with pytest.raises(TierNotConfigured, match="needs BFL_API_KEY"):
        edit(editor, [noise_image(64, 64)], tier="pro")


def test_timings_cover_each_phase(editor: Editor) -> None:
    r = edit(editor, [noise_image(300, 200)], steps=2)
    for phase in ("prompt", "reference_encode", "denoise", "decode", "postprocess", "total"):
        assert r.timings[phase] >= 0
    assert r.timings["total"] >= r.timings["denoise"]


def test_fast_tier_keeps_the_steps_and_runs_the_fast_profile(editor: Editor, backend) -> None:  # type: ignore[no-untyped-def]
    img = noise_image(128, 128)
    fast = editor.edit(EditRequest([Reference(img)], "x", tier="fast", seed=2, steps=6))
    assert fast.recipe["steps"] == 6 and fast.recipe["step_cache"] == "magcache"
    assert fast.recipe["acceleration"]["profile"] == "fast"
    # the cache is switched off again, so a dev edit with the same steps is the uncached computation
    assert not backend.pipe.transformer.is_cache_enabled
    dev = edit(editor, [img], seed=2, steps=6, instruction="x")
    assert dev.recipe["step_cache"] is None and dev.recipe["acceleration"]["profile"] == "stock"
    draft = editor.edit(EditRequest([Reference(img)], "x", tier="fast", seed=2, draft=True))
    assert draft.recipe["steps"] == 14 and draft.recipe["draft"] is True


def test_series_encodes_the_reference_once(editor: Editor, backend) -> None:  # type: ignore[no-untyped-def]
    before = dict(backend.stats)
    ref = noise_image(333, 517, seed=9)  # new content: not in the cache yet
    res = editor.series(EditRequest([Reference(ref)], "placeholder", steps=2, seed=4),
                        ["on a beach", "in the snow", "on a beach", "at night"])
    assert backend.stats["reference_encodes"] - before["reference_encodes"] == 1
    assert backend.stats["prompt_encodes"] - before["prompt_encodes"] <= 3  # the repeated prompt is reused
    assert [r.image.size for r in res.results] == [(333, 517)] * 4
    assert {r.seed for r in res.results} == {4}
    # same scene twice, same seed → same pixels; different scenes differ
    assert np.array_equal(pixels(res.results[0].image), pixels(res.results[2].image))
    assert not np.array_equal(pixels(res.results[0].image), pixels(res.results[1].image))
    assert res.contact_sheet.width > 320 and res.contact_sheet.height > 320


def test_series_equals_single_edits(editor: Editor) -> None:
    ref = noise_image(200, 150, seed=5)
    res = editor.series(EditRequest([Reference(ref)], "x", steps=2, seed=8), ["in the snow", "at night"])
    single = edit(editor, [ref], seed=8, steps=2, instruction="at night")
    assert np.array_equal(pixels(res.results[1].image), pixels(single.image))
