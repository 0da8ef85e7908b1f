"""Inspect provenance (tool #20): our recipe, IPTC marks and C2PA content credentials, said in words.

A thin face over :func:`kontext_studio.core.provenance.inspect.inspect_provenance`, which reads manifests from
the file's bytes (they live in the file, not in the decoded pixels) and judges whether they validate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from kontext_studio.tools.base import ToolParams


@dataclass(frozen=True)
class InspectParams(ToolParams):
    """The inspect tool takes no parameters."""


def inspect_provenance(data: bytes, image: Image.Image | None = None) -> dict[str, Any]:
    """Say whether and how a picture was AI-generated or edited, and whether its content credentials validate.

    Args:
        data: the file's bytes; empty when only a decoded picture is at hand (then it is read as a PNG of
            its pixels, which carries no manifest).
        image: the decoded picture, used when ``data`` is empty.

    Returns:
        The report as data: ``summary`` (words for people), ``ai_generated``, ``credentials`` (trusted,
        unknown_issuer, invalid, none or unavailable), ``validates``, ``history``, ``recipe``...
    """
    from kontext_studio.core.provenance.inspect import inspect_provenance as inspect

    if not data and image is not None:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        data = buf.getvalue()
    return inspect(data).to_dict()
