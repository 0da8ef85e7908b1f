"""LoRA files on the tiny Kontext model: alpha round trip, hot swap, format detection and conversion, bad files.

Reference pixels come from the stock diffusers ``FluxKontextPipeline`` with an adapter held in memory: with
one 128x128 reference (already a preferred size at the tiny model's resolution) and geometry ``native``, the
engine is bit-identical to the stock call for the same seed, so a LoRA loaded from a file must reproduce the
in-memory adapter's pixels exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from kontext_studio.core.errors import LoraError
from kontext_studio.core.lora import (
    LoraFormat,
    LoraInfo,
    check_fit,
    detect_format,
    file_sha256,
    read_lora,
    save_lora,
    to_diffusers,
)
from kontext_studio.core.types import EditRequest, LoraSpec, Reference
from tests.conftest import noise_image

SIZE = 128
STEPS = 2
SEED = 1234
GUIDANCE = 2.5
PROMPT = "turn the wall blue"
# A LoRA changes these noise-like pictures by tens of levels; bit-identical runs differ by 0.
VISIBLE = 8
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]

# peft warns each time a second adapter joins a model; the backend keeps several loaded on purpose.


# -- helpers ------------------------------------------------------------------------------------------
def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


def _request(image: Image.Image, loras: list[LoraSpec] | None = None) -> EditRequest:
    return EditRequest(references=[Reference(image)], instruction=PROMPT, seed=SEED, steps=STEPS,
                       guidance=GUIDANCE, geometry="native", loras=list(loras or []))


def _stock(pipe: Any, image: Image.Image) -> Image.Image:
    """The stock diffusers call the engine reproduces for one reference at a preferred size."""
    out = pipe(image=image, prompt=PROMPT, height=SIZE, width=SIZE, max_area=SIZE * SIZE, _auto_resize=False,
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(SEED))
    return out.images[0]


def _add_adapter(transformer: Any, r: int, alpha: float, targets: list[str], seed: int) -> None:
    """A non-zero PEFT adapter (both A and B random), seeded so every test gets different weights."""
    from peft import LoraConfig

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))


def _info(state: dict[str, torch.Tensor], name: str, metadata: dict[str, Any] | None = None) -> LoraInfo:
    return LoraInfo(path=f"/loras/{name}", format=detect_format(state, metadata), sha256="0" * 64,
                    num_tensors=len(state), rank=None, alpha=None, metadata=metadata or {},
                    sample_keys=sorted(state)[:5])


def _ab(prefix: str, in_f: int, out_f: int, r: int, gen: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, a: str = "lora_A", b: str = "lora_B") -> dict[str, torch.Tensor]:
    if gen is None:
        return {f"{prefix}.{a}.weight": torch.zeros(r, in_f, dtype=dtype),
                f"{prefix}.{b}.weight": torch.zeros(out_f, r, dtype=dtype)}
    return {f"{prefix}.{a}.weight": torch.randn(r, in_f, generator=gen, dtype=dtype) * 0.2,
            f"{prefix}.{b}.weight": torch.randn(out_f, r, generator=gen, dtype=dtype) * 0.2}


def _delta(state: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    """The weight change a converted (alpha-free, diffusers-layout) LoRA applies to ``module``."""
    return state[f"transformer.{module}.lora_B.weight"] @ state[f"transformer.{module}.lora_A.weight"]


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref_image() -> Image.Image:
    return noise_image(SIZE, SIZE, seed=5)


@pytest.fixture()
def stock_pipe(tiny_model_dir: Path) -> Any:
    """A fresh stock diffusers pipeline on the tiny model's weights (its own copy, free to get adapters)."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def baseline(backend: Any, ref_image: Image.Image) -> Image.Image:
    """The engine's edit without any LoRA (shared by the tests that compare against it)."""
    from kontext_studio.core.engine import Editor

    backend.loras.apply([])
    return Editor({"diffusers": backend}).edit(_request(ref_image)).image


