"""Training on a base transformer stored in float8 (``base_precision="fp8"``), on the tiny model (CPU).

What must hold for the option to be worth having: the frozen block Linear weights really are float8 in
memory, the adapter stays float32 and still learns the synthetic rule about as well as on a full-precision
base, checkpoints resume on the same curve, and the saved adapter is an ordinary float32 file that loads
in diffusers and through ``kontext edit --lora``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.lora import read_lora
from kontext_studio.training.base_precision import FP8, parameter_bytes
from kontext_studio.training.config import TrainConfig
from kontext_studio.training.dataset import DatasetReport
from kontext_studio.training.trainer import ADAPTER, LoraTrainer, StepInfo, TrainingError, load_pipeline

STEPS = 100


def _config(**kw: Any) -> TrainConfig:
    # the same recipe as tests/training/test_trainer.py, with checkpointing, which fp8 storage requires
    base: dict[str, Any] = {"steps": STEPS, "rank": 8, "alpha": 4.0, "learning_rate": 3e-3, "resolution": 128,
                            "validate_every": STEPS, "validation_pairs": 2, "validation_steps": 8,
                            "checkpoint_every": 0, "max_sequence_length": 32, "gradient_checkpointing": True,
                            "base_precision": "fp8"}
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, dataset: DatasetReport, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One fp8 run and the same run on the model's own precision (float32 on the CPU), for comparison."""
    results: dict[str, Any] = {}
    for precision in ("model", "fp8"):
        pipe, described, _ = load_pipeline(str(tiny_model_dir))
        before = parameter_bytes(pipe.transformer)
        events: list[str] = []
        trainer = LoraTrainer(pipe, _config(base_precision=precision), tmp_path_factory.mktemp(precision),
                              base_model=described, on_event=events.append)
        results[precision] = {"trainer": trainer, "result": trainer.train(dataset), "bytes_before": before,
                              "events": events}
    return results


