"""How much accelerator memory a LoRA run needs: an analytic estimate from the transformer's shapes.

Measured figures need a GPU (``benchmarks/train_memory.py``); this estimate gives the same breakdown
anywhere. The terms:

- base weights: every transformer parameter in bf16 (2 bytes). With ``base_precision="fp8"`` the
  parameters that the trainer's layerwise casting stores in float8 count 1 byte and the rest (norms and
  AdaLN modulation, embedders, the final projection) stay at 2: the split is taken by applying that very
  casting to the meta-device model (``base_precision.fp8_layout``), about 72 % of the parameters. The VAE
  and text encoders are not resident while training because latents and embeddings come from the cache;
- with fp8 storage, the upcast copies: autograd keeps the bf16 copy of each float8 weight it needs for
  the backward pass. With gradient checkpointing (which fp8 storage requires) only the block being
  recomputed holds them, so the largest block's float8 parameters count another 2 bytes each; without it
  every float8 parameter does, and fp8 storage costs more than a bf16 base;
- the LoRA itself: float32 weights, float32 gradients and the optimiser's two moments (AdamW float32, the
  8-bit AdamW 1 byte each);
- activations kept for the backward pass: per block about ``ACTIVATION_WIDTHS`` hidden-size-wide bf16
  tensors per token (normalised inputs, q/k/v and their rotated copies, the attention output, the MLP's
  4x-wide hidden before and after GELU, the LoRA inputs). With gradient checkpointing only each block's
  input is kept, plus one block's activations while it is recomputed;
- a fixed workspace for kernels and the allocator's fragmentation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

GiB = 1024**3
# Kept per token per block, in units of the hidden size (see the module docstring); double blocks keep
# about as much as single blocks once the MLP's 4x width is counted.
ACTIVATION_WIDTHS = 34
WORKSPACE = int(1.5 * GiB)
TEXT_TOKENS = 512

# The published FLUX.1 [dev] / Kontext [dev] transformer.
FULL_SIZE: dict[str, Any] = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                             "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                             "in_channels": 64, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per term and the total (see the module docstring)."""

    resolution: int
    rank: int
    gradient_checkpointing: bool
    base_precision: str
    tokens: int
    base_params: int
    base_fp8_params: int
    lora_params: int
    base_weights: int
    upcast_weights: int
    lora_weights_and_grads: int
    optimizer_states: int
    activations: int
    workspace: int

    @property
    def total(self) -> int:
        return (self.base_weights + self.upcast_weights + self.lora_weights_and_grads + self.optimizer_states
                + self.activations + self.workspace)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = self.total
        d |= {f"{k}_gib": round(v / GiB, 2) for k, v in d.items() if k in (
            "base_weights", "upcast_weights", "lora_weights_and_grads", "optimizer_states", "activations",
            "workspace", "total")}
        return d


def count_parameters(transformer: Any, rank: int, target_modules: list[str]) -> tuple[int, int]:
    """(base parameters, LoRA parameters at ``rank``) of a transformer, e.g. one built on the meta device.

    Args:
        transformer: a ``FluxTransformer2DModel``.
        rank: LoRA rank.
        target_modules: module-name suffixes that get an adapter (matched as peft matches them).

    Returns:
        The two counts.
    """
    import torch

    base = sum(p.numel() for p in transformer.parameters())
    lora = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules):
            lora += rank * (module.in_features + module.out_features)
    return base, lora


def build_meta_transformer(config: dict[str, Any] | None = None) -> Any:
    """The transformer with the given (default: full-size) config on the meta device: shapes, no memory."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**(config or FULL_SIZE))


def estimate(transformer: Any, resolution: int, rank: int, target_modules: list[str], *,
             gradient_checkpointing: bool, base_precision: str = "bf16", optimizer_state_bytes: int = 4,
             batch_size: int = 1) -> MemoryEstimate:
    """Estimate the peak memory of one training step.

    Args:
        transformer: the transformer (meta device is enough; it is not modified).
        resolution: square training size in pixels (target and source both at this size).
        rank: LoRA rank.
        target_modules: adapted module suffixes.
        gradient_checkpointing: whether block activations are recomputed.
        base_precision: ``bf16`` (a run's ``model`` precision on CUDA) or ``fp8`` (``base_precision="fp8"``).
        optimizer_state_bytes: 4 for AdamW, 1 for 8-bit AdamW.
        batch_size: pairs per step.

    Returns:
        The breakdown.

    Raises:
        ValueError: an unknown ``base_precision``.
    """
    if base_precision not in ("bf16", "fp8"):
        raise ValueError(f"base_precision must be bf16 or fp8; got {base_precision!r}")
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    blocks = cfg.num_layers + cfg.num_single_layers
    image_tokens = (resolution // 16) ** 2
    tokens = batch_size * (2 * image_tokens + TEXT_TOKENS)  # target + source + text
    base, lora = count_parameters(transformer, rank, target_modules)
    fp8, largest_block = _fp8_layout(transformer) if base_precision == "fp8" else (0, 0)
    per_block = tokens * hidden * 2 * ACTIVATION_WIDTHS
    # With checkpointing: every block's input, plus one block's activations while it is recomputed.
    activations = blocks * tokens * hidden * 2 + per_block if gradient_checkpointing else blocks * per_block
    return MemoryEstimate(
        resolution=resolution, rank=rank, gradient_checkpointing=gradient_checkpointing,
        base_precision=base_precision, tokens=tokens, base_params=base, base_fp8_params=fp8, lora_params=lora,
        base_weights=fp8 + (base - fp8) * 2,
        # Without checkpointing autograd keeps every layer's upcast copy until the backward pass, which is
        # why the trainer refuses fp8 storage without it; the row still shows what it would cost.
        upcast_weights=(largest_block if gradient_checkpointing else fp8) * 2, lora_weights_and_grads=lora * 8,
        optimizer_states=lora * 2 * optimizer_state_bytes, activations=activations, workspace=WORKSPACE)


_LAYOUTS: dict[str, tuple[int, int]] = {}


def _fp8_layout(transformer: Any) -> tuple[int, int]:
    """``base_precision.fp8_layout``, remembered per model config (a plan asks for it once per row)."""
    from kontext_studio.training.base_precision import fp8_layout

    key = json.dumps(dict(transformer.config), sort_keys=True, default=str)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = fp8_layout(transformer)
    return _LAYOUTS[key]