# -- 0. the premise of the pixel comparisons ----------------------------------------------------------
def test_engine_is_bit_identical_to_stock_pipeline_without_lora(baseline: Image.Image, stock_pipe: Any,
                                                                 ref_image: Image.Image) -> None:
    assert baseline.size == (SIZE, SIZE)
    assert _max_diff(baseline, _stock(stock_pipe, ref_image)) == 0


# -- 1. save / load round trip keeps alpha ------------------------------------------------------------
def test_saved_lora_keeps_alpha_and_reproduces_the_in_memory_adapter(
    editor: Any, stock_pipe: Any, ref_image: Image.Image, baseline: Image.Image, tmp_path: Path
) -> None:
    from peft.utils import get_peft_model_state_dict

    transformer = stock_pipe.transformer
    _add_adapter(transformer, r=4, alpha=16, targets=ATTN, seed=101)
    expected = _stock(stock_pipe, ref_image)
    assert _max_diff(expected, baseline) > VISIBLE  # the adapter matters at all

    path = save_lora(transformer, tmp_path / "alpha16.safetensors", extra_metadata={"recipe": {"steps": 500}})
    _state, info = read_lora(path)
    assert (info.format, info.rank, info.alpha) == (LoraFormat.DIFFUSERS, 4, 16.0)
    assert info.metadata["kontext_studio"] == {"recipe": {"steps": 500}}

    result = editor.edit(_request(ref_image, [LoraSpec(str(path), 1.0)]))
    assert _max_diff(result.image, expected) <= 1
    [entry] = result.recipe["loras"]
    assert entry["format"] == "diffusers"
    assert (entry["rank"], entry["alpha"], entry["weight"]) == (4, 16.0, 1.0)
    assert entry["sha256"] == file_sha256(path)

    # Negative control: the same tensors without the adapter config are scaled by 1 instead of 16 / 4.
    raw = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    no_alpha = tmp_path / "no_alpha.safetensors"
    save_file(raw, str(no_alpha))
    _state, info_raw = read_lora(no_alpha)
    assert (info_raw.format, info_raw.rank, info_raw.alpha) == (LoraFormat.DIFFUSERS, 4, None)
    wrong = editor.edit(_request(ref_image, [LoraSpec(str(no_alpha), 1.0)]))
    assert _max_diff(wrong.image, expected) > VISIBLE
    assert _max_diff(wrong.image, baseline) > VISIBLE


# -- 2. hot swap ---------------------------------------------------------------------------------------
def test_lora_hot_swaps_without_reloading_the_model(editor: Any, backend: Any, stock_pipe: Any,
                                                   ref_image: Image.Image, baseline: Image.Image,
                                                   tmp_path: Path) -> None:
    _add_adapter(stock_pipe.transformer, r=4, alpha=8, targets=ATTN, seed=202)
    path = str(save_lora(stock_pipe.transformer, tmp_path / "swap.safetensors"))
    loads_before = backend.loras.load_count

    plain = baseline  # the same edit without LoRA, run earlier on this warm backend
    styled = editor.edit(_request(ref_image, [LoraSpec(path, 1.0)])).image
    assert _max_diff(styled, plain) > VISIBLE
    again = editor.edit(_request(ref_image)).image
    assert _max_diff(again, plain) == 0  # base weights untouched: the adapter is switched off, not fused
    half = editor.edit(_request(ref_image, [LoraSpec(path, 0.5)]))
    assert _max_diff(half.image, plain) > 0
    assert _max_diff(half.image, styled) > 0
    assert half.recipe["loras"][0]["weight"] == 0.5
    styled_again = editor.edit(_request(ref_image, [LoraSpec(path, 1.0)])).image
    assert _max_diff(styled_again, styled) == 0

    assert backend.stats["loads"] == 1  # the pipeline was never reloaded
    assert backend.loras.load_count - loads_before == 1  # the file was read into an adapter once


