"""The memory estimate counts the real full-size transformer (built on the meta device, no memory used)."""

from __future__ import annotations

import pytest
import torch

from kontext_studio.training.base_precision import FP8, store_base_in_fp8
from kontext_studio.training.config import DEFAULT_TARGET_MODULES
from kontext_studio.training.memory import GiB, build_meta_transformer, estimate

TARGETS = list(DEFAULT_TARGET_MODULES)


def test_full_size_estimate_counts_the_12b_transformer_and_the_rank_16_adapter() -> None:
    t = build_meta_transformer()
    plain = estimate(t, 512, 16, TARGETS, gradient_checkpointing=False)
    ckpt = estimate(t, 512, 16, TARGETS, gradient_checkpointing=True)
    assert 11.8e9 < plain.base_params < 12.0e9  # FLUX.1's 11.9 B transformer
    # rank 16 on a 3072-wide q projection: 16 x (3072 + 3072) parameters; the whole adapter is tens of millions
    assert 30e6 < plain.lora_params < 100e6
    assert ckpt.activations < plain.activations / 10
    assert plain.base_weights == 2 * plain.base_params and plain.upcast_weights == 0
    assert ckpt.total > 24e9  # bf16 weights alone leave no room on a 24 GB card
    bigger = estimate(t, 768, 16, TARGETS, gradient_checkpointing=False)
    assert bigger.activations > 1.9 * plain.activations and bigger.total > 64 * GiB


def test_the_fp8_row_follows_the_casting_the_trainer_applies() -> None:
    t = build_meta_transformer()
    bf16 = estimate(t, 512, 16, TARGETS, gradient_checkpointing=True)
    fp8 = estimate(t, 512, 16, TARGETS, gradient_checkpointing=True, base_precision="fp8")
    # the same hooks on another copy: exactly the parameters the estimate counts at one byte
    clone = build_meta_transformer()
    clone.requires_grad_(False)
    assert store_base_in_fp8(clone, torch.bfloat16) == fp8.base_fp8_params
    assert fp8.base_fp8_params == sum(p.numel() for p in clone.parameters() if p.dtype == FP8)
    assert all(p.dtype != FP8 for n, p in clone.named_parameters() if "norm" in n or "embed" in n)
    assert not any(p.dtype == FP8 for p in t.parameters())  # the estimate left its model alone
    # norms, AdaLN modulation and embedders stay bf16: well short of halving the weights
    assert 0.65 * bf16.base_params < fp8.base_fp8_params < 0.8 * bf16.base_params
    assert fp8.base_weights == fp8.base_fp8_params + 2 * (fp8.base_params - fp8.base_fp8_params)
    assert 0 < fp8.upcast_weights < 1 * GiB  # one block's bf16 copy while it is recomputed
    assert fp8.total < 24e9 < bf16.total
    assert fp8.total < 20 * GiB  # the 24 GB claim keeps a few GiB of margin for the estimate's error
    # without checkpointing every layer's upcast copy is kept for the backward pass: worse than bf16
    no_ckpt = estimate(t, 512, 16, TARGETS, gradient_checkpointing=False, base_precision="fp8")
    assert no_ckpt.upcast_weights == 2 * no_ckpt.base_fp8_params
    assert no_ckpt.total > estimate(t, 512, 16, TARGETS, gradient_checkpointing=False).total
    with pytest.raises(ValueError, match="base_precision"):
        estimate(t, 512, 16, TARGETS, gradient_checkpointing=True, base_precision="int4")
