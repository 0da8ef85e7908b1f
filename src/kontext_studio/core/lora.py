"""LoRA files: format detection, conversion to diffusers keys, fit checks, and saving with alpha.

Community Kontext LoRAs come in several key layouts. Each is recognised from its keys (and metadata),
converted through diffusers' own converters, then checked against the model's modules *before* anything
is loaded, so a file that does not fit is refused with the format found and the keys at fault instead of
leaving a half-loaded adapter behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_studio.core.errors import LoraError

if TYPE_CHECKING:
    import torch


class LoraFormat(StrEnum):
    DIFFUSERS = "diffusers"  # transformer.<module>.lora_A/B.weight (diffusers / PEFT save_lora_weights)
    PEFT = "peft"  # <module>.lora_A/B.weight without the component prefix (raw get_peft_model_state_dict)
    AI_TOOLKIT = "ai-toolkit"  # diffusers keys; ai-toolkit names itself in the metadata
    KOHYA = "kohya"  # lora_unet_<module_with_underscores>.lora_down/up.weight + .alpha (sd-scripts)
    COMFY = "comfy"  # diffusion_model.<BFL module>.lora_down/up or lora_A/B (ComfyUI / BFL layout)
    FAL = "fal"  # base_model.model.<BFL module>.lora_A/B.weight (fal's Kontext trainer)
    XLABS = "xlabs"  # ...processor... keys (XLabs trainer)
    UNKNOWN = "unknown"


@dataclass
class LoraInfo:
    """What a LoRA file is, read from its header and keys (no tensors are kept)."""

    path: str
    format: LoraFormat
    sha256: str
    num_tensors: int
    rank: int | None
    alpha: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    sample_keys: list[str] = field(default_factory=list)


_LORA_AB = re.compile(r"\.lora_[AB]\.(?:[^.]+\.)?weight$")


def detect_format(keys: Iterable[str], metadata: dict[str, Any] | None = None) -> LoraFormat:
    """Recognise a LoRA key layout.

    Args:
        keys: the tensor names in the file.
        metadata: the safetensors header metadata (used to tell ai-toolkit files apart).

    Returns:
        The format; ``UNKNOWN`` when no known layout matches.
    """
    keys = list(keys)
    meta = metadata or {}
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_transformer_")) for k in keys):
        return LoraFormat.KOHYA
    if any(k.startswith("diffusion_model.") for k in keys):
        return LoraFormat.COMFY
    if any(k.startswith("base_model.model.") for k in keys):
        return LoraFormat.FAL
    if any("processor" in k for k in keys):
        return LoraFormat.XLABS
    if any(k.startswith(("transformer.", "text_encoder.")) for k in keys):
        blob = json.dumps(meta).lower()
        if "ai-toolkit" in blob or "ai_toolkit" in blob:
            return LoraFormat.AI_TOOLKIT
        return LoraFormat.DIFFUSERS
    if keys and any(_LORA_AB.search(k) for k in keys):
        return LoraFormat.PEFT
    return LoraFormat.UNKNOWN


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], LoraInfo]:
    """Load a LoRA safetensors file and describe it.

    Raises:
        LoraError: missing, empty, not safetensors, or no LoRA tensors inside.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise LoraError(f"loras: file not found: {p}", field="loras")
    if p.stat().st_size == 0:
        raise LoraError(f"loras: {p} is empty (0 bytes); download it again", field="loras")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            raw_meta = f.metadata() or {}
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LoraError(
            f"loras: {p} is not a readable .safetensors LoRA ({exc}); only safetensors files are accepted",
            field="loras",
        ) from None
    metadata: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            metadata[k] = json.loads(v)
        except (TypeError, ValueError):
            metadata[k] = v
    fmt = detect_format(state.keys(), metadata)
    if fmt is LoraFormat.UNKNOWN:
        sample = sorted(state)[:5]
        raise LoraError(
            f"loras: {p.name} has no LoRA keys of a known layout (diffusers, PEFT, kohya, ComfyUI, fal, "
            f"ai-toolkit); first keys: {sample}",
            field="loras",
        )
    info = LoraInfo(
        path=str(p),
        format=fmt,
        sha256=file_sha256(p),
        num_tensors=len(state),
        rank=_rank(state),
        alpha=_alpha(state, metadata),
        metadata=metadata,
        sample_keys=sorted(state)[:5],
    )
    return state, info


def _rank(state: dict[str, Any]) -> int | None:
    for k, v in state.items():
        if k.endswith(("lora_A.weight", "lora_down.weight")) and getattr(v, "ndim", 0) >= 2:
            return int(v.shape[0])
    return None


def _alpha(state: dict[str, Any], metadata: dict[str, Any]) -> float | None:
    cfg = metadata.get("lora_adapter_metadata")
    if isinstance(cfg, dict) and "transformer.lora_alpha" in cfg:
        return float(cfg["transformer.lora_alpha"])
    for k, v in state.items():
        if k.endswith(".alpha"):
            return float(v.item())
    return None