# -- 3. format detection -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "metadata", "expected"),
    [
        (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
          "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"], None, LoraFormat.DIFFUSERS),
        (["transformer_blocks.0.attn.to_q.lora_A.weight", "transformer_blocks.0.attn.to_q.lora_B.weight"],
         None, LoraFormat.PEFT),
        (["transformer_blocks.0.attn.to_q.lora_A.default.weight"], None, LoraFormat.PEFT),
        (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
          "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight",
          "lora_unet_double_blocks_0_img_attn_qkv.alpha"], None, LoraFormat.KOHYA),
        (["diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight",
          "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight"], None, LoraFormat.COMFY),
        (["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"], None, LoraFormat.COMFY),
        (["base_model.model.double_blocks.0.img_attn.qkv.lora_A.weight",
          "base_model.model.double_blocks.0.img_attn.qkv.lora_B.weight"], None, LoraFormat.FAL),
        (["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"],
         {"software": {"name": "ai-toolkit", "version": "0.1.0"}, "format": "pt"}, LoraFormat.AI_TOOLKIT),
        (["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"],
         {"format": "pt", "trainer": "something else"}, LoraFormat.DIFFUSERS),
        (["double_blocks.0.processor.qkv_lora1.down.weight"], None, LoraFormat.XLABS),
        (["model.diffusion_model.input_blocks.0.weight", "first_stage_model.decoder.conv_in.bias"], None,
         LoraFormat.UNKNOWN),
        ([], None, LoraFormat.UNKNOWN),
    ],
    ids=["diffusers", "peft", "peft-named-adapter", "kohya", "comfy-down-up", "comfy-bfl-A-B", "fal",
         "ai-toolkit", "diffusers-other-metadata", "xlabs", "unknown-checkpoint", "no-keys"],
)
def test_detect_format(keys: list[str], metadata: dict[str, Any] | None, expected: LoraFormat) -> None:
    assert detect_format(keys, metadata) is expected


def test_peft_file_gets_the_component_prefix(stock_pipe: Any) -> None:
    from peft.utils import get_peft_model_state_dict

    _add_adapter(stock_pipe.transformer, r=2, alpha=2, targets=["to_q"], seed=303)
    raw = get_peft_model_state_dict(stock_pipe.transformer)
    converted = to_diffusers(raw, _info(raw, "peft.safetensors"))
    assert set(converted) == {f"transformer.{k}" for k in raw}
    check_fit(converted, {"transformer": stock_pipe.transformer, "text_encoder": stock_pipe.text_encoder},
              _info(raw, "peft.safetensors"))


# -- 4. kohya / ComfyUI (lora_down / lora_up) ---------------------------------------------------------
# BFL module name → diffusers module of the tiny transformer (block 0 of each kind, plus the embedders).
BFL_TO_DIFFUSERS = {
    "double_blocks.0.img_attn.proj": "transformer_blocks.0.attn.to_out.0",
    "double_blocks.0.img_mlp.0": "transformer_blocks.0.ff.net.0.proj",
    "double_blocks.0.img_mlp.2": "transformer_blocks.0.ff.net.2",
    "double_blocks.0.img_mod.lin": "transformer_blocks.0.norm1.linear",
    "double_blocks.0.txt_attn.proj": "transformer_blocks.0.attn.to_add_out",
    "double_blocks.0.txt_mlp.0": "transformer_blocks.0.ff_context.net.0.proj",
    "double_blocks.0.txt_mlp.2": "transformer_blocks.0.ff_context.net.2",
    "double_blocks.0.txt_mod.lin": "transformer_blocks.0.norm1_context.linear",
    "single_blocks.0.linear2": "single_transformer_blocks.0.proj_out",
    "single_blocks.0.modulation.lin": "single_transformer_blocks.0.norm.linear",
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
}
# Fused BFL projections → the diffusers projections they are split into (in this order).
BFL_FUSED = {
    "double_blocks.0.img_attn.qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"],
    "double_blocks.0.txt_attn.qkv": ["transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
                                     "transformer_blocks.0.attn.add_v_proj"],
}


