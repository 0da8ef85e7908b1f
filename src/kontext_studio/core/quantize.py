"""Quantized weights: GGUF files, fp8 checkpoints and on-load quantization, for every local family.

* GGUF (``q8_0``, ``q6_k``, ``q5_k``, ``q4_k``): read through diffusers' GGUF support, which dequantizes
  each layer on the fly on any device. ``write_gguf`` writes the transformer in the diffusers key layout (the
  loader then needs no key conversion for any family); community files in the original layouts load too,
  converted by diffusers. Tensors whose rows do not divide into the format's blocks fall back the way
  llama.cpp's quantizer does (Q6_K → Q8_0, Q5_K → Q5_1, Q4_K → Q5_0, and BF16 below 32 columns); norms and
  biases stay float32. The K-quant encoders here use plain min/max scales per sub-block (no search for the
  best scale as llama.cpp does): valid files, a little further from full precision than llama.cpp's.
* fp8 (``fp8``): a safetensors file of float8 e4m3 weights, as the community ships them; per-tensor
  ``<name>.scale_weight`` factors are honoured when present.
* On load: ``int8`` (torchao weight-only), ``fp8`` (float8 storage, upcast per layer, on any device), ``nf4``
  (bitsandbytes, NVIDIA GPUs only). Text encoders take ``int8`` or ``fp8`` the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kontext_studio.core.errors import KontextError

if TYPE_CHECKING:
    import torch

# Layers fp8 storage leaves in their precision: input and output projections, embedders, the final norm.
FP8_SKIP = ("pos_embed", "patch_embed", "^proj_in$", "^proj_out$", "^norm_out", "embedder", "^img_in", "^txt_in",
            "time_text_embed", "time_guidance_embed", "^time_embed")
QK_K = 256
QK = 32
# The transformer classes of the local families, and the architecture name their GGUF files carry.
ARCHITECTURES = {
    "FluxTransformer2DModel": "flux",
    "Flux2Transformer2DModel": "flux2",
    "QwenImageTransformer2DModel": "qwen_image",
}
FAMILY_WORDS = {"flux": "FLUX.1 (Kontext)", "flux2": "FLUX.2", "qwen_image": "Qwen-Image"}
# The catalogue models a file of each family runs as (named in the refusal of a file given to another model).
FILE_MODELS = {"flux": "Kontext [dev] (model dev)", "flux2": "FLUX.2 [klein] or FLUX.2 [dev] (model klein-4b, "
               "klein-9b or flux2-dev)", "qwen_image": "Qwen-Image-Edit (model qwen-edit)"}
# Key fragments that identify a family in the original (non-diffusers) layouts community files use.
_LAYOUT_MARKERS = (
    ("double_blocks.", "flux"),  # BFL FLUX.1
    ("double_stream_modulation", "flux2"),
    ("single_stream_modulation", "flux2"),
    ("txt_norm.", "qwen_image"),
    ("img_mod.1.", "qwen_image"),
    ("single_transformer_blocks.", "flux"),  # diffusers layouts of FLUX.1 and FLUX.2 (refined below)
)


class WeightsFormatError(KontextError):
    """A weights file is corrupt, of another model family, or in a format this machine cannot run."""

    code = "invalid_weights"
    exit_code = 2


class QuantFormat(StrEnum):
    """Formats ``kontext quantize`` writes."""

    Q8_0 = "q8_0"
    Q6_K = "q6_k"
    Q5_K = "q5_k"
    Q4_K = "q4_k"
    FP8 = "fp8"

    @property
    def is_gguf(self) -> bool:
        return self is not QuantFormat.FP8

    @property
    def suffix(self) -> str:
        return ".gguf" if self.is_gguf else ".safetensors"


def parse_format(text: str) -> QuantFormat:
    """``q8_0``, ``Q4_K``, ``gguf-q6_k`` or ``fp8`` → QuantFormat.

    Raises:
        WeightsFormatError: naming the formats.
    """
    key = text.strip().lower().removeprefix("gguf-").removeprefix("gguf_")
    try:
        return QuantFormat(key)
    except ValueError:
        raise WeightsFormatError(f"format must be one of {', '.join(f.value for f in QuantFormat)}; got {text!r}") \
            from None


# -- block encoders (numpy) -----------------------------------------------------------------------------
def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _affine_k(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale/min per 32-value sub-block for Q4_K / Q5_K: returns (d, dmin, 12 packed scale bytes, q)."""
    n = blocks.shape[0]
    nmax = (1 << bits) - 1
    sub = blocks.reshape(n, 8, 32)
    lo = np.minimum(sub.min(-1), 0.0)
    scale = (sub.max(-1) - lo) / nmax
    minv = -lo
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = (minv.max(-1) / 63).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin[:, None] > 0, np.rint(minv / dmin[:, None]), 0).clip(0, 63).astype(np.uint8)
        eff_scale = (d[:, None] * sc)[..., None]
        eff_min = (dmin[:, None] * mn)[..., None]
        q = np.where(eff_scale > 0, np.rint((sub + eff_min) / eff_scale), 0).clip(0, nmax).astype(np.uint8)
    packed = np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4),
    ], axis=1).astype(np.uint8)
    return d, dmin, packed, q


