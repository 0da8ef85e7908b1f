"""A FAKE edit backend for service and UI tests: it produces no real edit and loads no model.

``FakeBackend`` behaves like a backend from the outside (steps with progress, cancel between steps,
model failures on demand, ``model_info`` for the recipe) but its "edit" is a cheap deterministic picture
derived from the plan: the first reference resized to ``plan.model_size``, tinted by a colour drawn from
the seed, with a band at the bottom whose colour is a hash of the instruction. So the same plan always
gives identical pixels, another seed or instruction gives other pixels, and a test can tell from the
output which instruction produced it. Nothing in it says anything about image quality.

Register it under the name ``fake``: ``Editor({"fake": FakeBackend()})``. The Editor falls back to the
``fake`` backend for every tier whose own backend is absent, so dev, fast, pro and max all run on it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from kontext_studio.core.acceleration import AccelerationReport
from kontext_studio.core.backends.base import (
    CancelFn,
    EditBackend,
    GenerationOutput,
    GenerationPlan,
    ProgressFn,
)
from kontext_studio.core.errors import Canceled, KontextError

DEFAULT_FAIL_TRIGGER = "[fail]"
BAND_FRACTION = 8  # the instruction band is 1/8 of the height: visible, and most of the image stays the reference


class SimulatedModelFailure(KontextError):
    """The fake backend's stand-in for a model that failed mid-generation (CUDA error, NaNs, API 500)."""

    code = "model_failed"
    exit_code = 4


class FakeBackend(EditBackend):
    """A fake backend: deterministic pixels from the plan, optional sleeps, cancel and failures.

    Args:
        step_seconds: sleep per denoising step (0 for instant runs; the chaos soak uses 0.1-0.4 s so a
            20-step job takes 2-8 s).
        resolution: the side of the square working size the engine plans for (1024 like the real model;
            smaller values make tests faster).
        fail_with: an exception to raise from every ``generate`` call (None: no forced failure).
        fail_at_step: how many steps complete before ``fail_with`` or the trigger fires (0: before the
            first step), so tests can see a failure after some progress.
        fail_trigger: an instruction containing this text raises ``SimulatedModelFailure`` (None: off).
            Lets one test submit a mix of good and failing jobs through the normal API.

    Attributes:
        calls: how many times ``generate`` was entered (thread-safe), for tests that count executions.
        last_plan: the most recent plan, so a test can inspect what the engine decided.
    """

    name = "fake"

    def __init__(self, step_seconds: float = 0.0, resolution: int = 1024, fail_with: Exception | None = None,
                 fail_at_step: int = 0, fail_trigger: str | None = DEFAULT_FAIL_TRIGGER):
        if step_seconds < 0:
            raise ValueError(f"step_seconds must be >= 0, got {step_seconds}")
        if resolution < 64:
            raise ValueError(f"resolution must be at least 64, got {resolution}")
        self.step_seconds = float(step_seconds)
        self._resolution = int(resolution)
        self.fail_with = fail_with
        self.fail_at_step = int(fail_at_step)
        self.fail_trigger = fail_trigger
        self.calls = 0
        self.last_plan: GenerationPlan | None = None
        # The service may call one backend from several worker threads; the counter must not lose updates.
        self._lock = threading.Lock()

    @property
    def resolution(self) -> int:
        return self._resolution

    def model_info(self) -> dict[str, Any]:
        """What the recipe records: unmistakably a fake, so no output can pass for a real edit."""
        return {
            "backend": self.name,
            "source": "fake",
            "kind": "fake",
            "random_weights": True,
            "resolution": self._resolution,
            "note": "FakeBackend: deterministic test pixels, not a model output",
        }

    def _failure(self, plan: GenerationPlan) -> Exception | None:
        if self.fail_with is not None:
            return self.fail_with
        if self.fail_trigger and self.fail_trigger in plan.instruction:
            return SimulatedModelFailure(
                f"simulated model failure (the instruction contains {self.fail_trigger!r})")
        return None

    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        """Run the fake generation: ``plan.steps`` steps (sleeping ``step_seconds`` each), then the picture.

        Cancel and progress follow the diffusers backend exactly: ``cancel`` is polled before the first
        step and after each step but the last; ``on_step(i, total)`` is called after step ``i`` (1-based).

        Args:
            plan: what to generate; ``references[0]``, ``model_size``, ``seed``, ``instruction`` and
                ``steps`` are used.
            on_step: progress callback ``(steps done, total)``.
            cancel: returns True to stop at the next step boundary.

        Returns:
            A GenerationOutput at ``plan.model_size`` with ``denoise`` and ``decode`` timings.

        Raises:
            Canceled: ``cancel()`` returned True between steps.
            SimulatedModelFailure: the instruction contains ``fail_trigger``.
            Exception: ``fail_with``, when set.
        """
        with self._lock:
            self.calls += 1
        self.last_plan = plan
        failure = self._failure(plan)
        total = max(1, int(plan.steps))
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if cancel is not None and cancel():
            raise Canceled("canceled before the first step")
        for i in range(total):
            if failure is not None and i >= self.fail_at_step:
                raise failure
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if on_step is not None:
                on_step(i + 1, total)
            if cancel is not None and i + 1 < total and cancel():
                raise Canceled(f"canceled after step {i + 1} of {total}")
        if failure is not None:  # fail_at_step >= steps: fail at the end, after all progress was reported
            raise failure
        timings["denoise"] = time.perf_counter() - t
        t = time.perf_counter()
        image = render(plan)
        timings["decode"] = time.perf_counter() - t
        # The profile as asked, with nothing to accelerate: the fake says so as a real backend names a fallback.
        acceleration = AccelerationReport(plan.acceleration or "stock", step_cache=plan.step_cache,
                                          step_cache_threshold=plan.step_cache_threshold,
                                          fallbacks=["fake backend: no model to accelerate"])
        info = {"loras": [{"path": lo.path, "weight": lo.weight} for lo in plan.loras], "fake": True,
                "step_cache": plan.step_cache, "acceleration": acceleration.as_dict()}
        return GenerationOutput(image=image, timings=timings, info=info,
                                warnings=["fake backend: the output is a test pattern, not an edit"])


def _instruction_colour(instruction: str) -> tuple[int, int, int]:
    # sha256 rather than hash(): str hashes are salted per process, and outputs must match across workers.
    digest = hashlib.sha256(instruction.encode("utf-8")).digest()
    return digest[0], digest[1], digest[2]


def render(plan: GenerationPlan) -> Image.Image:
    """The fake "edit" of a plan: a pure function of (first reference, model size, seed, instruction).

    Args:
        plan: the generation plan.

    Returns:
        An RGB image of exactly ``plan.model_size``.
    """
    width, height = plan.model_size
    if plan.references:
        base = plan.references[0].image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(base, dtype=np.int16)
    else:
        pixels = np.full((height, width, 3), 128, dtype=np.int16)
    # A strong per-seed tint (±48 per channel) so different seeds differ in every pixel, not just a few.
    tint = np.random.default_rng(int(plan.seed) % 2**32).integers(-48, 49, size=3, dtype=np.int16)
    if not tint.any():
        tint[0] = 1  # seed whose tint is all zeros would equal the unedited reference
    pixels = np.clip(pixels + tint, 0, 255).astype(np.uint8)
    band = max(1, height // BAND_FRACTION)
    pixels[height - band:, :, :] = np.asarray(_instruction_colour(plan.instruction), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")