def _kohya_set(transformer: Any, r: int, alpha: float, seed: int, comfy: bool = False) -> dict[str, torch.Tensor]:
    """lora_down / lora_up / alpha tensors for every module above, sized from the tiny transformer."""
    modules = dict(transformer.named_modules())
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    shapes = {bfl: (modules[m].in_features, modules[m].out_features) for bfl, m in BFL_TO_DIFFUSERS.items()}
    for bfl, parts in BFL_FUSED.items():
        shapes[bfl] = (modules[parts[0]].in_features, sum(modules[p].out_features for p in parts))
    for bfl, (in_f, out_f) in shapes.items():
        name = f"diffusion_model.{bfl}" if comfy else "lora_unet_" + bfl.replace(".", "_")
        state |= _ab(name, in_f, out_f, r, gen, a="lora_down", b="lora_up")
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return state


def test_kohya_and_comfy_files_convert_to_diffusers_keys_that_fit(stock_pipe: Any) -> None:
    transformer = stock_pipe.transformer
    r, alpha = 4, 8.0
    kohya = _kohya_set(transformer, r, alpha, seed=404)
    info = _info(kohya, "kohya.safetensors")
    assert info.format is LoraFormat.KOHYA
    converted = to_diffusers(kohya, info)
    assert len(kohya) == 3 * (len(BFL_TO_DIFFUSERS) + len(BFL_FUSED))  # the file itself was not consumed

    targets = list(BFL_TO_DIFFUSERS.values()) + [p for parts in BFL_FUSED.values() for p in parts]
    assert set(converted) == {f"transformer.{m}.lora_{ab}.weight" for m in targets for ab in "AB"}
    scale = alpha / r  # kohya's alpha is folded into the converted weights
    for bfl, module in BFL_TO_DIFFUSERS.items():
        name = "lora_unet_" + bfl.replace(".", "_")
        want = kohya[f"{name}.lora_up.weight"] @ kohya[f"{name}.lora_down.weight"] * scale
        torch.testing.assert_close(_delta(converted, module), want, msg=f"{bfl} -> {module}")
    for bfl, parts in BFL_FUSED.items():
        name = "lora_unet_" + bfl.replace(".", "_")
        want = kohya[f"{name}.lora_up.weight"] @ kohya[f"{name}.lora_down.weight"] * scale
        for module, rows in zip(parts, want.chunk(3, dim=0), strict=True):  # q, k, v in the fused order
            torch.testing.assert_close(_delta(converted, module), rows, msg=f"{bfl} -> {module}")

    check_fit(converted, {"transformer": transformer, "text_encoder": stock_pipe.text_encoder}, info)

    comfy = _kohya_set(transformer, r, alpha, seed=404, comfy=True)
    comfy_info = _info(comfy, "comfy.safetensors")
    assert comfy_info.format is LoraFormat.COMFY
    from_comfy = to_diffusers(comfy, comfy_info)
    assert set(from_comfy) == set(converted)
    for key, value in converted.items():
        torch.testing.assert_close(from_comfy[key], value, msg=key)


