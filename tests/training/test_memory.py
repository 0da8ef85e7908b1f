"""The memory estimate counts the real full-size transformer (built on the meta device, no memory used)."""

from __future__ import annotations

from kontext_studio.training.config import DEFAULT_TARGET_MODULES
from kontext_studio.training.memory import GiB, build_meta_transformer, estimate


def test_full_size_estimate_counts_the_12b_transformer_and_the_rank_16_adapter() -> None:
    t = build_meta_transformer()
    plain = estimate(t, 512, 16, list(DEFAULT_TARGET_MODULES), gradient_checkpointing=False)
    ckpt = estimate(t, 512, 16, list(DEFAULT_TARGET_MODULES), gradient_checkpointing=True)
    eight_bit = estimate(t, 512, 16, list(DEFAULT_TARGET_MODULES), gradient_checkpointing=True, base_dtype_bytes=1)
    assert 11.8e9 < plain.base_params < 12.0e9  # FLUX.1's 11.9 B transformer
    # rank 16 on a 3072-wide q projection: 16 x (3072 + 3072) parameters; the whole adapter is tens of millions
    assert 30e6 < plain.lora_params < 100e6
    assert ckpt.activations < plain.activations / 10
    assert eight_bit.base_weights * 2 == plain.base_weights
    assert eight_bit.total < 24e9 < ckpt.total  # bf16 weights alone leave no room on a 24 GB card
    bigger = estimate(t, 768, 16, list(DEFAULT_TARGET_MODULES), gradient_checkpointing=False)
    assert bigger.activations > 1.9 * plain.activations and bigger.total > 64 * GiB
