"""Acceleration profiles on the tiny model: fallbacks that say so, compile near-identical on the CPU, the recipe
records the profile and replay reproduces it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from kontext_studio.core.acceleration import (
    FAST,
    LOSSLESS,
    STOCK,
    AccelerationProfile,
    Accelerator,
    get_profile,
    step_cache_config,
)
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.types import EditRequest, Reference
from tests.conftest import noise_image

# Compiled and eager float32 kernels differ only by operation order: latents within this of each other.
COMPILE_LATENT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from diffusers import FluxKontextPipeline

    p = FluxKontextPipeline.from_pretrained(tiny_model_dir)
    p.set_progress_bar_config(disable=True)
    return p


def latents(pipe, steps: int = 4) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return pipe(image=noise_image(128, 128), prompt="a cat", height=128, width=128, max_area=128 * 128,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(1), output_type="latent",
                _auto_resize=False).images


def test_profiles_adapt_their_step_cache_to_the_family() -> None:
    assert get_profile("fast", "kontext").step_cache == "magcache"
    assert get_profile("fast", "qwen").step_cache == "first_block"
    assert get_profile("fast", "klein").step_cache is None  # four steps: nothing to skip safely
    assert get_profile("LOSSLESS") == LOSSLESS and get_profile("stock") == STOCK
    with pytest.raises(InvalidRequest, match="acceleration must be one of stock, lossless, fast"):
        get_profile("turbo")


def test_unsupported_parts_fall_back_and_say_so(pipe) -> None:  # type: ignore[no-untyped-def]
    acc = Accelerator(pipe.transformer, "cpu")
    report = acc.use(dataclasses.replace(FAST, attention="_flash_3"))
    assert report.attention == "native"
    text = " ".join(report.fallbacks)
    assert "needs an NVIDIA GPU" in text and "fp8 matmuls need an Ada, Hopper or Blackwell GPU" in text
    assert "skipped on the CPU" in text and not report.compiled and not report.fp8
    assert report.fused_qkv
    acc.use(STOCK)
    assert not getattr(pipe.transformer, "_kontext_fused", False)


def test_fused_qkv_is_exact_and_switching_back_restores_stock(pipe) -> None:  # type: ignore[no-untyped-def]
    reference = latents(pipe)
    acc = Accelerator(pipe.transformer, "cpu")
    acc.use(AccelerationProfile("fused", fuse_qkv=True))
    assert torch.equal(latents(pipe), reference)
    acc.use(STOCK)
    assert torch.equal(latents(pipe), reference)


def test_regional_compile_gives_near_identical_latents(pipe) -> None:  # type: ignore[no-untyped-def]
    reference = latents(pipe)
    acc = Accelerator(pipe.transformer, "cpu", compile_on_cpu=True)
    report = acc.use(LOSSLESS)
    assert report.compiled and report.fused_qkv and not report.fallbacks
    try:
        diff = (latents(pipe) - reference).abs().max().item()
    finally:
        acc.use(STOCK)
    assert diff < COMPILE_LATENT_TOLERANCE
    assert torch.equal(latents(pipe), reference)  # uncompiled again


@pytest.mark.parametrize("kind", ["magcache", "taylorseer", "first_block"])
def test_step_caches_switch_on_for_one_generation(pipe, kind: str) -> None:  # type: ignore[no-untyped-def]
    acc = Accelerator(pipe.transformer, "cpu")
    threshold = {"magcache": 0.06, "taylorseer": 4, "first_block": 0.08}[kind]
    with acc.step_cache(kind, threshold, 8):
        assert pipe.transformer.is_cache_enabled
        out = latents(pipe, 8)
    assert not pipe.transformer.is_cache_enabled
    assert torch.isfinite(out).all()
    with pytest.raises(InvalidRequest, match="step cache must be one of"):
        step_cache_config("deepcache", 0.1, 8)


def test_compile_cache_persists_under_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    from kontext_studio.bootstrap import compile_cache_dir

    folder = compile_cache_dir(tmp_path / "home")
    assert folder == tmp_path / "home" / "cache" / "torch_compile" and folder.is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir(tmp_path / "home") == tmp_path / "mine"


def test_recipe_records_the_profile_and_replay_reproduces_it(editor, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from kontext_studio.core import registry

    img = tmp_path / "ref.png"
    noise_image(128, 128, seed=4).save(img)
    first = editor.edit(EditRequest([Reference(img)], "make it snowy", tier="fast", seed=9, steps=8,
                                    pixel_lock="off"))
    profile = first.recipe["acceleration"]
    assert profile["profile"] == "fast" and profile["step_cache"] == "magcache"
    assert first.recipe["steps"] == 8 and first.recipe["draft"] is False
    saved = first.save(tmp_path / "out.png")
    # Even when the tier's profile changes later, replay runs the recorded one.
    monkeypatch.setitem(registry.TIERS, "fast", dataclasses.replace(registry.TIERS["fast"], acceleration="stock"))
    again, recipe = editor.replay(saved)
    assert again.recipe["acceleration"] == recipe["acceleration"] == profile
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))


def test_request_refuses_an_unknown_profile() -> None:
    with pytest.raises(InvalidRequest, match="acceleration must be one of"):
        EditRequest([Reference(noise_image(64, 64))], "x", acceleration="warp").validate()


def test_a_step_cache_needs_two_blocks_and_says_so() -> None:
    from diffusers import FluxTransformer2DModel

    one_block = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=0,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8])
    report = Accelerator(one_block, "cpu").use(FAST)
    assert report.step_cache is None
    assert any("at least two transformer blocks" in note for note in report.fallbacks)


@pytest.fixture()
def own_pipe(pipe):  # type: ignore[no-untyped-def]
    """The tiny pipeline with a transformer of its own (these tests change its weights)."""
    import copy

    from diffusers import FluxKontextPipeline

    p = FluxKontextPipeline(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture()
def fp8_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao's fp8 conversion runs only on an fp8 GPU; this stand-in stores each linear weight in float8 e4m3
    the way it does, so the switching around it can be checked on the CPU."""
    import torchao.quantization as tq

    def quantize(model: torch.nn.Module, _config: object) -> None:
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight = torch.nn.Parameter(m.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)

    monkeypatch.setattr(tq, "quantize_", quantize)