def test_kohya_file_through_the_engine_matches_the_equivalent_adapter(
    editor: Any, stock_pipe: Any, ref_image: Image.Image, baseline: Image.Image, tmp_path: Path
) -> None:
    """A kohya qkv / proj / linear2 LoRA with alpha 2, rank 4 is exactly a PEFT adapter with lora_alpha 2."""
    transformer = stock_pipe.transformer
    r, alpha = 4, 2.0
    gen = torch.Generator().manual_seed(505)
    qkv = _ab("lora_unet_double_blocks_0_img_attn_qkv", 32, 96, r, gen, a="lora_down", b="lora_up")
    proj = _ab("lora_unet_double_blocks_0_img_attn_proj", 32, 32, r, gen, a="lora_down", b="lora_up")
    lin2 = _ab("lora_unet_single_blocks_0_linear2", 160, 32, r, gen, a="lora_down", b="lora_up")
    kohya = qkv | proj | lin2
    for name in ("double_blocks_0_img_attn_qkv", "double_blocks_0_img_attn_proj", "single_blocks_0_linear2"):
        kohya[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "kohya_alpha2.safetensors"
    save_file(kohya, str(path))
    _state, info = read_lora(path)
    assert (info.format, info.rank, info.alpha) == (LoraFormat.KOHYA, 4, 2.0)

    q, k, v = "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v"
    out, single = "transformer_blocks.0.attn.to_out.0", "single_transformer_blocks.0.proj_out"
    _add_adapter(transformer, r=r, alpha=alpha, targets=[q, k, v, out, single], seed=0)
    modules = dict(transformer.named_modules())
    assert {n for n, m in modules.items() if hasattr(m, "lora_A")} == {q, k, v, out, single}
    up_q, up_k, up_v = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].chunk(3, dim=0)
    weights = {
        q: ("double_blocks_0_img_attn_qkv", up_q), k: ("double_blocks_0_img_attn_qkv", up_k),
        v: ("double_blocks_0_img_attn_qkv", up_v), out: ("double_blocks_0_img_attn_proj", None),
        single: ("single_blocks_0_linear2", None),
    }
    with torch.no_grad():
        for module, (name, up) in weights.items():
            modules[module].lora_A["default"].weight.copy_(kohya[f"lora_unet_{name}.lora_down.weight"])
            modules[module].lora_B["default"].weight.copy_(
                kohya[f"lora_unet_{name}.lora_up.weight"] if up is None else up)
    expected = _stock(stock_pipe, ref_image)
    assert _max_diff(expected, baseline) > VISIBLE

    result = editor.edit(_request(ref_image, [LoraSpec(str(path))]))
    assert _max_diff(result.image, expected) <= 1
    assert result.recipe["loras"][0]["format"] == "kohya"


def test_full_kohya_set_with_embedders_loads_and_changes_the_edit(
    editor: Any, stock_pipe: Any, ref_image: Image.Image, baseline: Image.Image, tmp_path: Path
) -> None:
    path = tmp_path / "kohya_full.safetensors"
    save_file(_kohya_set(stock_pipe.transformer, r=4, alpha=4.0, seed=606), str(path))
    result = editor.edit(_request(ref_image, [LoraSpec(str(path))]))
    assert _max_diff(result.image, baseline) > VISIBLE
    assert result.recipe["loras"][0]["format"] == "kohya"


def test_kohya_single_block_linear1_cannot_be_split_for_a_small_model() -> None:
    """diffusers' kohya converter hard-codes the 12B split of linear1 (3 x 3072 + 12288): a clear LoraError."""
    state = _ab("lora_unet_single_blocks_0_linear1", 32, 3 * 32 + 128, 4, torch.Generator().manual_seed(1),
                a="lora_down", b="lora_up")
    with pytest.raises(LoraError, match=r"looks like a kohya LoRA but diffusers could not convert it"):
        to_diffusers(state, _info(state, "linear1.safetensors"))


