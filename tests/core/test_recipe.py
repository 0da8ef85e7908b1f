from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import RecipeError
from kontext_studio.core.recipe import IPTC_SOURCE_TYPE, is_ai_marked, read_recipe, save_image_with_recipe
from kontext_studio.core.types import EditRequest, Reference
from tests.conftest import noise_image


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_recipe_and_ai_mark_survive_every_format(tmp_path: Path, suffix: str) -> None:
    recipe = {"instruction": "put <her> on a \"beach\" & more", "seed": 3, "nested": {"a": [1, 2]}}
    path = save_image_with_recipe(noise_image(64, 48), tmp_path / f"out{suffix}", recipe)
    assert read_recipe(path) == recipe
    assert is_ai_marked(path)
    assert IPTC_SOURCE_TYPE in path.read_bytes().decode("latin-1")


def test_images_without_a_recipe_are_explained(tmp_path: Path) -> None:
    p = tmp_path / "plain.png"
    noise_image(32, 32).save(p)
    with pytest.raises(RecipeError, match="carries no Kontext Studio recipe"):
        read_recipe(p)
    with pytest.raises(RecipeError, match="no such file"):
        read_recipe(tmp_path / "missing.png")


def test_recipe_records_everything_needed_to_reproduce(editor: Editor, tmp_path: Path) -> None:
    ref = tmp_path / "ref.png"
    noise_image(300, 200).save(ref)
    r = editor.edit(EditRequest([Reference(ref, "subject")], "make it snowy", seed=9, steps=2, aspect_ratio="4:3"))
    rec = r.recipe
    assert rec["seed"] == 9 and rec["steps"] == 2 and rec["guidance"] == 2.5 and rec["tier"] == "dev"
    assert rec["strategy"] == "stitch" and rec["geometry"] == "lock" and rec["aspect_ratio"] == "4:3"
    assert rec["references"][0]["path"] == str(ref.resolve()) and len(rec["references"][0]["sha256"]) == 64
    assert rec["references"][0]["role"] == "subject"
    assert rec["model"]["fingerprint"].startswith(("sha256:", "in-memory"))
    assert {"torch", "diffusers", "transformers"} <= set(rec["versions"])
    out = r.save(tmp_path / "out.png")
    assert read_recipe(out) == rec


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_replay_reproduces_identical_pixels(editor: Editor, tmp_path: Path, suffix: str) -> None:
    ref = tmp_path / "ref.png"
    noise_image(333, 517).save(ref)
    r = editor.edit(EditRequest([Reference(ref)], "in the snow", seed=12, steps=3,
                                output_format=suffix.strip(".").replace("jpg", "jpeg")))
    out = r.save(tmp_path / f"out{suffix}")
    again, original = editor.replay(out)
    assert original["seed"] == 12
    assert np.array_equal(np.asarray(again.image), np.asarray(r.image))
    replayed = again.save(tmp_path / f"again{suffix}")
    with Image.open(out) as a, Image.open(replayed) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_replay_needs_the_original_reference(editor: Editor, tmp_path: Path) -> None:
    ref = tmp_path / "ref.png"
    noise_image(200, 200).save(ref)
    out = editor.edit(EditRequest([Reference(ref)], "x", seed=1, steps=1)).save(tmp_path / "out.png")
    moved = tmp_path / "moved.png"
    ref.rename(moved)
    with pytest.raises(RecipeError, match="pass it with --ref"):
        editor.replay(out)
    other = tmp_path / "other.png"
    noise_image(200, 200, seed=5).save(other)
    with pytest.raises(RecipeError, match="not the image the edit used"):
        editor.replay(out, references=[str(other)])
    again, _ = editor.replay(out, references=[str(moved)])
    assert again.seed == 1