def _low_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) 4-bit values → (n, 128) bytes: sub-block 2c in the low nibbles, 2c+1 in the high."""
    pairs = (q & 0xF).reshape(q.shape[0], 4, 2, 32)
    return (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(q.shape[0], 128).astype(np.uint8)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, packed, q = _affine_k(blocks, 4)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed, _low_nibbles(q)], axis=1)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, packed, q = _affine_k(blocks, 5)
    high = (q >> 4).astype(np.uint8)  # (n, 8, 32): bit i of qh[l] is sub-block i's element l
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for i in range(8):
        qh |= high[:, i, :] << i
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed, qh, _low_nibbles(q)], axis=1)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    idx = np.abs(sub).argmax(-1)
    extreme = np.take_along_axis(sub, idx[..., None], -1)[..., 0]
    s = extreme / -32.0  # the largest magnitude maps onto -32, the end of the range that has it
    d = (np.abs(s).max(-1) / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(s / d[:, None]), 0).clip(-128, 127).astype(np.int8)
        eff = (d[:, None] * sc)[..., None]
        q = (np.where(eff != 0, np.rint(sub / eff), 0).clip(-32, 31) + 32).astype(np.uint8).reshape(n, QK_K)
    halves = q.reshape(n, 2, 2, 64)  # [half, nibble, k]
    ql = ((halves[:, :, 0, :] & 0xF) | ((halves[:, :, 1, :] & 0xF) << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32)  # [half, pair, l]
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql.astype(np.uint8), qh.astype(np.uint8), sc.view(np.uint8), _f16_bytes(d)], axis=1)


_K_ENCODERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
_FALLBACK = {"Q6_K": "Q8_0", "Q5_K": "Q5_1", "Q4_K": "Q5_0", "Q8_0": "Q8_0"}


def quantize_array(data: np.ndarray, fmt: QuantFormat) -> tuple[np.ndarray, Any]:
    """Quantize one 2-D float array to ``fmt`` (or its fallback when the rows do not divide into blocks).

    Returns:
        (bytes of shape (rows, row_bytes), the GGMLQuantizationType used).
    """
    import gguf

    q = gguf.GGMLQuantizationType
    name = fmt.value.upper()
    cols = data.shape[-1]
    data = np.ascontiguousarray(data, dtype=np.float32)
    if name in _K_ENCODERS and cols % QK_K == 0:
        blocks = data.reshape(-1, QK_K)
        out = _K_ENCODERS[name](blocks)
        return out.reshape(data.shape[0], -1), getattr(q, name)
    if cols % QK == 0:
        qtype = getattr(q, _FALLBACK[name])
        return gguf.quants.quantize(data, qtype), qtype
    return gguf.quants.quantize(data, q.BF16), q.BF16


def dequantize_array(raw: np.ndarray, qtype: Any) -> np.ndarray:
    """The float32 values a GGUF tensor holds (through the gguf package's own decoder)."""
    import gguf

    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32)


# -- GGUF files ---------------------------------------------------------------------------------------
def linear_weight_names(model: Any) -> set[str]:
    """State-dict names of every ``nn.Linear`` weight in ``model`` (the only tensors GGUF loading replaces)."""
    import torch

    return {f"{name}.weight" for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}


