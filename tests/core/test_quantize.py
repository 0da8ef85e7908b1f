"""Quantized weights on the tiny model: GGUF block encoders, GGUF and fp8 files that load and edit, on-load
quantization, and clear errors for damaged files and files of another family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_studio.core.quantize import (
    QuantFormat,
    WeightsFormatError,
    apply_precision,
    dequantize_array,
    inspect_gguf,
    load_gguf_transformer,
    load_transformer_file,
    parse_format,
    quantize_array,
    write_fp8,
    write_gguf,
)
from tests.conftest import noise_image

GGUF_FORMATS = [f for f in QuantFormat if f.is_gguf]
# Bytes per value of each format (block bytes / block size) and the relative error bound of its encoder on
# Gaussian weights.
BYTES_PER_VALUE = {"q8_0": 34 / 32, "q6_k": 210 / 256, "q5_k": 176 / 256, "q4_k": 144 / 256}
MAX_RELATIVE_ERROR = {"q8_0": 0.01, "q6_k": 0.03, "q5_k": 0.06, "q4_k": 0.12}


@pytest.fixture(scope="module")
def transformer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_model_dir / "transformer")


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("fmt", GGUF_FORMATS, ids=lambda f: f.value)
def test_block_encoders_decode_with_the_gguf_package_and_diffusers(fmt: QuantFormat) -> None:
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    x = (np.random.default_rng(0).standard_normal((16, 512)) * 0.05).astype(np.float32)
    raw, qtype = quantize_array(x, fmt)
    assert qtype.name == fmt.value.upper()
    assert raw.nbytes == pytest.approx(x.size * BYTES_PER_VALUE[fmt.value])
    ours = dequantize_array(raw, qtype).reshape(x.shape)
    theirs = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(raw), quant_type=qtype)).float().numpy()
    assert np.abs(ours - theirs.reshape(x.shape)).max() < 1e-3
    assert np.abs(ours - x).mean() / np.abs(x).mean() < MAX_RELATIVE_ERROR[fmt.value]


def test_rows_that_do_not_fill_a_block_fall_back_like_llama_cpp() -> None:
    x = np.random.default_rng(1).standard_normal((4, 96)).astype(np.float32)
    assert quantize_array(x, QuantFormat.Q4_K)[1].name == "Q5_0"
    assert quantize_array(x, QuantFormat.Q6_K)[1].name == "Q8_0"
    assert quantize_array(np.ones((2, 20), np.float32), QuantFormat.Q8_0)[1].name == "BF16"


@pytest.mark.parametrize("fmt", GGUF_FORMATS, ids=lambda f: f.value)
def test_gguf_file_loads_with_quantized_layers(fmt: QuantFormat, transformer, tiny_model_dir: Path,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    path = write_gguf(transformer, tmp_path / f"t-{fmt.value}.gguf", fmt, "dev")
    info = inspect_gguf(path)
    assert info.architecture == "flux" and info.layout == "diffusers"
    assert info.tensor_count == len(transformer.state_dict())
    loaded = load_gguf_transformer(FluxTransformer2DModel, path, tiny_model_dir, torch.float32)
    assert type(loaded.transformer_blocks[0].attn.to_q).__name__ == "GGUFLinear"


def test_q8_0_edit_is_close_to_full_precision(tiny_model_dir: Path, transformer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kontext_studio.core.backends.diffusers_kontext import DiffusersKontextBackend
    from kontext_studio.core.engine import Editor
    from kontext_studio.core.types import EditRequest, Reference
    from kontext_studio.core.weights import ModelSource

    gguf = write_gguf(transformer, tmp_path / "q8.gguf", QuantFormat.Q8_0)
    img = noise_image(128, 96, seed=3)
    request = EditRequest([Reference(img)], "make it snowy", seed=5, steps=3, pixel_lock="off")
    full = Editor({"diffusers": DiffusersKontextBackend(ModelSource.parse(str(tiny_model_dir)))}).edit(request)
    backend = DiffusersKontextBackend(ModelSource.parse(str(gguf), base=str(tiny_model_dir)))
    quant = Editor({"diffusers": backend}).edit(request)
    assert quant.image.size == full.image.size == (128, 96)
    assert quant.recipe["model"]["weights"]["format"] == "gguf"
    assert quant.recipe["model"]["weights"]["precision"] == "gguf-q8_0"
    assert 30 < psnr(quant.image, full.image) < float("inf")


def test_fp8_checkpoint_loads_and_stays_fp8(transformer, tiny_model_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from diffusers import FluxTransformer2DModel

    path = write_fp8(transformer, tmp_path / "t-fp8.safetensors")
    model, info = load_transformer_file(FluxTransformer2DModel, path, tiny_model_dir, torch.float32)
    assert info == {"format": "fp8 checkpoint", "precision": "fp8"}
    q = model.transformer_blocks[0].attn.to_q.weight
    assert q.dtype == torch.float8_e4m3fn
    expected = transformer.transformer_blocks[0].attn.to_q.weight.to(torch.float8_e4m3fn)
    assert torch.equal(q.float(), expected.float())


def test_fp8_scaled_checkpoint_applies_its_scales(transformer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    from kontext_studio.core.quantize import read_fp8_state_dict

    w = transformer.transformer_blocks[0].attn.to_q.weight.detach()
    scale = w.abs().max() / 448
    save_file({"a.weight": (w / scale).to(torch.float8_e4m3fn), "a.scale_weight": scale.reshape(1)},
              str(tmp_path / "scaled.safetensors"))
    state = read_fp8_state_dict(tmp_path / "scaled.safetensors", torch.float32)
    assert list(state) == ["a.weight"]
    assert (state["a.weight"] - w).abs().max() < 0.07 * w.abs().max()


def test_plain_checkpoints_are_left_to_the_caller(tmp_path: Path, transformer) -> None:  # type: ignore[no-untyped-def]
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    model, info = load_transformer_file(FluxTransformer2DModel, tmp_path / "plain.safetensors", tmp_path,
                                        torch.float32)
    assert model is None and info["precision"] == "as stored"


def test_damaged_gguf_files_are_named(tmp_path: Path, transformer) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(WeightsFormatError, match="not a GGUF file"):
        inspect_gguf(bad)
    good = write_gguf(transformer, tmp_path / "good.gguf", QuantFormat.Q8_0)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(WeightsFormatError, match=r"damaged GGUF file.*quantize it again"):
        inspect_gguf(cut)
    with pytest.raises(WeightsFormatError, match="not found"):
        inspect_gguf(tmp_path / "missing.gguf")


def test_a_gguf_of_another_family_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel

    torch.manual_seed(0)
    flux2 = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    timestep_guidance_channels=32, axes_dims_rope=[4, 4, 4, 4])
    path = write_gguf(flux2, tmp_path / "klein.gguf", QuantFormat.Q8_0)
    assert inspect_gguf(path).architecture == "flux2"
    with pytest.raises(WeightsFormatError, match=r"holds a FLUX.2 transformer, but this model is FLUX.1"):
        load_gguf_transformer(FluxTransformer2DModel, path, tiny_model_dir, torch.float32)


def test_a_gguf_of_another_size_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    wider = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                   pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8])
    path = write_gguf(wider, tmp_path / "wider.gguf", QuantFormat.Q8_0)
    with pytest.raises(WeightsFormatError, match="does not fit this model's transformer"):
        load_gguf_transformer(FluxTransformer2DModel, path, tiny_model_dir, torch.float32)


def test_on_load_precisions(transformer) -> None:  # type: ignore[no-untyped-def]
    import copy

    x = torch.randn(2, 64)
    linear = copy.deepcopy(transformer.x_embedder)
    ref = linear(x)
    assert apply_precision(copy.deepcopy(linear), "bf16") == "full precision"
    fp8 = copy.deepcopy(transformer)
    assert "fp8" in apply_precision(fp8, "fp8")
    assert fp8.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn
    pytest.importorskip("torchao")
    int8 = torch.nn.Sequential(copy.deepcopy(linear))
    assert "int8" in apply_precision(int8, "int8")
    assert (int8(x) - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without an NVIDIA GPU")
def test_nf4_without_cuda_names_the_alternative(transformer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WeightsFormatError, match=r"only on NVIDIA GPUs.*q4_k"):
        apply_precision(transformer, "nf4")
    with pytest.raises(WeightsFormatError, match="precision must be"):
        apply_precision(transformer, "int3")


def test_format_names() -> None:
    assert parse_format("Q4_K") is QuantFormat.Q4_K and parse_format("gguf-q8_0") is QuantFormat.Q8_0
    with pytest.raises(WeightsFormatError, match="q8_0, q6_k"):
        parse_format("q2_k")
