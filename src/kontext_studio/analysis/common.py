"""Vocabulary shared by the analysis tools: findings with a severity and a plain-language fix."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How much a finding matters: ``info`` (for your information), ``warning`` (likely to cost quality),
    ``problem`` (a photo finding that will very likely spoil the edit: fix it before spending credits).
    The prompt coach calls its blocking findings ``error``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"  # the edit will very likely fail to keep the subject; fix before spending credits
    PROBLEM = "problem"  # the reference checker's word for the same level


SEVERITY_RANK = {Severity.PROBLEM: 0, Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True)
class Finding:
    """One problem found in an input.

    Attributes:
        code: stable identifier (e.g. ``low_resolution``, ``blur``, ``redescribes_subject``).
        severity: info, warning, or problem (error for the prompt coach).
        message: what was found, in plain words.
        fix: what to do about it, in plain language.
        span: for prompt findings, the (start, end) character range the finding is about.
        detail: the measured value and how it was measured (None when the message says it all).
    """

    code: str
    severity: Severity
    message: str
    fix: str
    span: tuple[int, int] | None = None
    detail: str | None = None  # the measurement behind the finding, for those who ask (``--details``, JSON)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        if data["detail"] is None:
            del data["detail"]
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
