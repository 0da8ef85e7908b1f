"""Every local family on its tiny model: stock parity (one and several references, text to image), limits,
geometry, series caches, replay, cancel, progress, LoRA through the family's loader, and the warm pool."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kontext_studio.analysis.fake import FakeFidelity
from kontext_studio.core.catalogue import get_model
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import Canceled, InvalidRequest, LoraError
from kontext_studio.core.types import EditRequest, LoraSpec, Reference
from kontext_studio.core.warm import WarmPool
from tests.conftest import noise_image

STEPS = 2
PROMPT = "put her on a beach"
# family → (catalogue key, stock pipeline class, backend class path)
FAMILIES = {
    "klein": ("klein-4b", "Flux2KleinPipeline", "diffusers_flux2.Flux2KleinBackend"),
    "flux2": ("flux2-dev", "Flux2Pipeline", "diffusers_flux2.Flux2DevBackend"),
    "qwen": ("qwen-edit", "QwenImageEditPlusPipeline", "diffusers_qwen.QwenImageEditBackend"),
}


def _backend_class(path: str) -> Any:
    import importlib

    module, name = path.split(".")
    return getattr(importlib.import_module(f"kontext_studio.core.backends.{module}"), name)


def _stock(family: str, folder: Path) -> Any:
    import diffusers

    cls = getattr(diffusers, FAMILIES[family][1] if family in FAMILIES else "FluxKontextPipeline")
    extra: dict[str, Any] = {}
    if family == "qwen":
        from kontext_studio.core.backends.qwen_processor import load_processor

        processor = load_processor(folder)
        extra = {"processor": processor} if processor is not None else {}
    pipe = cls.from_pretrained(folder, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock_call(family: str, pipe: Any, images: list[Image.Image], size: tuple[int, int], seed: int,
                guidance: float) -> Image.Image:
    """The stock diffusers call the engine must reproduce exactly."""
    args: dict[str, Any] = {"prompt": PROMPT, "height": size[1], "width": size[0], "num_inference_steps": STEPS,
                            "generator": torch.Generator().manual_seed(seed)}
    context: Any = contextlib.nullcontext()
    if family == "qwen":
        from kontext_studio.core.backends.diffusers_qwen import NEGATIVE_PROMPT, stock_sizes

        args.update(image=images, negative_prompt=NEGATIVE_PROMPT, true_cfg_scale=guidance)
        context = stock_sizes(128)  # the tiny model's working size scales the stock reference sizes
    else:
        args.update(image=images or None, guidance_scale=guidance)
    with context:
        return pipe(**args).images[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def backends(tiny_family_dirs: dict[str, Path]) -> dict[str, Any]:
    from kontext_studio.core.weights import ModelSource

    out = {}
    for family, (key, _cls, path) in FAMILIES.items():
        b = _backend_class(path)(get_model(key), ModelSource.parse(str(tiny_family_dirs[family])))
        b.load()
        out[family] = b
    return out


@pytest.fixture()
def editor(backends: dict[str, Any]) -> Editor:
    for b in backends.values():
        b.loras.apply([])
    return Editor({FAMILIES[f][0]: b for f, b in backends.items()})


def run(editor: Editor, family: str, refs: list[Any], **kw: Any) -> Any:
    kw.setdefault("steps", STEPS)
    kw.setdefault("seed", 7)
    kw.setdefault("pixel_lock", "off")
    return editor.edit(EditRequest(references=[Reference(r) for r in refs], instruction=str(kw.pop("prompt", PROMPT)),
                                   model=FAMILIES[family][0], **kw))


def px(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_reference_is_bit_identical_to_the_stock_pipeline(family: str, editor: Editor,
                                                               tiny_family_dirs: dict[str, Path]) -> None:
    img = noise_image(144, 112, seed=3)  # a preferred size of the tiny model: nothing is resized
    ours = run(editor, family, [img], geometry="native", seed=21)
    expected = _stock_call(family, _stock(family, tiny_family_dirs[family]), [img], (144, 112), 21,
                           get_model(FAMILIES[family][0]).guidance or 1.0)
    assert ours.image.size == (144, 112) and ours.warnings == []
    assert np.array_equal(px(ours.image), px(expected))
    assert ours.recipe["strategy"] == "native" and ours.recipe["model_name"] == get_model(FAMILIES[family][0]).name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_several_references_natively_equal_the_stock_pipeline_with_the_same_list(
        family: str, editor: Editor, tiny_family_dirs: dict[str, Path]) -> None:
    refs = [noise_image(128, 128, seed=1), noise_image(144, 112, seed=2)]
    ours = run(editor, family, refs, geometry="native", seed=5)
    expected = _stock_call(family, _stock(family, tiny_family_dirs[family]), refs, (128, 128), 5,
                           get_model(FAMILIES[family][0]).guidance or 1.0)
    assert np.array_equal(px(ours.image), px(expected))
    single = run(editor, family, refs[:1], geometry="native", seed=5)
    assert not np.array_equal(px(ours.image), px(single.image))  # the second reference reached the model


@pytest.mark.parametrize("family", ["klein", "flux2"])
def test_text_to_image_equals_the_stock_pipeline(family: str, editor: Editor,
                                                 tiny_family_dirs: dict[str, Path]) -> None:
    ours = run(editor, family, [], aspect_ratio="16:9", geometry="native", seed=9)
    assert ours.image.size == (176, 96)  # the tiny model's preferred size closest to 16:9
    expected = _stock_call(family, _stock(family, tiny_family_dirs[family]), [], (176, 96), 9,
                           get_model(FAMILIES[family][0]).guidance or 1.0)
    assert np.array_equal(px(ours.image), px(expected))
    assert ours.recipe["references"] == []


def test_text_to_image_honours_an_exact_width_and_height(editor: Editor) -> None:
    out = run(editor, "klein", [], width=300, height=200)
    assert out.image.size == (300, 200)


def test_edit_only_model_refuses_to_generate(editor: Editor) -> None:
    with pytest.raises(InvalidRequest, match="only edits: give at least one reference") as caught:
        run(editor, "qwen", [])
    assert caught.value.field == "references"


@pytest.mark.parametrize(("family", "limit"), [("klein", 4), ("flux2", 6), ("qwen", 3)])
def test_too_many_references_names_the_model_limit(family: str, limit: int, editor: Editor) -> None:
    with pytest.raises(InvalidRequest, match=f"takes at most {limit} reference images, got {limit + 1}"):
        run(editor, family, [noise_image(64, 64)] * (limit + 1))


def test_kontext_strategies_are_refused_on_native_families(editor: Editor) -> None:
    with pytest.raises(InvalidRequest, match="takes several references as native"):
        run(editor, "klein", [noise_image(64, 64)] * 2, strategy="offset")


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("size", [(131, 97), (1000, 700)])
def test_geometry_lock_returns_exactly_the_input_size(family: str, size: tuple[int, int], editor: Editor) -> None:
    assert run(editor, family, [noise_image(*size)]).image.size == size


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_seed_same_pixels_other_seed_other_pixels(family: str, editor: Editor) -> None:
    img = noise_image(128, 128)
    a, b, c = run(editor, family, [img], seed=1), run(editor, family, [img], seed=1), run(editor, family, [img], seed=2)
    assert np.array_equal(px(a.image), px(b.image)) and not np.array_equal(px(a.image), px(c.image))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_series_encodes_each_reference_and_prompt_once(family: str, editor: Editor, backends: dict[str, Any]) -> None:
    img = noise_image(128, 128, seed=11)
    before = dict(backends[family].caches)
    request = EditRequest([Reference(img)], "x", model=FAMILIES[family][0], seed=3, steps=STEPS, pixel_lock="off")
    series = editor.series(request, ["make it snowy", "make it rainy", "make it snowy"])
    after = backends[family].caches
    assert after["reference_encodes"] - before["reference_encodes"] == 1
    assert np.array_equal(px(series.results[0].image), px(series.results[2].image))
    # klein and FLUX.2 encode the text alone; Qwen's encoder sees text and pictures: two prompts either way.
    assert after["prompt_encodes"] - before["prompt_encodes"] == (2 if family != "qwen" else 3)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_replay_reproduces_identical_pixels(family: str, editor: Editor, tmp_path: Path) -> None:
    ref = tmp_path / "ref.png"
    noise_image(120, 90).save(ref)
    first = run(editor, family, [ref], seed=None)
    saved = first.save(tmp_path / "out.png")
    again, recipe = editor.replay(saved)
    assert recipe["model_name"] == get_model(FAMILIES[family][0]).name
    assert np.array_equal(px(Image.open(saved)), px(again.image))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cancel_and_progress(family: str, editor: Editor) -> None:
    seen: list[tuple[str, int, int]] = []
    out = editor.edit(EditRequest([Reference(noise_image(64, 64))], PROMPT, model=FAMILIES[family][0], steps=3,
                                  seed=1, pixel_lock="off"), on_progress=lambda p, d, t: seen.append((p, d, t)))
    assert [s for s in seen if s[0] == "denoise"] == [("denoise", i, 3) for i in (1, 2, 3)] and out.image
    polls: list[int] = []

    def cancel() -> bool:  # False before the first step, True after it
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(Canceled, match="after step 1 of 3"):
        editor.edit(EditRequest([Reference(noise_image(64, 64))], PROMPT, model=FAMILIES[family][0], steps=3, seed=1),
                    cancel=cancel)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_identity_guard_and_candidates_run_on_every_family(family: str, backends: dict[str, Any]) -> None:
    fidelity = FakeFidelity()
    editor = Editor({FAMILIES[family][0]: backends[family]}, fidelity=fidelity)
    out = editor.edit(EditRequest([Reference(noise_image(128, 128))], PROMPT, model=FAMILIES[family][0], steps=STEPS,
                                  seed=4, identity_guard=0.99, candidates=3))
    assert len(out.identity["candidates"]) == 3 and out.pixel_lock is not None
    assert out.seed in (4, 5, 6)


def _family_lora(family: str, folder: Path, target: Path) -> Path:
    """A random non-zero adapter trained for nothing, saved with the family's own diffusers saver."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = _stock(family, folder)
    targets = {"klein": ["to_k", "to_qkv_mlp_proj"], "flux2": ["to_k", "to_qkv_mlp_proj"],
               "qwen": ["to_q", "to_k", "to_v"], "kontext": ["to_q", "to_k", "to_v"]}[family]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    layers = get_peft_model_state_dict(pipe.transformer)
    type(pipe).save_lora_weights(str(target.parent), transformer_lora_layers=layers, weight_name=target.name)
    return target


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_loads_through_the_family_loader_and_changes_the_edit(
        family: str, editor: Editor, tiny_family_dirs: dict[str, Path], tmp_path: Path) -> None:
    lora = _family_lora(family, tiny_family_dirs[family], tmp_path / f"{family}.safetensors")
    img = noise_image(128, 128, seed=8)
    plain = run(editor, family, [img], geometry="native")
    styled = run(editor, family, [img], geometry="native", loras=[LoraSpec(str(lora), 1.0)])
    assert not np.array_equal(px(plain.image), px(styled.image))
    assert styled.recipe["loras"][0]["format"] == "diffusers"
    stock = _stock(family, tiny_family_dirs[family])
    stock.load_lora_weights(str(lora))
    expected = _stock_call(family, stock, [img], (128, 128), 7, get_model(FAMILIES[family][0]).guidance or 1.0)
    assert np.array_equal(px(styled.image), px(expected))
    back = run(editor, family, [img], geometry="native")
    assert np.array_equal(px(plain.image), px(back.image))  # switched off again


