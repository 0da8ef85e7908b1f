"""Write a ``FluxTransformer2DModel`` as BFL's original single-file checkpoint, for the tiny test model.

FLUX.1 Kontext [dev] also ships as one file, ``flux1-kontext-dev.safetensors``, in Black Forest Labs'
own key layout (``double_blocks.N.img_attn.qkv.weight``, ``single_blocks.N.linear1.weight``, ...).
``save_bfl_checkpoint`` turns a diffusers transformer into that layout, so the single-file loading path
(``ModelSource`` kind ``single_file``) can be exercised offline on the tiny model.

Key mapping (diffusers → BFL):

* ``time_text_embed.{timestep,text,guidance}_embedder.linear_{1,2}`` → ``{time,vector,guidance}_in.{in,out}_layer``
* ``x_embedder`` → ``img_in``, ``context_embedder`` → ``txt_in``
* double block N: ``norm1[_context].linear`` → ``{img,txt}_mod.lin``; ``to_q|to_k|to_v`` (and the ``add_*_proj``
  for text) stacked row-wise → ``{img,txt}_attn.qkv``; ``norm_[added_]{q,k}.weight`` →
  ``{img,txt}_attn.norm.{query,key}_norm.scale``; ``to_out.0`` / ``to_add_out`` → ``{img,txt}_attn.proj``;
  ``ff[_context].net.0.proj`` / ``net.2`` → ``{img,txt}_mlp.0`` / ``.2``
* single block N: ``norm.linear`` → ``modulation.lin``; ``to_q|to_k|to_v|proj_mlp`` stacked → ``linear1``;
  ``proj_out`` → ``linear2``; ``attn.norm_{q,k}.weight`` → ``norm.{query,key}_norm.scale``
* ``proj_out`` → ``final_layer.linear``; ``norm_out.linear`` → ``final_layer.adaLN_modulation.1`` with its
  two halves swapped (diffusers orders the output scale, shift; BFL orders it shift, scale).

Diffusers' reverse converter (``convert_flux_transformer_checkpoint_to_diffusers``) hard-codes the 12B
model's width (3072) when it splits ``linear1``, so it cannot read a narrower checkpoint as is.
``tiny_single_file_support`` patches that one split to use the model config's width while delegating
everything else to diffusers' own converter; at the real width it changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_studio.core.registry import SINGLE_FILE_NAME

if TYPE_CHECKING:
    import torch
    from diffusers import FluxTransformer2DModel

_EMBEDDERS = {
    "time_text_embed.timestep_embedder": "time_in",
    "time_text_embed.text_embedder": "vector_in",
    "time_text_embed.guidance_embedder": "guidance_in",
}
_LAYERS = {"linear_1": "in_layer", "linear_2": "out_layer"}

# Renames inside one double block: diffusers suffix → BFL suffix (weights and biases alike).
_DOUBLE_RENAMES = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_RENAMES = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _block_indices(keys: list[str], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)})


def to_bfl_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a diffusers ``FluxTransformer2DModel`` state dict to BFL's original key layout.

    Args:
        state: the diffusers state dict (not modified).

    Returns:
        A new dict of contiguous CPU tensors under BFL's key names.

    Raises:
        ValueError: when a diffusers key has no BFL counterpart (for example fused LoRA layers), or a
            key the layout needs is missing.
    """
    import torch

    src = {k: v.detach().cpu() for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        try:
            return src.pop(key)
        except KeyError:
            raise ValueError(f"the transformer state dict has no {key!r}") from None

    for prefix, bfl in _EMBEDDERS.items():
        if not any(k.startswith(prefix + ".") for k in src):
            continue  # guidance_in only exists for guidance-distilled models (dev, Kontext dev)
        for layer, bfl_layer in _LAYERS.items():
            for kind in ("weight", "bias"):
                out[f"{bfl}.{bfl_layer}.{kind}"] = take(f"{prefix}.{layer}.{kind}")
    for kind in ("weight", "bias"):
        out[f"img_in.{kind}"] = take(f"x_embedder.{kind}")
        out[f"txt_in.{kind}"] = take(f"context_embedder.{kind}")
        out[f"final_layer.linear.{kind}"] = take(f"proj_out.{kind}")
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(take(f"norm_out.linear.{kind}"))

    keys = list(src)
    for i in _block_indices(keys, "transformer_blocks."):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            for name, bfl_name in _DOUBLE_RENAMES.items():
                out[f"{b}{bfl_name}.{kind}"] = take(f"{d}{name}.{kind}")
            for bfl_name, parts in _DOUBLE_FUSED.items():
                out[f"{b}{bfl_name}.{kind}"] = torch.cat([take(f"{d}{p}.{kind}") for p in parts], dim=0)
        for name, bfl_name in _DOUBLE_NORMS.items():
            out[b + bfl_name] = take(d + name)
    for i in _block_indices(keys, "single_transformer_blocks."):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            for name, bfl_name in _SINGLE_RENAMES.items():
                out[f"{b}{bfl_name}.{kind}"] = take(f"{d}{name}.{kind}")
            out[f"{b}linear1.{kind}"] = torch.cat([take(f"{d}{p}.{kind}") for p in _SINGLE_FUSED], dim=0)
        for name, bfl_name in _SINGLE_NORMS.items():
            out[b + bfl_name] = take(d + name)

    if src:
        raise ValueError(f"no BFL name for {len(src)} key(s), e.g. {sorted(src)[:3]}")
    return {k: v.contiguous() for k, v in out.items()}


def save_bfl_checkpoint(transformer: FluxTransformer2DModel | dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``transformer`` as a BFL-layout single-file ``.safetensors`` checkpoint.

    Args:
        transformer: a diffusers ``FluxTransformer2DModel`` or its state dict; tensors keep their dtype.
        path: the file to write (parent folders are created).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    state = transformer if isinstance(transformer, dict) else transformer.state_dict()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_bfl_state_dict(state), str(out), metadata={"format": "pt"})
    return out


def build_tiny_single_file(out_dir: str | Path, seed: int = 0,
                           base_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Build the tiny model folder plus its transformer as BFL's single file.

    Args:
        out_dir: folder to write into (created if missing).
        seed: weight seed for a newly built folder.
        base_dir: an existing tiny diffusers folder to convert instead of building one.

    Returns:
        ``(file_path, base_dir)``: ``out_dir/flux1-kontext-dev.safetensors`` and the diffusers folder whose
        text encoders, VAE and configs go with it (``out_dir/tiny-kontext`` when built here). The file holds
        exactly the folder's transformer weights.
    """
    from diffusers import FluxTransformer2DModel

    from kontext_studio.testing.tiny_model import build_tiny_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(base_dir) if base_dir is not None else build_tiny_model(out / "tiny-kontext", seed=seed)
    transformer = FluxTransformer2DModel.from_pretrained(base, subfolder="transformer")
    return save_bfl_checkpoint(transformer, out / SINGLE_FILE_NAME), base


def _config_width(config: Any) -> tuple[int, int] | None:
    try:
        inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    except (KeyError, TypeError, ValueError):
        return None
    return inner, int(inner * 4.0)  # FLUX's single blocks use mlp_ratio 4


def _width_aware(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Wrap diffusers' BFL→diffusers converter so the ``linear1`` split follows the model config's width."""
    import torch

    real = (3072, 3 * 3072 + 4 * 3072)  # what diffusers' converter splits linear1 into (12B model)

    def convert(checkpoint: dict[str, Any], config: Any = None, **kwargs: Any) -> dict[str, Any]:
        width = _config_width(config)
        try:
            return original(checkpoint=dict(checkpoint), config=config, **kwargs)
        except RuntimeError:
            if width is None:
                raise
        inner, mlp = width
        fused = {k: checkpoint[k] for k in checkpoint if k.split(".")[0] == "single_blocks" and ".linear1." in k}
        # Hand diffusers zero-width placeholders of the length it splits, then split the real tensors here.
        placeholders = {k: torch.empty(real[1], 0) for k in fused}
        converted = original(checkpoint={**checkpoint, **placeholders}, config=config, **kwargs)
        for key, tensor in fused.items():
            i, kind = key.split(".")[1], key.rsplit(".", 1)[1]
            q, k, v, m = torch.split(tensor, [inner, inner, inner, mlp], dim=0)
            for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), (q, k, v, m), strict=True):
                converted[f"single_transformer_blocks.{i}.{name}.{kind}"] = part
        return converted

    return convert


@contextlib.contextmanager
def tiny_single_file_support() -> Iterator[None]:
    """Let ``FluxTransformer2DModel.from_single_file`` read BFL checkpoints narrower than the 12B model.

    Only for the tiny test model: diffusers' converter hard-codes the real width. Within the block,
    conversion goes through diffusers' converter unchanged whenever it succeeds.
    """
    from diffusers.loaders import single_file_model

    entry: dict[str, Any] = single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    original = entry["checkpoint_mapping_fn"]
    entry["checkpoint_mapping_fn"] = _width_aware(original)
    try:
        yield
    finally:
        entry["checkpoint_mapping_fn"] = original