def to_diffusers(state: dict[str, torch.Tensor], info: LoraInfo,
                 pipeline_class: type | None = None) -> dict[str, torch.Tensor]:
    """Convert any supported layout to diffusers keys (``transformer.<module>.lora_A.weight``).

    Kohya and ComfyUI lora_down/up files and fal / BFL-layout lora_A/B files go through diffusers' own
    converters; plain PEFT files get their component prefix. Diffusers-format files are returned as is.

    Args:
        state: the file's tensors.
        info: what the file is.
        pipeline_class: the pipeline whose ``lora_state_dict`` converts community layouts (default: Kontext's;
            other families convert with their own loader).

    Raises:
        LoraError: when the converter rejects the file, naming the format and the key it tripped on.
    """
    from diffusers import FluxKontextPipeline

    converter: Any = pipeline_class or FluxKontextPipeline
    fmt = info.format
    if fmt in (LoraFormat.DIFFUSERS, LoraFormat.AI_TOOLKIT):
        return state
    if fmt is LoraFormat.PEFT:
        return {f"transformer.{k}": v for k, v in state.items()}
    source = dict(state)
    if fmt is LoraFormat.COMFY and not any(".lora_down." in k for k in source):
        # BFL module names with lora_A/B are fal's layout under another prefix.
        source = {k.replace("diffusion_model.", "base_model.model.", 1): v for k, v in source.items()}
    try:
        converted = converter.lora_state_dict(source)
    except (KeyError, ValueError, RuntimeError, IndexError, AssertionError) as exc:
        # AssertionError: the kohya converter asserts the 12B single-block sizes (3072 x 3 + 12288).
        raise LoraError(
            f"loras: {Path(info.path).name} looks like a {fmt.value} LoRA but diffusers could not convert it: "
            f"{exc.__class__.__name__}: {exc}. The converter expects the full FLUX.1 block layout "
            f"(19 double + 38 single blocks); first keys of the file: {info.sample_keys}",
            field="loras",
        ) from None
    # diffusers' kohya converter leaves the transformer's embedders and final layer (img_in, txt_in, time_in,
    # vector_in, guidance_in, final_layer) without the component prefix, so they would be dropped on load.
    return {k if k.startswith(("transformer.", "text_encoder.")) else f"transformer.{k}": v
            for k, v in converted.items()}


def check_fit(state: dict[str, torch.Tensor], modules: dict[str, Any], info: LoraInfo,
              model_title: str = "FLUX.1 Kontext [dev]") -> None:
    """Refuse a converted state dict whose keys or shapes do not match the model.

    Args:
        state: diffusers-format LoRA tensors.
        modules: ``{"transformer": model, "text_encoder": model, ...}`` to check against.
        info: the file's description, for the message.
        model_title: the model it is being loaded on, for the message.

    Raises:
        LoraError: listing up to five keys that name no module or whose shapes do not fit.
    """
    named = {prefix: dict(m.named_modules()) for prefix, m in modules.items() if m is not None}
    bad: list[str] = []
    matched = 0
    ranks: dict[str, dict[str, int]] = {}  # module key → {"A": rank, "B": rank}
    for key, tensor in state.items():
        prefix, _, rest = key.partition(".")
        m = re.match(r"(.+)\.lora_([AB])\.(?:[^.]+\.)?weight$", rest)
        if prefix not in named or m is None:
            if key.endswith((".alpha", "lora_magnitude_vector")):
                continue
            bad.append(f"{key} (no component {prefix!r} or not a lora_A/lora_B weight)")
            continue
        module = named[prefix].get(m.group(1))
        if module is None:
            bad.append(f"{key} (the model has no module {m.group(1)!r})")
            continue
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if m.group(2) == "A" and in_f is not None and tensor.shape[-1] != in_f:
            bad.append(f"{key} (expects {in_f} inputs, the file has {tensor.shape[-1]})")
        elif m.group(2) == "B" and out_f is not None and tensor.shape[0] != out_f:
            bad.append(f"{key} (expects {out_f} outputs, the file has {tensor.shape[0]})")
        else:
            matched += 1
            if tensor.ndim >= 2:
                ranks.setdefault(f"{prefix}.{m.group(1)}", {})[m.group(2)] = int(
                    tensor.shape[0] if m.group(2) == "A" else tensor.shape[1])
    for module_key, r in ranks.items():
        if len(r) == 2 and r["A"] != r["B"]:
            bad.append(f"{module_key} (lora_A has rank {r['A']} but lora_B has rank {r['B']})")
    if bad or matched == 0:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise LoraError(
            f"loras: {Path(info.path).name} ({info.format.value} format, {info.num_tensors} tensors) does not fit "
            f"this model: {shown or 'no key matched a module'}. Was it trained for {model_title}? A LoRA only fits "
            f"the model family it was trained on.",
            field="loras",
        )


def save_lora(transformer: Any, path: str | Path, adapter_name: str = "default",
              extra_metadata: dict[str, Any] | None = None) -> Path:
    """Save a PEFT adapter of the transformer in diffusers format, keeping ``lora_alpha`` exactly.

    diffusers drops alpha unless the adapter config travels as metadata; without it a reloaded
    adapter with alpha != rank is scaled differently. ``extra_metadata`` (e.g. a training recipe) is
    stored as JSON under the ``kontext_studio`` header key.

    Returns:
        The written file path.
    """
    from diffusers import FluxKontextPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = Path(path)
    config = transformer.peft_config[adapter_name].to_dict()
    FluxKontextPipeline.save_lora_weights(
        save_directory=str(out.parent),
        transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=adapter_name),
        transformer_lora_adapter_metadata=config,
        weight_name=out.name,
    )
    if extra_metadata:
        with safe_open(str(out), framework="pt") as f:
            meta = dict(f.metadata() or {})
        meta["kontext_studio"] = json.dumps(extra_metadata, default=str)
        save_file(load_file(str(out)), str(out), metadata=meta)
    return out
