"""Export a trained adapter in the kohya key layout (``lora_unet_<BFL module>``), read by ComfyUI and Forge.

The diffusers layout splits FLUX's fused projections (a double block's ``img_attn.qkv``, a single block's
``linear1`` = q, k, v and the MLP input) into separate modules. Kohya files use the fused BFL modules,
so the split adapters are joined exactly: the down matrices are stacked (rank n x r) and the up matrix is
block-diagonal, which gives the same weight update as the separate adapters. The ``alpha / rank`` scale is
folded into the up weights and each module's alpha is set to its (fused) rank, so every loader that
applies ``alpha / rank`` gets scale 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from kontext_studio.core.errors import LoraError

_DOUBLE = {
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
}  # fmt: skip
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}  # fmt: skip
_KEY = re.compile(r"^transformer\.(.+)\.lora_([AB])\.weight$")
MLP_RATIO = 4  # FLUX's single-block MLP width / hidden size, for a fused linear1 whose MLP part was not trained


def _deltas(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{diffusers module: (A, B * alpha/r)} from a diffusers-format file saved by ``save_lora``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    state = load_file(str(path))
    cfg = json.loads(meta.get("lora_adapter_metadata", "{}"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _KEY.match(key)
        if m is None:
            raise LoraError(f"export: {path.name} has a key {key!r} that is not transformer.<module>.lora_A/B; "
                            "only adapters saved by kontext train-lora can be exported", field="lora")
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor.float()
    rank = int(cfg.get("transformer.r") or next(iter(pairs.values()))["A"].shape[0])
    alpha = float(cfg.get("transformer.lora_alpha") or rank)
    scale = alpha / rank
    return {name: (ab["A"], ab["B"] * scale) for name, ab in pairs.items()}, scale


def to_kohya(deltas: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Map diffusers-named (A, scaled B) pairs onto kohya's fused BFL module names.

    Raises:
        LoraError: a module with no BFL counterpart (named).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def put(bfl: str, down: torch.Tensor, up: torch.Tensor) -> None:
        name = "lora_unet_" + bfl.replace(".", "_")
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))

    def fuse(bfl: str, prefix: str, parts: tuple[str, ...]) -> None:
        present = [f"{prefix}.{p}" for p in parts if f"{prefix}.{p}" in deltas]
        if not present:
            return
        a0, b0 = deltas[present[0]]
        r, width, hidden = a0.shape[0], a0.shape[1], b0.shape[0]
        downs, ups = [], []
        for p in parts:
            key = f"{prefix}.{p}"
            if key in deltas:
                a, b = deltas[key]
                used.add(key)
            else:  # an untrained part of the fused projection: zero update of the right size
                rows = hidden * MLP_RATIO if p == "proj_mlp" else hidden
                a, b = torch.zeros(r, width), torch.zeros(rows, r)
            downs.append(a)
            ups.append(b)
        put(bfl, torch.cat(downs), torch.block_diag(*ups))

    blocks = sorted({m.group(1) for k in deltas if (m := re.match(r"^((?:single_)?transformer_blocks\.\d+)\.", k))})
    for block in blocks:
        kind, i = block.rsplit(".", 1)
        single = kind == "single_transformer_blocks"
        bfl_block = f"{'single' if single else 'double'}_blocks.{i}"
        for bfl, parts in (_SINGLE_FUSED if single else _DOUBLE_FUSED).items():
            fuse(f"{bfl_block}.{bfl}", block, parts)
        for ours, bfl in (_SINGLE if single else _DOUBLE).items():
            key = f"{block}.{ours}"
            if key in deltas:
                put(f"{bfl_block}.{bfl}", *deltas[key])
                used.add(key)
    for ours, bfl in _TOP.items():
        if ours in deltas:
            put(bfl, *deltas[ours])
            used.add(ours)
    left = sorted(set(deltas) - used)
    if left:
        raise LoraError(f"export: no kohya counterpart for {', '.join(left[:5])}; leave these modules out of "
                        "target_modules to export", field="lora")
    return out


def export_kohya(diffusers_file: str | Path, out_file: str | Path) -> Path:
    """Write the kohya / ComfyUI layout of an adapter saved by ``save_lora``.

    Args:
        diffusers_file: the diffusers-format adapter.
        out_file: where to write.

    Returns:
        ``out_file``; its metadata keeps the training recipe.

    Raises:
        LoraError: the file is missing or unreadable, or a key or module has no kohya counterpart.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    src, dst = Path(diffusers_file), Path(out_file)
    if not src.is_file():
        raise LoraError(f"export: file not found: {src}", field="lora")
    try:
        deltas, scale = _deltas(src)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise LoraError(f"export: {src} is not a readable .safetensors adapter ({exc})", field="lora") from None
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    keep = {k: v for k, v in meta.items() if k == "kontext_studio"}
    keep["kontext_studio_export"] = json.dumps({"layout": "kohya", "from": src.name, "folded_scale": scale})
    save_file(to_kohya(deltas), str(dst), metadata=keep)
    return dst