def _on_hopper(transformer: torch.nn.Module) -> Accelerator:
    from kontext_studio.core.planner import GpuGeneration

    acc = Accelerator(transformer, "cpu")
    acc.generation = GpuGeneration.HOPPER
    return acc


def test_an_edit_without_fp8_gets_the_full_precision_weights_back(own_pipe, fp8_stand_in) -> None:  # type: ignore[no-untyped-def]
    # dev and fast share one warm model: a dev edit after a fast one must not run on fp8 weights.
    reference = latents(own_pipe)
    acc = _on_hopper(own_pipe.transformer)
    assert acc.use(AccelerationProfile("fp8", fp8=True)).fp8
    assert torch.float8_e4m3fn in {p.dtype for p in own_pipe.transformer.parameters()}
    report = acc.use(STOCK)
    assert not report.fp8 and not report.fallbacks
    assert torch.float8_e4m3fn not in {p.dtype for p in own_pipe.transformer.parameters()}
    assert torch.equal(latents(own_pipe), reference)
    assert acc.use(AccelerationProfile("fp8 again", fp8=True)).fp8  # and on again from the same copy


def test_fp8_that_cannot_be_undone_says_so(own_pipe, fp8_stand_in,  # type: ignore[no-untyped-def]
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import kontext_studio.core.acceleration as acceleration

    monkeypatch.setattr(acceleration, "available_system_memory", lambda: 1024)
    acc = _on_hopper(own_pipe.transformer)
    report = acc.use(AccelerationProfile("fp8", fp8=True))
    assert report.fp8 and "does not fit in free system memory" in " ".join(report.fallbacks)
    report = acc.use(STOCK)
    assert report.fp8 and "stay on until the model reloads" in " ".join(report.fallbacks)
