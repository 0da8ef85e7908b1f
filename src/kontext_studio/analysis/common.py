"""Vocabulary shared by the analysis tools: findings with a severity and a plain-language fix."""

from __future__ import annotations

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
