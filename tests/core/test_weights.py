"""Model sources, locating weights, fingerprints, and BFL's single-file checkpoint on the tiny model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kontext_studio.core.backends.diffusers_kontext import DiffusersKontextBackend
from kontext_studio.core.errors import WeightsNotFound
from kontext_studio.core.registry import DEFAULT_MODEL, SINGLE_FILE_NAME
from kontext_studio.core.weights import ModelSource, fingerprint, locate
from kontext_studio.testing.single_file import (
    build_tiny_single_file,
    tiny_single_file_support,
    to_bfl_state_dict,
)
from tests.conftest import noise_image


def _how_to(message: str) -> None:
    assert "HF_TOKEN" in message
    assert "licence" in message
    assert SINGLE_FILE_NAME in message


@pytest.fixture(scope="module")
def bfl_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model's transformer as BFL's single file, next to nothing else."""
    path, base = build_tiny_single_file(tmp_path_factory.mktemp("single"), base_dir=tiny_model_dir)
    assert base == tiny_model_dir
    return path


# -- ModelSource.parse --------------------------------------------------------------------------------
def test_parse_folder(tmp_path: Path) -> None:
    src = ModelSource.parse(str(tmp_path))
    assert (src.kind, src.location, src.base) == ("folder", str(tmp_path), None)
    # Path-like text is a folder even before it exists (``locate`` then reports it missing).
    assert ModelSource.parse("./models/kontext").kind == "folder"
    assert ModelSource.parse(str(tmp_path / "a" / "b")).kind == "folder"


def test_parse_single_file(tmp_path: Path) -> None:
    f = tmp_path / SINGLE_FILE_NAME
    src = ModelSource.parse(str(f))
    assert (src.kind, src.location, src.base) == ("single_file", str(f), DEFAULT_MODEL)
    with_base = ModelSource.parse(str(f), base=str(tmp_path))
    assert with_base.base == str(tmp_path)
    assert ModelSource.parse(str(tmp_path / "model.SFT")).kind == "single_file"
    assert "single file" in with_base.describe() and str(tmp_path) in with_base.describe()


def test_parse_hub_id_is_only_parsed() -> None:
    src = ModelSource.parse("acme/kontext-finetune", revision="main")  # parsed only, never downloaded
    assert (src.kind, src.location, src.revision) == ("hub", "acme/kontext-finetune", "main")
    default = ModelSource.parse(None)
    assert (default.kind, default.location) == ("hub", DEFAULT_MODEL)


# -- locate -------------------------------------------------------------------------------------------
def test_locate_missing_hub_repo_explains_how_to_get_it() -> None:
    status = locate(ModelSource.parse("kontext-studio-tests/no-such-model"), download=False)
    assert not status.found and status.path is None
    assert "kontext-studio-tests/no-such-model" in status.message
    assert "https://huggingface.co/kontext-studio-tests/no-such-model" in status.message
    _how_to(status.message)


def test_locate_missing_folder(tmp_path: Path) -> None:
    status = locate(ModelSource.parse(str(tmp_path / "nowhere")))
    assert not status.found
    assert "model_index.json" in status.message
    _how_to(status.message)