# -- 5. fal (base_model.model.<BFL module>.lora_A/B) --------------------------------------------------
def _fal_set(hidden: int, mlp: int, double: int, single: int, out_channels: int, prefix: str = "base_model.model",
             gen: torch.Generator | None = None, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A rank-1 fal Kontext LoRA covering every block (zeros unless ``gen`` is given)."""
    state: dict[str, torch.Tensor] = {}
    for i in range(double):
        for side in ("img", "txt"):
            p = f"{prefix}.double_blocks.{i}.{side}"
            state |= _ab(f"{p}_mod.lin", hidden, 6 * hidden, 1, gen, dtype)
            state |= _ab(f"{p}_attn.qkv", hidden, 3 * hidden, 1, gen, dtype)
            state |= _ab(f"{p}_attn.proj", hidden, hidden, 1, gen, dtype)
            state |= _ab(f"{p}_mlp.0", hidden, mlp, 1, gen, dtype)
            state |= _ab(f"{p}_mlp.2", mlp, hidden, 1, gen, dtype)
    for i in range(single):
        p = f"{prefix}.single_blocks.{i}"
        state |= _ab(f"{p}.modulation.lin", hidden, 3 * hidden, 1, gen, dtype)
        state |= _ab(f"{p}.linear1", hidden, 3 * hidden + mlp, 1, gen, dtype)
        state |= _ab(f"{p}.linear2", hidden + mlp, hidden, 1, gen, dtype)
    state |= _ab(f"{prefix}.final_layer.linear", hidden, out_channels, 1, gen, dtype)
    return state


@pytest.fixture(scope="module")
def full_size_transformer() -> Any:
    """FLUX.1 Kontext [dev]'s transformer at full size on the meta device (shapes only, no memory)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(num_layers=19, num_single_layers=38, attention_head_dim=128,
                                      num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                      guidance_embeds=True, axes_dims_rope=[16, 56, 56], in_channels=64)


@pytest.mark.parametrize("prefix", ["base_model.model", "diffusion_model"], ids=["fal", "comfy-bfl-layout"])
def test_full_size_fal_file_converts_and_fits_the_12b_transformer(full_size_transformer: Any, prefix: str) -> None:
    hidden, mlp = 3072, 12288
    state = _fal_set(hidden, mlp, double=19, single=38, out_channels=64, prefix=prefix)
    info = _info(state, "fal_kontext.safetensors")
    assert info.format is (LoraFormat.FAL if prefix == "base_model.model" else LoraFormat.COMFY)
    converted = to_diffusers(state, info)

    # 14 modules per double block and 6 per single block (fused qkv / linear1 split), plus proj_out.
    assert len(converted) == 2 * (19 * 14 + 38 * 6 + 1)
    assert all(k.startswith("transformer.") for k in converted)
    shapes = {k: tuple(v.shape) for k, v in converted.items()}
    assert shapes["transformer.transformer_blocks.18.attn.add_v_proj.lora_B.weight"] == (hidden, 1)
    assert shapes["transformer.transformer_blocks.0.norm1.linear.lora_B.weight"] == (6 * hidden, 1)
    assert shapes["transformer.single_transformer_blocks.37.attn.to_q.lora_B.weight"] == (hidden, 1)
    assert shapes["transformer.single_transformer_blocks.37.proj_mlp.lora_B.weight"] == (mlp, 1)
    assert shapes["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"] == (1, hidden + mlp)
    assert shapes["transformer.proj_out.lora_B.weight"] == (64, 1)
    check_fit(converted, {"transformer": full_size_transformer}, info)

    # The fit check is not vacuous: one tensor with the wrong width is refused by name.
    key = "transformer.single_transformer_blocks.5.proj_out.lora_A.weight"
    broken = dict(converted, **{key: torch.zeros(1, hidden, dtype=torch.bfloat16)})
    expected = rf"\({info.format.value} format.*{re.escape(key)} \(expects {hidden + mlp} inputs"
    with pytest.raises(LoraError, match=expected):
        check_fit(broken, {"transformer": full_size_transformer}, info)


def test_fal_file_sized_for_a_small_model_is_refused_as_fal() -> None:
    state = _fal_set(32, 128, double=1, single=1, out_channels=64, gen=torch.Generator().manual_seed(7),
                     dtype=torch.float32)
    with pytest.raises(LoraError) as caught:
        to_diffusers(state, _info(state, "fal_tiny.safetensors"))
    message = str(caught.value)
    assert "fal_tiny.safetensors looks like a fal LoRA" in message
    assert "double_blocks.1" in message  # the key the converter looked for and did not find
    assert caught.value.field == "loras"