def test_a_lora_of_another_family_is_refused(editor: Editor, tiny_family_dirs: dict[str, Path], tmp_path: Path) -> None:
    kontext_lora = _family_lora("kontext", tiny_family_dirs["kontext"], tmp_path / "kontext.safetensors")
    with pytest.raises(LoraError, match=r"does not fit this model.*Was it trained for FLUX.2 \[klein\] 4B"):
        run(editor, "klein", [noise_image(64, 64)], loras=[LoraSpec(str(kontext_lora))])
    run(editor, "klein", [noise_image(64, 64)])  # the model still edits afterwards


def test_switching_models_evicts_the_least_recently_used(tiny_family_dirs: dict[str, Path]) -> None:
    from kontext_studio.bootstrap import build_editor
    from kontext_studio.settings import Settings

    settings = Settings(model=str(tiny_family_dirs["kontext"]), allow_download=False, warm_models=1,
                        weights=(("klein-4b", str(tiny_family_dirs["klein"])),))
    editor = build_editor(settings)
    editor.fidelity = None
    img = noise_image(64, 64)
    first = editor.edit(EditRequest([Reference(img)], PROMPT, tier="dev", steps=STEPS, seed=1))
    editor.edit(EditRequest([Reference(img)], PROMPT, model="black-forest-labs/flux-2-klein-4b", steps=STEPS, seed=1))
    assert editor.warm.names == ["klein-4b"] and editor.warm.evictions == 1
    again = editor.edit(EditRequest([Reference(img)], PROMPT, tier="dev", steps=STEPS, seed=1))
    assert np.array_equal(px(first.image), px(again.image))  # reloaded after eviction, same pixels
    assert editor.warm.names == ["diffusers"] and editor.warm.evictions == 2


def test_warm_pool_keeps_what_fits_in_free_memory() -> None:
    class Sized:
        def __init__(self, gib: float) -> None:
            self.bytes = int(gib * 2**30)

        def estimated_bytes(self) -> int:
            return self.bytes

    free = {"now": 40 * 2**30}
    pool = WarmPool(free_memory=lambda: free["now"], headroom=0.0)
    assert pool.admit("a", Sized(10)) == [] and pool.admit("b", Sized(10)) == []
    free["now"] = 5 * 2**30  # a and b are loaded now: little is left
    pool.touch("a")
    assert pool.admit("c", Sized(12)) == ["b"]  # b was used least recently; freeing it makes room
    assert pool.names == ["a", "c"]
    assert WarmPool(max_models=2).admit("x", Sized(1)) == []
