"""Vocabulary shared by the analysis tools: findings with a severity and a plain-language fix."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"  # the edit will very likely fail to keep the subject; fix before spending credits


@dataclass(frozen=True)
class Finding:
    """One problem found in an input.

    Attributes:
        code: stable identifier (e.g. ``low_resolution``, ``blur``, ``redescribes_subject``).
        severity: info, warning or error.
        message: what was found, with the measured value.
        fix: what to do about it, in plain language.
        span: for prompt findings, the (start, end) character range the finding is about.
    """

    code: str
    severity: Severity
    message: str
    fix: str
    span: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.message} — {self.fix}"


# dlib's HOG face detector takes about a second to build and is not safe for concurrent calls: every tool
# (reference check, identity) shares one instance, and runs it under DETECTOR_LOCK.
DETECTOR_LOCK = threading.Lock()
_detector: Any = None
_detector_build_lock = threading.Lock()


def face_detector() -> Any:
    """dlib's frontal face detector, built once per process; call it while holding ``DETECTOR_LOCK``.

    Raises:
        ImportError: dlib is not installed.
    """
    global _detector
    if _detector is None:
        with _detector_build_lock:
            if _detector is None:
                import dlib

                _detector = dlib.get_frontal_face_detector()
    return _detector