# -- 6. bad files ---------------------------------------------------------------------------------------
def _write_bad(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.safetensors"
    gen = torch.Generator().manual_seed(9)
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-safetensors":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "no-lora-keys":
        save_file({"model.diffusion_model.input_blocks.0.weight": torch.zeros(4, 4)}, str(path))
    elif kind == "wrong-width":
        state = _ab("transformer.transformer_blocks.0.attn.to_q", 64, 32, 4, gen)
        state |= _ab("transformer.transformer_blocks.0.attn.to_k", 32, 32, 4, gen)
        save_file(state, str(path))
    elif kind == "rank-mismatch":
        state = _ab("transformer.transformer_blocks.0.attn.to_q", 32, 32, 4, gen)
        state["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.zeros(32, 8)
        save_file(state, str(path))
    elif kind == "more-blocks":
        save_file(_ab("transformer.transformer_blocks.7.attn.to_q", 32, 32, 4, gen), str(path))
    elif kind == "kohya-wrong-width":
        save_file(_ab("lora_unet_double_blocks_0_img_attn_proj", 64, 32, 4, gen, a="lora_down", b="lora_up"),
                  str(path))
    elif kind == "fal-for-small-model":
        save_file(_fal_set(32, 128, double=1, single=1, out_channels=64, gen=gen, dtype=torch.float32), str(path))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD_FILES = {
    "missing": r"file not found: .*missing\.safetensors",
    "empty": r"empty\.safetensors is empty \(0 bytes\)",
    "not-safetensors": r"not-safetensors\.safetensors is not a readable \.safetensors LoRA",
    "no-lora-keys": r"no-lora-keys\.safetensors has no LoRA keys of a known layout.*"
                    r"model\.diffusion_model\.input_blocks\.0\.weight",
    "wrong-width": r"\(diffusers format, 4 tensors\) does not fit this model: transformer\.transformer_blocks\.0\."
                   r"attn\.to_q\.lora_A\.weight \(expects 32 inputs, the file has 64\)\. Was it trained",
    "rank-mismatch": r"transformer\.transformer_blocks\.0\.attn\.to_q \(lora_A has rank 4 but lora_B has rank 8\)",
    "more-blocks": r"\(diffusers format, 2 tensors\) does not fit.*transformer\.transformer_blocks\.7\.attn\.to_q\."
                   r"lora_A\.weight \(the model has no module 'transformer_blocks\.7\.attn\.to_q'\)",
    "kohya-wrong-width": r"\(kohya format, 2 tensors\) does not fit.*transformer\.transformer_blocks\.0\.attn\."
                         r"to_out\.0\.lora_A\.weight \(expects 32 inputs, the file has 64\)",
    "fal-for-small-model": r"looks like a fal LoRA but diffusers could not convert it.*double_blocks\.1",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_lora_file_is_refused_with_the_reason(editor: Any, ref_image: Image.Image, tmp_path: Path,
                                                  kind: str) -> None:
    path = _write_bad(kind, tmp_path)
    with pytest.raises(LoraError, match=BAD_FILES[kind]) as caught:
        editor.edit(_request(ref_image, [LoraSpec(str(path))]))
    assert caught.value.field == "loras"
    assert caught.value.code == "invalid_lora"


def test_failed_lora_leaves_the_pipeline_as_it_was(editor: Any, backend: Any, stock_pipe: Any,
                                                   ref_image: Image.Image, baseline: Image.Image,
                                                   tmp_path: Path) -> None:
    # Loading the good file switches its layers on; the bad file after it in the same request then fails.
    _add_adapter(stock_pipe.transformer, r=4, alpha=4, targets=["proj_mlp", "norm.linear"], seed=707)
    good = str(save_lora(stock_pipe.transformer, tmp_path / "good.safetensors"))
    for kind in BAD_FILES:
        bad = str(_write_bad(kind, tmp_path))
        for loras in ([LoraSpec(bad)], [LoraSpec(good), LoraSpec(bad)]):
            with pytest.raises(LoraError):
                editor.edit(_request(ref_image, loras))
    assert any(info.path == good for info in backend.loras.loaded.values())  # it did load, then got switched off
    after = editor.edit(_request(ref_image)).image
    assert _max_diff(after, baseline) == 0
