"""The fake backend (no model): determinism, progress, cancel, failures, and runs through the Editor."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from kontext_studio.core.backends.base import GenerationPlan, PreparedReference
from kontext_studio.core.backends.fake import FakeBackend, SimulatedModelFailure, render
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import Canceled, KontextError
from kontext_studio.core.multiref import Placement
from kontext_studio.core.types import EditRequest, Reference, Strategy
from tests.conftest import noise_image


def plan(seed: int = 1, instruction: str = "make it snowy", steps: int = 4,
         size: tuple[int, int] = (96, 64)) -> GenerationPlan:
    img = noise_image(120, 80)
    ref = PreparedReference(img, "0" * 64, img.size, Placement(1, 0, 0))
    return GenerationPlan(instruction=instruction, references=[ref], strategy=Strategy.STITCH, model_size=size,
                          steps=steps, guidance=2.5, seed=seed)


def px(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def test_same_plan_same_pixels_other_seed_or_instruction_differs() -> None:
    b = FakeBackend()
    a1, a2 = b.generate(plan(seed=3)).image, b.generate(plan(seed=3)).image
    other_seed = b.generate(plan(seed=4)).image
    other_text = b.generate(plan(seed=3, instruction="make it rainy")).image
    assert a1.size == (96, 64) and a1.mode == "RGB"
    assert np.array_equal(px(a1), px(a2))
    assert not np.array_equal(px(a1), px(other_seed))
    assert not np.array_equal(px(a1), px(other_text))
    # The instruction only changes the bottom band; the seed tint changes the picture above it.
    assert np.array_equal(px(a1)[:50], px(other_text)[:50])
    assert np.array_equal(px(render(plan(seed=3))), px(a1))
    assert b.calls == 4


def test_progress_is_reported_after_every_step() -> None:
    seen: list[tuple[int, int]] = []
    FakeBackend().generate(plan(steps=5), on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_cancel_mid_run_returns_quickly_with_canceled() -> None:
    b = FakeBackend(step_seconds=0.05)
    stop = threading.Event()
    seen: list[int] = []

    def on_step(i: int, _n: int) -> None:
        seen.append(i)
        if i == 2:
            stop.set()

    t = time.perf_counter()
    with pytest.raises(Canceled, match="after step 2 of 100"):
        b.generate(plan(steps=100), on_step=on_step, cancel=stop.is_set)
    assert time.perf_counter() - t < 1.0  # 100 steps would take 5 s
    assert seen == [1, 2]


def test_cancel_from_another_thread() -> None:
    b = FakeBackend(step_seconds=0.02)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    t = time.perf_counter()
    with pytest.raises(Canceled):
        b.generate(plan(steps=500), cancel=stop.is_set)
    assert time.perf_counter() - t < 1.0


def test_cancel_before_start() -> None:
    with pytest.raises(Canceled, match="before the first step"):
        FakeBackend().generate(plan(), cancel=lambda: True)


def test_instruction_trigger_simulates_a_model_failure() -> None:
    b = FakeBackend()
    with pytest.raises(SimulatedModelFailure) as info:
        b.generate(plan(instruction="make it snowy [fail]"))
    assert isinstance(info.value, KontextError) and info.value.code == "model_failed"
    b.generate(plan(instruction="make it snowy"))  # the same backend still works for other jobs
    off = FakeBackend(fail_trigger=None)
    off.generate(plan(instruction="[fail]"))


def test_fail_with_after_some_progress() -> None:
    seen: list[int] = []
    b = FakeBackend(fail_with=RuntimeError("CUDA error: an illegal memory access"), fail_at_step=2)
    with pytest.raises(RuntimeError, match="illegal memory"):
        b.generate(plan(steps=4), on_step=lambda i, _n: seen.append(i))
    assert seen == [1, 2]


def test_model_info_says_fake() -> None:
    b = FakeBackend(resolution=256)
    info = b.model_info()
    assert info["backend"] == "fake" and info["random_weights"] is True
    assert b.resolution == 256 and FakeBackend().resolution == 1024


@pytest.mark.parametrize("tier", ["dev", "pro", "fast", "max"])
def test_runs_through_the_editor_for_every_tier(tier: str) -> None:
    editor = Editor({"fake": FakeBackend(resolution=256)})
    img = noise_image(200, 150)
    steps: list[tuple[str, int, int]] = []
    req = EditRequest([Reference(img)], "put a hat on it", tier=tier, seed=9, steps=3)
    a = editor.edit(req, on_progress=lambda phase, i, n: steps.append((phase, i, n)))
    b = editor.edit(EditRequest([Reference(img)], "put a hat on it", tier=tier, seed=9, steps=3))
    c = editor.edit(EditRequest([Reference(img)], "put a hat on it", tier=tier, seed=10, steps=3))
    assert a.image.size == (200, 150)  # geometry lock: the engine restores the input size
    assert np.array_equal(px(a.image), px(b.image))
    assert not np.array_equal(px(a.image), px(c.image))
    assert a.recipe["model"]["backend"] == "fake" and a.recipe["tier"] == tier
    assert ("denoise", 3, 3) in steps and steps[-1] == ("done", 1, 1)


def test_editor_cancel_and_failure_propagate() -> None:
    editor = Editor({"fake": FakeBackend(resolution=128, step_seconds=0.01)})
    img = noise_image(64, 64)
    with pytest.raises(Canceled):
        editor.edit(EditRequest([Reference(img)], "x", tier="dev", steps=50), cancel=lambda: True)
    with pytest.raises(SimulatedModelFailure):
        editor.edit(EditRequest([Reference(img)], "x [fail]", tier="pro", steps=2))