def architecture_of(model: Any) -> str:
    """The GGUF architecture name for a transformer instance or class name.

    Raises:
        WeightsFormatError: the class is not one of the local families.
    """
    name = model if isinstance(model, str) else type(model).__name__
    if name not in ARCHITECTURES:
        raise WeightsFormatError(f"{name} is not a transformer of a local model family "
                                 f"({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


@dataclass(frozen=True)
class QuantizedTensor:
    name: str
    data: np.ndarray
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]


def quantize_state_dict(model: Any, fmt: QuantFormat) -> list[QuantizedTensor]:
    """Every tensor of ``model`` for a GGUF file: Linear weights in ``fmt`` (or fallback), the rest float32."""
    import gguf

    linear = linear_weight_names(model)
    tensors = []
    for name, value in model.state_dict().items():
        arr = value.detach().to("cpu").float().numpy()
        if name in linear and arr.ndim == 2:
            data, qtype = quantize_array(arr, fmt)
        else:
            data, qtype = arr.astype(np.float32), gguf.GGMLQuantizationType.F32
        tensors.append(QuantizedTensor(name, data, qtype, tuple(arr.shape)))
    return tensors


def write_gguf(model: Any, path: str | Path, fmt: QuantFormat, model_id: str = "") -> Path:
    """Write ``model`` (a transformer) as a GGUF file in the diffusers key layout.

    Args:
        model: a transformer of a local family (diffusers class).
        path: output ``.gguf`` file.
        fmt: a GGUF format.
        model_id: catalogue id recorded in the file's metadata.

    Returns:
        The path written.

    Raises:
        WeightsFormatError: ``fmt`` is not a GGUF format or the model is not of a local family.
    """
    import gguf

    if not fmt.is_gguf:
        raise WeightsFormatError(f"{fmt.value} is not a GGUF format")
    arch = architecture_of(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("kontext_studio.layout", "diffusers")
    writer.add_string("kontext_studio.class", type(model).__name__)
    writer.add_string("kontext_studio.format", fmt.value)
    writer.add_string("kontext_studio.config", json.dumps(dict(model.config), default=str))
    if model_id:
        writer.add_string("kontext_studio.model", model_id)
    for t in quantize_state_dict(model, fmt):
        writer.add_tensor(t.name, t.data, raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file says about itself."""

    architecture: str | None
    layout: str  # "diffusers" or "original"
    tensor_count: int
    types: dict[str, int]  # quantization type name → number of tensors
    bytes: int


def _field_str(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _family_from_keys(names: list[str]) -> str | None:
    joined = "\n".join(names[:4000])
    for marker, family in _LAYOUT_MARKERS:
        if marker in joined:
            if family == "flux" and ("double_stream_modulation" in joined or "single_stream_modulation" in joined):
                return "flux2"
            return family
    if "transformer_blocks." in joined and "img_mod" in joined:
        return "qwen_image"
    return None


def inspect_gguf(path: str | Path) -> GgufInfo:
    """Read a GGUF file's header: its architecture, key layout, tensor types and size.

    Raises:
        WeightsFormatError: the file is missing, not GGUF, or truncated.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsFormatError(f"GGUF file not found: {p}")
    with open(p, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise WeightsFormatError(f"{p.name} is not a GGUF file (it does not start with the GGUF signature)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(p))
        names = [t.name for t in reader.tensors]
        types: dict[str, int] = {}
        for t in reader.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        size = sum(int(t.n_bytes) for t in reader.tensors)
    except ImportError:
        raise WeightsFormatError("reading GGUF files needs the gguf package: pip install 'kontext-studio[quant]'") \
            from None
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError... on damaged files
        raise WeightsFormatError(f"{p.name} is a damaged GGUF file ({exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); download or "
                                 "quantize it again") from None
    arch = _field_str(reader, "general.architecture") or _family_from_keys(names)
    layout = "diffusers" if _field_str(reader, "kontext_studio.layout") == "diffusers" else "original"
    return GgufInfo(arch, layout, len(names), types, size)


def check_family(info: GgufInfo, expected: str, path: str | Path) -> None:
    """Raise when a GGUF file holds another family's transformer.

    Raises:
        WeightsFormatError: naming both families.
    """
    if info.architecture is not None and info.architecture != expected:
        got = FAMILY_WORDS.get(info.architecture, info.architecture)
        belongs = FILE_MODELS.get(info.architecture)
        raise WeightsFormatError(f"{Path(path).name} holds a {got} transformer, but this model is "
                                 f"{FAMILY_WORDS.get(expected, expected)}: pick a GGUF made for it"
                                 + (f", or run this file as {belongs} with the folder it was made from as its base"
                                    if belongs else ""))


def load_gguf_transformer(model_cls: Any, path: str | Path, config: str | Path, compute_dtype: torch.dtype,
                          subfolder: str = "transformer") -> Any:
    """Load a transformer from a GGUF file (weights stay quantized; layers dequantize on the fly).

    Args:
        model_cls: the diffusers transformer class of the model.
        path: the ``.gguf`` file.
        config: folder (or repo) holding the model's configs (``<config>/<subfolder>/config.json``).
        compute_dtype: the dtype the layers compute in.
        subfolder: where the transformer config lives in ``config``.

    Returns:
        The transformer.

    Raises:
        WeightsFormatError: damaged file, another family's transformer, or shapes that do not match the config.
    """
    from diffusers import GGUFQuantizationConfig

    info = inspect_gguf(path)
    check_family(info, architecture_of(model_cls.__name__), path)
    try:
        return model_cls.from_single_file(str(path), config=str(config), subfolder=subfolder,
                                          quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype),
                                          torch_dtype=compute_dtype)
    except Exception as exc:
        raise WeightsFormatError(f"{Path(path).name} does not fit this model's transformer ({exc.__class__.__name__}:"
                                 f" {str(exc).splitlines()[0][:300] if str(exc) else 'no detail'}); it was made for a "
                                 "different size or variant of the family") from None


# -- fp8 checkpoints ----------------------------------------------------------------------------------
def write_fp8(model: Any, path: str | Path) -> Path:
    """Write ``model``'s Linear weights as float8 e4m3 (the rest in bf16) to a safetensors file.

    Weights are cast as they are (no scale), like the community's fp8 e4m3 files, so loading them and
    storing them in fp8 at run time (``apply_precision(..., "fp8")``) gives exactly the same values.
    """
    import torch
    from safetensors.torch import save_file

    linear = linear_weight_names(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, value in model.state_dict().items():
        v = value.detach().to("cpu")
        state[name] = (v.float().clamp(-448, 448).to(torch.float8_e4m3fn) if name in linear and v.ndim == 2
                       else v.to(torch.bfloat16)).contiguous()
    save_file(state, str(out), metadata={"kontext_studio.format": "fp8", "kontext_studio.class": type(model).__name__})
    return out


def is_fp8_checkpoint(path: str | Path) -> bool:
    """True when a safetensors file stores any tensor in float8."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in list(f.keys())[:64]:
                if "F8" in str(f.get_slice(key).get_dtype()):
                    return True
    except Exception as exc:
        raise WeightsFormatError(f"{Path(path).name} is not a readable safetensors file "
                                 f"({exc.__class__.__name__}); download or convert it again") from None
    return False


def read_fp8_state_dict(path: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """An fp8 checkpoint's tensors in ``dtype``, with ``<name>.scale_weight`` factors applied and dropped.

    Raises:
        WeightsFormatError: the file cannot be read.
    """
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except Exception as exc:
        raise WeightsFormatError(f"{Path(path).name} is a damaged safetensors file ({exc.__class__.__name__}); "
                                 "download or convert it again") from None
    out = {}
    for name, value in raw.items():
        if name.endswith(".scale_weight") or name.endswith(".scale_input"):
            continue
        scale = raw.get(name.removesuffix(".weight") + ".scale_weight") if name.endswith(".weight") else None
        v = value.float()
        if scale is not None:
            v = v * scale.float()
        out[name] = v.to(dtype)
    return out


def load_fp8_transformer(model_cls: Any, path: str | Path, config: str | Path, compute_dtype: torch.dtype,
                         subfolder: str = "transformer") -> Any:
    """Load a transformer from an fp8 e4m3 checkpoint; its Linear weights stay stored in fp8.

    Raises:
        WeightsFormatError: damaged file or shapes that do not fit the model.
    """
    state = read_fp8_state_dict(path, compute_dtype)
    try:
        model = model_cls.from_single_file(state, config=str(config), subfolder=subfolder, torch_dtype=compute_dtype)
    except Exception as exc:
        raise WeightsFormatError(f"{Path(path).name} does not fit this model's transformer ({exc.__class__.__name__}:"
                                 f" {str(exc).splitlines()[0][:300] if str(exc) else 'no detail'})") from None
    apply_precision(model, "fp8")
    return model


# -- on-load quantization --------------------------------------------------------------------------------
def apply_precision(module: Any, precision: str) -> str:
    """Quantize a loaded module in place: ``bf16`` (nothing), ``fp8``, ``int8`` or ``nf4``.

    ``fp8`` keeps Linear weights in float8 e4m3 and upcasts each layer as it runs (diffusers' layerwise
    casting; any device). ``int8`` is torchao's int8 weight-only quantization. ``nf4`` is bitsandbytes'
    4-bit normal float, which needs an NVIDIA GPU.

    Returns:
        What was done, in words (for the recipe and the logs).

    Raises:
        WeightsFormatError: the precision is unknown or cannot run here (the message names the alternative).
    """
    import torch

    precision = precision.lower()
    if precision in ("bf16", "fp16", "float32", "none", ""):
        return "full precision"
    if getattr(module, "_kontext_precision", None) == precision:
        return f"{precision} (already applied)"
    if precision == "fp8":
        from diffusers.hooks import apply_layerwise_casting

        compute = next(module.parameters()).dtype
        # Unlike diffusers' defaults for its models, the adaptive-norm modulation linears are stored in fp8
        # too (the community's fp8 checkpoints store them so): they are a sixth of a FLUX transformer.
        keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
        # Text encoders: the language-model head is often the embedding table itself (tied weights, as in
        # Qwen3), and an encoder never uses it: casting it would turn the embeddings into fp8 as well. Vision
        # towers (Mistral 3, Qwen2.5-VL) stay as loaded: they are small, and their first parameter is the
        # one transformers reports as the model's dtype, which the FLUX.2 pipelines give their prompt embeddings.
        skip = FP8_SKIP + keep if hasattr(module, "_skip_layerwise_casting_patterns") else (
            "norm", "embed", "shared", "lm_head", "vision", "visual", "multi_modal_projector")
        apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
                                skip_modules_pattern=skip)
        module._kontext_precision = precision
        return "fp8 e4m3 weights, upcast per layer"
    if precision == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError:
            raise WeightsFormatError("int8 weights need torchao: pip install 'kontext-studio[quant]'; or use fp8 "
                                     "or a GGUF file") from None
        quantize_(module, Int8WeightOnlyConfig())
        module._kontext_precision = precision
        return "int8 weight-only (torchao)"
    if precision == "nf4":
        if not torch.cuda.is_available():
            raise WeightsFormatError("nf4 (bitsandbytes 4-bit) runs only on NVIDIA GPUs; on this machine use a "
                                     "GGUF Q4_K file (kontext quantize --format q4_k) for 4-bit weights")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise WeightsFormatError("nf4 weights need bitsandbytes: pip install bitsandbytes") from None
        _replace_linear_nf4(module)
        module._kontext_precision = precision
        return "nf4 (bitsandbytes)"
    raise WeightsFormatError(f"precision must be bf16, fp8, int8 or nf4 (GGUF formats come from a .gguf file); "
                             f"got {precision!r}")


def _replace_linear_nf4(module: Any) -> None:  # pragma: no cover - needs CUDA
    import bitsandbytes as bnb
    import torch

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=child.weight.dtype, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = child.bias
            setattr(module, name, q.to("cuda"))
        else:
            _replace_linear_nf4(child)


def load_transformer_file(model_cls: Any, path: str | Path, config: str | Path,
                          dtype: torch.dtype) -> tuple[Any | None, dict[str, Any]]:
    """Load a GGUF or fp8 single-file transformer; (None, info) for any other file (the caller loads it).

    Returns:
        (transformer or None, what the weights are, for the recipe).

    Raises:
        WeightsFormatError: a damaged file or one of another family or size.
    """
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        info = inspect_gguf(p)
        model = load_gguf_transformer(model_cls, p, config, dtype)
        main = max((k for k in info.types if k not in ("F32", "F16", "BF16")), key=lambda k: info.types[k],
                   default="F32")
        return model, {"format": "gguf", "precision": f"gguf-{main.lower()}", "tensor_types": info.types}
    if p.suffix.lower() in (".safetensors", ".sft") and is_fp8_checkpoint(p):
        return load_fp8_transformer(model_cls, p, config, dtype), {"format": "fp8 checkpoint", "precision": "fp8"}
    return None, {"format": "single file", "precision": "as stored"}


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def pipeline_footprint(pipe: Any, text_encoders: list[str], title: str = "this model") -> Any:
    """The planner's footprint of a loaded pipeline, measured from its modules."""
    from kontext_studio.core.planner import ModelFootprint

    tr = pipe.transformer
    cfg = tr.config
    hidden = int(cfg.get("num_attention_heads", 24) * cfg.get("attention_head_dim", 128))
    blocks = [m for m in tr.modules() if type(m).__name__ in (getattr(tr, "_repeated_blocks", None) or [])]
    te = sum(_params(getattr(pipe, name, None)) for name in text_encoders)
    return ModelFootprint("loaded", title, _params(tr) / 1e9, te / 1e9, _params(getattr(pipe, "vae", None)) / 1e9,
                          hidden, max(1, len(blocks)))


# What the planner's GGUF choices become when the weights are not a GGUF file (GGUF is a file format).
_ON_LOAD = {"bf16": "bf16", "fp8": "fp8", "int8": "int8", "nf4": "nf4", "gguf-q8_0": "int8",
            "gguf-q6_k": "fp8", "gguf-q5_k": "fp8", "gguf-q4_k": "nf4"}


def _torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def apply_weight_precision(pipe: Any, text_encoders: list[str], device: str, precision: str,
                           text_encoder_precision: str, weights_info: dict[str, Any],
                           on_status: Any = None) -> dict[str, Any]:
    """Bring a freshly loaded pipeline to the requested precisions (``auto``: the planner's, on a GPU).

    Args:
        pipe: the pipeline, still on the CPU.
        text_encoders: attribute names of its text encoders.
        device: where it will run.
        precision, text_encoder_precision: ``auto``, ``bf16``, ``fp8``, ``int8`` or ``nf4``.
        weights_info: what ``load_transformer_file`` said about the transformer's file.
        on_status: receives a line saying what was chosen.

    Returns:
        ``weights_info`` with the precisions applied (for the recipe).

    Raises:
        WeightsFormatError: a precision that cannot run here.
    """
    info = dict(weights_info)
    notes: list[str] = []
    quantized_file = info.get("format") in ("gguf", "fp8 checkpoint")
    if "auto" in (precision, text_encoder_precision) and device.startswith("cuda"):
        from kontext_studio.core.planner import Plan, PlanDoesNotFit, plan_for, this_machine

        plan: Plan | None
        try:
            plan = plan_for(pipeline_footprint(pipe, text_encoders), this_machine())
        except PlanDoesNotFit as exc:
            plan = exc.smallest
            notes.append(str(exc))
        if plan is not None:
            info["plan"] = plan.summary()
            if precision == "auto":
                precision = _ON_LOAD[plan.precision.value]
                if precision == "int8" and not _torchao_available():
                    precision = "fp8"
                if plan.precision.value.startswith("gguf-") and plan.precision.value != "gguf-q8_0":
                    notes.append(f"the memory plan calls for {plan.precision.value}: write it once with "
                                 f"`kontext quantize --format {plan.precision.value[5:]}`; {precision} meanwhile")
            if text_encoder_precision == "auto":
                te = plan.text_encoder_precision.value
                text_encoder_precision = "int8" if te == "int8" and _torchao_available() else (
                    "fp8" if te in ("int8", "fp8") else "bf16")
    precision = "bf16" if precision == "auto" else precision
    text_encoder_precision = "bf16" if text_encoder_precision == "auto" else text_encoder_precision
    if not quantized_file and precision != "bf16":
        apply_precision(pipe.transformer, precision)
        info["precision"] = precision
    if text_encoder_precision != "bf16":
        for name in text_encoders:
            module = getattr(pipe, name, None)
            if module is not None and _params(module) > 0:
                apply_precision(module, text_encoder_precision)
        info["text_encoder_precision"] = text_encoder_precision
    if notes:
        info["notes"] = notes
    if on_status is not None and (precision != "bf16" or text_encoder_precision != "bf16"):
        on_status(f"weights: transformer {info.get('precision')}, text encoders {text_encoder_precision}")
    return info


def weight_bytes(module: Any) -> int:
    """Bytes the module's parameters and buffers occupy as stored (quantized tensors at their packed size)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
