"""The kohya / ComfyUI export gives the same weight update as the diffusers adapter it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kontext_studio.core.lora import LoraFormat, check_fit, read_lora, to_diffusers
from kontext_studio.training.config import TrainConfig
from kontext_studio.training.dataset import check_dataset
from kontext_studio.training.export import export_kohya
from kontext_studio.training.synthetic import make_pairs
from kontext_studio.training.trainer import LoraTrainer, load_pipeline

# Double-block projections (q/k/v fused into qkv on export) and the single blocks' output projection.
# diffusers' kohya converter splits a single block's fused linear1 only at the 12B model's sizes, so the
# tiny model's test leaves q/k/v of the single blocks out.
TARGETS = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
           "attn.to_out.0", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.2",
           "ff_context.net.0.proj", "single_transformer_blocks.0.proj_out"]


def _delta(state: dict[str, torch.Tensor], module: str, scale: float = 1.0) -> torch.Tensor:
    return state[f"transformer.{module}.lora_B.weight"].float() @ state[f"transformer.{module}.lora_A.weight"].float() \
        * scale


def test_kohya_export_converts_back_to_the_same_update(tiny_model_dir: Path, tmp_path: Path) -> None:
    report = check_dataset(make_pairs(tmp_path / "ds", 3, size=(128, 128)), min_side=64)
    pipe, described, _ = load_pipeline(str(tiny_model_dir))
    cfg = TrainConfig(steps=3, rank=4, alpha=2.0, learning_rate=1e-2, resolution=128, validate_every=0,
                      validation_pairs=0, checkpoint_every=0, max_sequence_length=32, target_modules=TARGETS)
    result = LoraTrainer(pipe, cfg, tmp_path / "run", base_model=described, export_kohya=True).train(report)
    assert result.kohya_path is not None
    original, _ = read_lora(result.lora_path)
    kohya, info = read_lora(result.kohya_path)
    assert info.format is LoraFormat.KOHYA
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
    converted = to_diffusers(kohya, info)
    check_fit(converted, {"transformer": pipe.transformer}, info)
    modules = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in original}
    for module in modules:  # every trained module comes back with the same update (alpha / rank folded in)
        torch.testing.assert_close(_delta(converted, module), _delta(original, module, 2.0 / 4), msg=module)
    # the fused qkv's untrained part (add_k_proj was not a target) comes back as a zero update
    assert float(_delta(converted, "transformer_blocks.0.attn.add_k_proj").abs().max()) == 0.0


def test_export_refuses_a_file_that_is_not_a_trained_adapter(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from kontext_studio.core.errors import LoraError

    path = tmp_path / "odd.safetensors"
    save_file({"text_encoder.x.lora_A.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(LoraError, match="not transformer"):
        export_kohya(path, tmp_path / "out.safetensors")


def test_full_size_kohya_export_fuses_every_block_exactly() -> None:
    """At the 12B model's sizes (19 double, 38 single blocks) the export goes through diffusers' kohya
    converter, single blocks' fused linear1 (q, k, v and the MLP input) included, and back unchanged."""
    from kontext_studio.core.lora import LoraInfo, detect_format
    from kontext_studio.training.export import to_kohya

    hidden, mlp = 3072, 12288
    gen = torch.Generator().manual_seed(0)

    def pair(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(2, n_in, generator=gen), torch.randn(n_out, 2, generator=gen)

    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for b in range(38):
        for p in ("attn.to_q", "attn.to_k", "attn.to_v"):
            deltas[f"single_transformer_blocks.{b}.{p}"] = pair(hidden, hidden)
        deltas[f"single_transformer_blocks.{b}.proj_mlp"] = pair(hidden, mlp)
        deltas[f"single_transformer_blocks.{b}.proj_out"] = pair(hidden + mlp, hidden)
    for b in range(19):
        for p in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                  "attn.to_out.0", "attn.to_add_out"):
            deltas[f"transformer_blocks.{b}.{p}"] = pair(hidden, hidden)
        deltas[f"transformer_blocks.{b}.ff.net.0.proj"] = pair(hidden, 4 * hidden)
        deltas[f"transformer_blocks.{b}.ff.net.2"] = pair(4 * hidden, hidden)
    kohya = to_kohya(deltas)
    info = LoraInfo("full.safetensors", detect_format(kohya), "0" * 64, len(kohya), None, None, {}, sorted(kohya)[:5])
    assert info.format is LoraFormat.KOHYA
    converted = to_diffusers(kohya, info)
    for module, (a, b) in deltas.items():  # compare the updates on a probe vector (no 12288 x 15360 products)
        x = torch.randn(a.shape[1], generator=gen)
        got = converted[f"transformer.{module}.lora_B.weight"] @ (converted[f"transformer.{module}.lora_A.weight"] @ x)
        torch.testing.assert_close(got, b @ (a @ x), msg=module)