def _base_linears(transformer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The frozen Linear layers of the blocks that fp8 storage is meant to shrink (not norms, not LoRA)."""
    return {n: m for n, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and "transformer_blocks." in n and "norm" not in n and "lora_" not in n}


def test_frozen_block_linears_are_float8_in_memory(runs: Any) -> None:
    t = runs["fp8"]["trainer"].transformer
    linears = _base_linears(t)
    assert len(linears) > 10
    assert {m.weight.dtype for m in linears.values()} == {FP8}
    fp8 = sum(p.numel() for p in t.parameters() if p.dtype == FP8)
    lora = {n: p for n, p in t.named_parameters() if "lora_" in n}
    base_numel = sum(p.numel() for n, p in t.named_parameters() if "lora_" not in n)
    base_bytes = parameter_bytes(t) - sum(p.numel() * p.element_size() for p in lora.values())
    # the tiny model loads in float32: every float8 parameter saves 3 of its 4 bytes, nothing else changes
    assert base_bytes == runs["fp8"]["bytes_before"] - 3 * fp8
    assert fp8 > 0.4 * base_numel  # the tiny model's embedders are large for its size; at 12 B it is 72 %
    assert base_bytes < 0.7 * 4 * base_numel
    assert sum(m.weight.numel() for m in linears.values()) == sum(
        m.weight.numel() * m.weight.element_size() for m in linears.values())  # one byte each: half of bf16
    # the full-precision run keeps its float32 base
    assert runs["model"]["trainer"].transformer.dtype == torch.float32
    assert not any(p.dtype == FP8 for p in runs["model"]["trainer"].transformer.parameters())
    assert any("stored in fp8" in e for e in runs["fp8"]["events"])


def test_norms_embedders_and_the_adapter_keep_full_precision(runs: Any) -> None:
    t = runs["fp8"]["trainer"].transformer
    for name, p in t.named_parameters():
        if "lora_" in name or "norm" in name or "embed" in name or name.startswith("proj_out."):
            assert p.dtype == torch.float32, name


def test_lora_params_stay_float32_and_receive_gradients(runs: Any, dataset: DatasetReport) -> None:
    trainer = runs["fp8"]["trainer"]
    t = trainer.transformer
    params = {n: p for n, p in t.named_parameters() if "lora_" in n and ADAPTER in n}
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params.values())
    items = trainer._encode(dataset.usable[:1])
    t.train()
    loss = trainer.loss_for(items, torch.Generator().manual_seed(7))
    loss.backward()
    try:
        for name, p in params.items():
            assert p.grad is not None and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        # nothing frozen picked up a gradient through the casting hooks
        assert all(p.grad is None for n, p in t.named_parameters() if n not in params)
    finally:
        t.zero_grad(set_to_none=True)


def test_loss_falls_with_an_fp8_base_as_with_a_full_precision_one(runs: Any) -> None:
    fp8, full = runs["fp8"]["result"], runs["model"]["result"]
    assert fp8.status == "completed" and len(fp8.losses) == STEPS
    first, last = np.mean(fp8.losses[:20]), np.mean(fp8.losses[-20:])
    assert last < 0.8 * first, (first, last)
    # float8 rounds the base weights: the curve may differ a little, not in kind
    assert abs(last - np.mean(full.losses[-20:])) < 0.05 * last
    base, final = fp8.validations[0], fp8.validations[-1]
    assert final["latent_distance"] < 0.9 * base["latent_distance"], (base, final)


def test_the_saved_adapter_is_float32_and_loads_at_full_precision(runs: Any, tiny_model_dir: Path,
                                                                   dataset: DatasetReport, tmp_path: Path) -> None:
    from diffusers import FluxKontextPipeline
    from peft.utils import get_peft_model_state_dict
    from typer.testing import CliRunner

    from kontext_studio.cli.main import app

    trainer, result = runs["fp8"]["trainer"], runs["fp8"]["result"]
    with safe_open(str(result.lora_path), framework="pt") as f:
        recipe = json.loads(f.metadata()["kontext_studio"])
    assert {v.dtype for v in load_file(str(result.lora_path)).values()} == {torch.float32}
    assert recipe["config"]["base_precision"] == "fp8"
    _state, info = read_lora(result.lora_path)
    assert (info.format.value, info.rank, info.alpha) == ("diffusers", 8, 4.0)

    # diffusers loads it into an ordinary float32 pipeline with exactly the trained values
    pipe = FluxKontextPipeline.from_pretrained(str(tiny_model_dir))
    pipe.load_lora_weights(str(result.lora_path), adapter_name="loaded")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="loaded")
    trained = get_peft_model_state_dict(trainer.transformer, adapter_name=ADAPTER)
    assert loaded.keys() == trained.keys() and len(loaded) > 10
    for key, value in loaded.items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value, trained[key].float(), rtol=0, atol=0)

    src = dataset.usable[0].pair.source
    args = ["edit", str(src), "invert the colours", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "5",
            "--geometry", "native", "--pixel-lock", "off", "--no-check", "--json"]
    plain = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "plain.png")])
    with_lora = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "lora.png"), "--lora",
                                         f"{result.lora_path}:1.0"])
    assert plain.exit_code == 0, plain.output
    assert with_lora.exit_code == 0, with_lora.output
    with Image.open(tmp_path / "plain.png") as pa, Image.open(tmp_path / "lora.png") as pb:
        assert np.abs(np.asarray(pa, np.int16) - np.asarray(pb, np.int16)).max() > 8


def test_resume_under_fp8_continues_the_same_loss_curve(tiny_model_dir: Path, dataset: DatasetReport,
                                                        tmp_path: Path) -> None:
    cfg = {"steps": 8, "checkpoint_every": 4, "validate_every": 0}
    pipe, described, _ = load_pipeline(str(tiny_model_dir))
    straight = LoraTrainer(pipe, _config(**cfg), tmp_path / "straight", base_model=described).train(dataset)

    def interrupt(info: StepInfo) -> None:
        if info.step == 4:
            raise KeyboardInterrupt

    pipe, described, _ = load_pipeline(str(tiny_model_dir))
    first = LoraTrainer(pipe, _config(**cfg), tmp_path / "split", base_model=described,
                        on_step=interrupt).train(dataset)
    assert (first.status, first.step) == ("interrupted", 4)
    saved = load_file(str(first.checkpoint / "adapter.safetensors"))
    assert saved and {v.dtype for v in saved.values()} == {torch.float32}
    pipe, described, _ = load_pipeline(str(tiny_model_dir))
    second = LoraTrainer(pipe, _config(**cfg), tmp_path / "split", base_model=described).train(
        dataset, resume=tmp_path / "split")
    assert second.status == "completed" and second.step == 8
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-5)


def test_a_transformer_already_stored_in_fp8_is_refused_for_another_run(runs: Any, dataset: DatasetReport,
                                                                         tmp_path: Path) -> None:
    trainer = runs["fp8"]["trainer"]
    again = LoraTrainer(trainer.pipe, _config(steps=1, validate_every=0), tmp_path, base_model="tiny")
    with pytest.raises(TrainingError, match="load the pipeline again"):
        again.train(dataset)


def test_fp8_needs_gradient_checkpointing_and_a_known_value() -> None:
    with pytest.raises(InvalidRequest, match="gradient_checkpointing") as exc:
        TrainConfig(base_precision="fp8").validate()
    assert exc.value.field == "base_precision"
    with pytest.raises(InvalidRequest, match="base_precision must be one of"):
        TrainConfig(base_precision="int4", gradient_checkpointing=True).validate()
    cfg = TrainConfig.from_dict({"base_precision": "fp8", "gradient_checkpointing": True})
    assert cfg.base_precision == "fp8" and TrainConfig().base_precision == "model"
