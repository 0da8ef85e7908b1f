"""The engine's fidelity analyser: dlib identity / feature consistency, reference checker, pixel lock."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from PIL import Image

from kontext_studio.core.fidelity_base import IdentityScore, LockOutcome

_CHECK_CACHE = 32


class AnalysisFidelity:
    """Implements ``core.fidelity_base.Fidelity`` with the analysis package.

    Args:
        face_model: optional path to an ArcFace-class ONNX model; dlib's ResNet otherwise.
    """

    def __init__(self, face_model: str | None = None):
        self.face_model = face_model
        self._scorer: Any = None
        self._checks: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def _embedder(self) -> Any:
        if self.face_model and self._scorer is None:
            from kontext_studio.analysis.identity import OnnxFaceEmbedder

            self._scorer = OnnxFaceEmbedder(self.face_model)
        return self._scorer

    def check_reference(self, image: Image.Image, sha256: str) -> list[dict[str, Any]]:
        from kontext_studio.analysis.reference_check import check_reference

        if sha256 in self._checks:  # a series checks its references once
            self._checks.move_to_end(sha256)
            return self._checks[sha256]
        found = [f.as_dict() for f in check_reference(image).findings]
        self._checks[sha256] = found
        while len(self._checks) > _CHECK_CACHE:
            self._checks.popitem(last=False)
        return found

    def identity(self, reference: Image.Image, output: Image.Image) -> IdentityScore:
        from kontext_studio.analysis.identity import compare_identity

        report = compare_identity(reference, output, scorer=self._embedder())
        details = report.as_dict()
        if report.measured:
            return IdentityScore(report.similarity, True, report.same_person, report.method, details)
        consistency = report.consistency
        if consistency is not None and consistency.measured:
            return IdentityScore(consistency.score, False, consistency.consistent, consistency.method, details)
        return IdentityScore(None, False, None, report.method, details)

    def lock(self, original: Image.Image, edited: Image.Image, mode: str,
             mask: Image.Image | None = None) -> LockOutcome:
        from kontext_studio.analysis.pixel_lock import pixel_lock

        result = pixel_lock(original, edited, mode=mode, mask=mask)
        return LockOutcome(result.image, result.applied, result.reason, result.as_dict())
