"""What the engine asks of a fidelity analyser. ``kontext_studio.analysis`` provides the real one
(dlib identity, reference checker, pixel lock) and a fake; the engine works without any."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


@dataclass
class IdentityScore:
    """How well the output keeps the reference's subject.

    Attributes:
        similarity: in [0, 1]; 0.5 is the same-person threshold for faces. None when not measurable.
        measured: whether faces were compared (False: no face, the feature score stands in or nothing does).
        passed: the verdict (same person, or consistent object); None when nothing could be measured.
        details: the analyser's full report (JSON-ready).
    """

    similarity: float | None
    measured: bool
    passed: bool | None
    method: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class LockOutcome:
    """The pixel lock's result: the repaired image and what was done, in words and numbers."""

    image: Image.Image
    applied: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class Fidelity(Protocol):
    """Analysis the engine runs around an edit."""

    def check_reference(self, image: Image.Image, sha256: str) -> list[dict[str, Any]]:
        """Findings for one reference: dicts with code, severity, message, fix."""
        ...

    def identity(self, reference: Image.Image, output: Image.Image) -> IdentityScore:
        """Compare the subject of ``reference`` with ``output``."""
        ...

    def lock(self, original: Image.Image, edited: Image.Image, mode: str,
             mask: Image.Image | None = None) -> LockOutcome:
        """Undo drift outside the edited region (``mode`` auto or off; ``mask`` white = edit here)."""
        ...
