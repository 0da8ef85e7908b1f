"""A fake fidelity analyser for service and UI tests: instant, deterministic, no dlib or OpenCV.

Its identity similarity is a plain pixel statistic (1 - mean absolute difference at 64x64), so a test
can steer it by the images it feeds in. Named as a fake: it measures nothing about faces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from kontext_studio.core.fidelity_base import IdentityScore, LockOutcome


class FakeFidelity:
    """Implements ``core.fidelity_base.Fidelity`` with trivial statistics."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"check_reference": 0, "identity": 0, "lock": 0}

    def check_reference(self, image: Image.Image, sha256: str) -> list[dict[str, Any]]:
        self.calls["check_reference"] += 1
        if min(image.size) < 1024:
            return [{"code": "low_resolution", "severity": "warning",
                     "message": f"short side {min(image.size)} px", "fix": "use a larger photo", "span": None}]
        return []

    def identity(self, reference: Image.Image, output: Image.Image) -> IdentityScore:
        self.calls["identity"] += 1
        a = np.asarray(reference.convert("RGB").resize((64, 64)), dtype=np.float64)
        b = np.asarray(output.convert("RGB").resize((64, 64)), dtype=np.float64)
        similarity = float(1.0 - np.abs(a - b).mean() / 255.0)
        return IdentityScore(similarity, True, similarity >= 0.5, "fake-pixels", {"similarity": similarity})

    def lock(self, original: Image.Image, edited: Image.Image, mode: str,
             mask: Image.Image | None = None) -> LockOutcome:
        self.calls["lock"] += 1
        return LockOutcome(edited, False, "fake analyser: the pixel lock is not applied", {"mode": mode})
