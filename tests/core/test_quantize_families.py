"""GGUF and fp8 copies of the FLUX.2 and Qwen-Image-Edit tiny models load through their family backends and edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kontext_studio.core.catalogue import get_model
from kontext_studio.core.engine import Editor
from kontext_studio.core.quantize import QuantFormat, WeightsFormatError, write_fp8, write_gguf
from kontext_studio.core.types import EditRequest, Reference
from kontext_studio.core.weights import ModelSource
from tests.conftest import noise_image
from tests.core.test_families import FAMILIES, _backend_class


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fmt", [QuantFormat.Q8_0, QuantFormat.Q4_K, QuantFormat.FP8], ids=lambda f: f.value)
def test_quantized_transformer_file_edits_on_every_family(family: str, fmt: QuantFormat,
                                                          tiny_family_dirs: dict[str, Path], tmp_path: Path) -> None:
    import diffusers

    key, _pipeline, backend_path = FAMILIES[family]
    folder = tiny_family_dirs[family]
    cls_name = {"klein": "Flux2Transformer2DModel", "flux2": "Flux2Transformer2DModel",
                "qwen": "QwenImageTransformer2DModel"}[family]
    transformer = getattr(diffusers, cls_name).from_pretrained(folder / "transformer")
    path = tmp_path / f"t{fmt.suffix}"
    (write_gguf(transformer, path, fmt) if fmt.is_gguf else write_fp8(transformer, path))
    backend = _backend_class(backend_path)(get_model(key), ModelSource.parse(str(path), base=str(folder)))
    editor = Editor({key: backend})
    out = editor.edit(EditRequest([Reference(noise_image(96, 64))], "make it snowy", model=key, seed=2, steps=2,
                                  pixel_lock="off"))
    assert out.image.size == (96, 64)
    kinds = {type(m).__name__ for m in backend.pipe.transformer.modules()}
    weights = {p.dtype for p in backend.pipe.transformer.parameters()}
    assert "GGUFLinear" in kinds if fmt.is_gguf else torch.float8_e4m3fn in weights
    # The recipe says what ran: the file's format and both the file's and its base's fingerprints.
    model = out.recipe["model"]
    assert model["weights"]["format"] == ("gguf" if fmt.is_gguf else "fp8 checkpoint")
    # (the tiny model's rows are narrower than a K-quant block: Q4_K falls back to Q5_0 as llama.cpp does)
    assert model["weights"]["precision"].startswith("gguf-") if fmt.is_gguf else model["weights"]["precision"] == "fp8"
    assert model["fingerprint"].startswith("sha256:") and "+base:sha256:" in model["fingerprint"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_on_load_precision_reaches_every_family(family: str, tiny_family_dirs: dict[str, Path]) -> None:
    key, _pipeline, backend_path = FAMILIES[family]
    backend = _backend_class(backend_path)(get_model(key), ModelSource.parse(str(tiny_family_dirs[family])),
                                           precision="fp8", text_encoder_precision="fp8")
    out = Editor({key: backend}).edit(EditRequest([Reference(noise_image(64, 64))], "make it snowy", model=key,
                                                  seed=2, steps=2, pixel_lock="off"))
    weights = out.recipe["model"]["weights"]
    assert weights["precision"] == "fp8" and weights["text_encoder_precision"] == "fp8"
    assert torch.float8_e4m3fn in {p.dtype for p in backend.pipe.transformer.parameters()}
    assert torch.float8_e4m3fn in {p.dtype for p in backend.pipe.text_encoder.parameters()}


def test_a_kontext_gguf_is_refused_by_a_flux2_model(tiny_family_dirs: dict[str, Path], tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    kontext = FluxTransformer2DModel.from_pretrained(tiny_family_dirs["kontext"] / "transformer")
    path = write_gguf(kontext, tmp_path / "kontext.gguf", QuantFormat.Q8_0)
    key, _pipeline, backend_path = FAMILIES["klein"]
    backend = _backend_class(backend_path)(get_model(key),
                                           ModelSource.parse(str(path), base=str(tiny_family_dirs["klein"])))
    with pytest.raises(WeightsFormatError, match=r"holds a FLUX.1 \(Kontext\) transformer, but this model is FLUX.2"
                       r".*run this file as Kontext \[dev\] \(model dev\)"):
        backend.load()