def test_locate_folder_without_model_index(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    status = locate(ModelSource.parse(str(tmp_path)))
    assert not status.found
    assert str(tmp_path) in status.message and "model_index.json missing" in status.message


def test_locate_tiny_folder(tiny_model_dir: Path) -> None:
    status = locate(ModelSource.parse(str(tiny_model_dir)))
    assert status.found and status.path == str(tiny_model_dir)
    assert status.random_weights and status.resolution == 128


def test_locate_missing_single_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    status = locate(ModelSource.parse(str(tmp_path / SINGLE_FILE_NAME), base=str(tiny_model_dir)))
    assert not status.found
    assert "checkpoint not found" in status.message and SINGLE_FILE_NAME in status.message
    _how_to(status.message)


def test_locate_single_file_needs_its_base(bfl_file: Path, tmp_path: Path) -> None:
    status = locate(ModelSource.parse(str(bfl_file), base=str(tmp_path / "no-base")))
    assert not status.found
    assert "needs the other parts" in status.message


def test_locate_single_file_with_base(bfl_file: Path, tiny_model_dir: Path) -> None:
    status = locate(ModelSource.parse(str(bfl_file), base=str(tiny_model_dir)))
    assert status.found and status.path == str(bfl_file)
    assert status.random_weights and status.resolution == 128  # from the base folder's marker


# -- WeightsNotFound from the backend -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hub", "folder", "single_file"])
def test_backend_load_raises_weights_not_found(kind: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    source = {
        "hub": ModelSource.parse("kontext-studio-tests/no-such-model"),
        "folder": ModelSource.parse(str(tmp_path / "nowhere")),
        "single_file": ModelSource.parse(str(tmp_path / SINGLE_FILE_NAME), base=str(tiny_model_dir)),
    }[kind]
    backend = DiffusersKontextBackend(source)
    with pytest.raises(WeightsNotFound) as info:
        backend.load()
    _how_to(str(info.value))
    assert info.value.code == "weights_not_found" and info.value.exit_code == 3
    assert backend.pipe is None


# -- fingerprint --------------------------------------------------------------------------------------
def test_fingerprint_of_a_file_is_its_sha256_and_cached(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights-v1")
    cache = tmp_path / "cache"
    first = fingerprint(f, cache)
    assert first == hashlib.sha256(b"weights-v1").hexdigest()
    assert fingerprint(f, cache) == first

    cache_file = cache / "hashes.json"
    entries = json.loads(cache_file.read_text())
    (key,) = entries
    assert key.startswith(str(f.resolve())) and entries[key] == first
    # The second call trusts the cache instead of re-reading the file: a doctored entry shows through.
    cache_file.write_text(json.dumps({key: "0" * 64}))
    assert fingerprint(f, cache) == "0" * 64

    # Changing the file (size and mtime) invalidates the entry.
    f.write_bytes(b"weights-version-2")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = fingerprint(f, cache)
    assert second == hashlib.sha256(b"weights-version-2").hexdigest() != first


def test_fingerprint_of_a_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "transformer" / "w.safetensors").write_bytes(b"abc")
    (model / ".hidden").write_text("ignored")
    first = fingerprint(model)
    assert first == fingerprint(model, tmp_path / "cache") == fingerprint(model, tmp_path / "cache")
    (model / ".hidden").write_text("still ignored")
    assert fingerprint(model) == first
    (model / "transformer" / "w.safetensors").write_bytes(b"abd")
    assert fingerprint(model) != first


# -- BFL single file ----------------------------------------------------------------------------------
def test_bfl_layout_is_the_inverse_of_diffusers_converter() -> None:
    """Round trip through diffusers' own converter at the 12B model's split widths (narrow tensors)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from kontext_studio.testing.tiny_model import tiny_components

    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in tiny_components()["transformer"].state_dict().items()}
    # diffusers' converter splits linear1 at the real width (3 x 3072 + 12288 rows); the columns can stay narrow.
    for kind, cols in (("weight", (2,)), ("bias", ())):
        for name in ("to_q", "to_k", "to_v"):
            state[f"single_transformer_blocks.0.attn.{name}.{kind}"] = torch.randn(3072, *cols)
        state[f"single_transformer_blocks.0.proj_mlp.{kind}"] = torch.randn(12288, *cols)

    bfl = to_bfl_state_dict(state)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.weight" in bfl
    assert not any(k.startswith(("transformer_blocks", "single_transformer_blocks", "time_text_embed")) for k in bfl)
    # Final modulation: diffusers keeps (scale, shift), BFL (shift, scale).
    half = state["norm_out.linear.weight"].shape[0] // 2
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"][:half], state["norm_out.linear.weight"][half:])

    back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def test_to_bfl_rejects_unknown_keys() -> None:
    from kontext_studio.testing.tiny_model import tiny_components

    state = tiny_components()["transformer"].state_dict()
    state["transformer_blocks.0.attn.to_q.lora_A.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="no BFL name"):
        to_bfl_state_dict(state)


def test_from_single_file_reproduces_the_tiny_transformer(bfl_file: Path, tiny_model_dir: Path) -> None:
    from diffusers import FluxTransformer2DModel

    original = FluxTransformer2DModel.from_pretrained(tiny_model_dir, subfolder="transformer").state_dict()
    with tiny_single_file_support():
        loaded = FluxTransformer2DModel.from_single_file(
            str(bfl_file), config=str(tiny_model_dir), subfolder="transformer", local_files_only=True
        ).state_dict()
    assert loaded.keys() == original.keys()
    for k, v in original.items():
        assert torch.equal(loaded[k], v), k

    # Without the width patch, diffusers' converter only knows the 12B model's width.
    with pytest.raises(RuntimeError, match="split"):
        FluxTransformer2DModel.from_single_file(str(bfl_file), config=str(tiny_model_dir), subfolder="transformer")


def test_single_file_edit_matches_folder_edit(bfl_file: Path, tiny_model_dir: Path, editor, tmp_path: Path) -> None:
    from kontext_studio.core.engine import Editor
    from kontext_studio.core.types import EditRequest, Reference

    image = noise_image(160, 128, seed=5)
    request = EditRequest(references=[Reference(image)], instruction="make the sky orange", seed=3, steps=2)

    backend = DiffusersKontextBackend(ModelSource.parse(str(bfl_file), base=str(tiny_model_dir)),
                                      cache_dir=tmp_path / "cache")
    with tiny_single_file_support():
        single = Editor({"diffusers": backend}).edit(request)
    folder = editor.edit(request)

    assert single.image.size == folder.image.size
    assert np.array_equal(np.asarray(single.image), np.asarray(folder.image))
    assert backend.stats["loads"] == 1

    model = single.recipe["model"]
    assert model["kind"] == "single_file"
    assert model["source"] == str(bfl_file) and model["base"] == str(tiny_model_dir)
    # the file's own hash, plus the base that supplied the text encoders and VAE
    file_hash, base_hash = model["fingerprint"].split("+base:")
    assert file_hash == "sha256:" + hashlib.sha256(bfl_file.read_bytes()).hexdigest()
    assert base_hash.startswith("sha256:") and len(base_hash) == len("sha256:") + 64
    assert model["random_weights"] is True and model["resolution"] == 128
    assert folder.recipe["model"]["kind"] == "folder"
    assert (tmp_path / "cache" / "hashes.json").is_file()
