"""Storing the frozen base transformer in float8 while a LoRA trains on it (``base_precision="fp8"``).

This is diffusers' own layerwise casting (``ModelMixin.enable_layerwise_casting``): every frozen ``Linear``
of the blocks keeps its weight in ``float8_e4m3fn`` and a hook upcasts that one layer to the compute dtype
just before its forward and back to float8 right after. The modules that are small or precision-critical
stay as loaded: norms and the AdaLN modulation (``norm*``), the input embedders, the positional embedding,
the final ``proj_out``. The LoRA modules (peft's ``lora_A`` / ``lora_B`` ...) are skipped explicitly: with
a user-supplied pattern diffusers does not add them itself, and a hooked adapter would be cast to float8.

Only worth it with gradient checkpointing: autograd keeps the upcast copy of each weight it needs for the
backward pass, so without checkpointing every layer's compute-dtype copy stays alive until the backward
pass and the peak is higher than with a plain bf16 base. With checkpointing only the block being
recomputed holds its upcast weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

FP8 = torch.float8_e4m3fn
# Besides diffusers' defaults (pos_embed, patch_embed, norm, ^proj_in$, ^proj_out$) and the model's own
# _skip_layerwise_casting_patterns: the input embedders (timestep, guidance, pooled text, context and
# latent projections) are small and feed every block, so their rounding would reach the whole network.
EMBEDDER_PATTERNS: tuple[str, ...] = ("x_embedder", "context_embedder", "time_text_embed")


def skip_patterns(transformer: Any) -> tuple[str, ...]:
    """The module-name regexes that keep their precision under fp8 storage.

    Args:
        transformer: a diffusers ``ModelMixin`` (its ``_skip_layerwise_casting_patterns`` are included).

    Returns:
        diffusers' default patterns, the model's own, the embedders and every peft adapter layer name.
    """
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
    from peft.tuners.lora.layer import LoraLayer

    own = tuple(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ())
    keep_fp32 = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    # peft names its trainable modules lora_A, lora_B, lora_embedding_A/B, lora_magnitude_vector: matched
    # anywhere in a module path, so every adapter (whatever its name) and its children are left alone.
    adapters = tuple(LoraLayer.adapter_layer_names)
    return tuple(dict.fromkeys((*DEFAULT_SKIP_MODULES_PATTERN, *own, *keep_fp32, *EMBEDDER_PATTERNS, *adapters)))


def layerwise_casting_active(module: torch.nn.Module) -> bool:
    """Whether diffusers' layerwise-casting hook is on any submodule (it cannot be taken off again)."""
    from diffusers.hooks.layerwise_casting import _is_layerwise_casting_active

    return bool(_is_layerwise_casting_active(module))


def store_base_in_fp8(transformer: Any, compute_dtype: torch.dtype) -> int:
    """Keep the transformer's frozen Linear weights in float8, upcast per layer to ``compute_dtype``.

    Call it after the adapter has been added and made float32: the adapter modules are skipped by name,
    and peft's input casting is switched off by diffusers for the wrapped layers, so activations reach the
    adapter in the compute dtype rather than in float8.

    Args:
        transformer: a diffusers transformer (``FluxTransformer2DModel``), possibly with a peft adapter.
        compute_dtype: the dtype each layer is upcast to for its forward (the dtype it was loaded in).

    Returns:
        How many parameters are now stored in float8.

    Raises:
        ValueError: a trainable parameter ended up in float8 (an adapter the skip patterns do not cover).
    """
    transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype,
                                         skip_modules_pattern=skip_patterns(transformer))
    cast = [n for n, p in transformer.named_parameters() if p.requires_grad and p.dtype == FP8]
    if cast:
        raise ValueError(f"fp8 base storage would cast trainable parameters: {', '.join(cast[:5])}")
    return sum(p.numel() for p in transformer.parameters() if p.dtype == FP8)


def fp8_layout(transformer: Any, compute_dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(parameters stored in float8, largest number of float8 parameters in one block) under fp8 storage.

    Applies the very same casting to a copy (meta-device models cost nothing), so the memory estimate
    follows the option as implemented rather than assuming every weight becomes 8-bit.

    Args:
        transformer: the transformer, usually on the meta device; it is not modified.
        compute_dtype: the upcast dtype (does not change the counts).

    Returns:
        The two counts.
    """
    clone = copy.deepcopy(transformer)
    clone.requires_grad_(False)  # the base is frozen in a run; only an adapter would be trainable
    total = store_base_in_fp8(clone, compute_dtype)
    largest = 0
    for attr in ("transformer_blocks", "single_transformer_blocks"):
        for block in getattr(clone, attr, ()):
            largest = max(largest, sum(p.numel() for p in block.parameters() if p.dtype == FP8))
    return total, largest


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters take in memory, at their current dtypes."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
