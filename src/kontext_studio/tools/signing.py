"""Content credentials on tool outputs: a signed C2PA manifest naming the tool, its settings and its inputs.

Only tools that change pixels sign (info, inspect and strip-metadata hand back the same picture). Signing uses
the installation's certificate (see :mod:`kontext_studio.core.provenance`); where none is configured or the
format cannot hold a manifest (AVIF), the bytes go out unsigned and the note says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from kontext_studio.tools.base import ToolResult, ToolSpec
from kontext_studio.tools.models import MODELS


@dataclass(frozen=True)
class SignedBytes:
    """What to write, and whether it carries content credentials (``note`` says why not)."""

    data: bytes
    signed: bool
    note: str | None = None


def model_used(spec: ToolSpec, result: ToolResult) -> str | None:
    """The trained model that made the result's pixels, if one did (the photo upscale mode uses none)."""
    if spec.model is None or (spec.name == "upscale" and result.params.get("mode") == "photo"):
        return None
    return MODELS[spec.model].title


def sign_tool_result(data: bytes, fmt: str, spec: ToolSpec, result: ToolResult,
                     inputs: Sequence[str | Path | bytes | Image.Image]) -> SignedBytes:
    """Sign an encoded tool output when the tool changed pixels.

    Args:
        data: the encoded output.
        fmt: its format (png, jpeg, webp, avif).
        spec: the tool.
        result: what it returned (its parameters are recorded in the manifest).
        inputs: the tool's inputs, the one it worked on first (its own manifest becomes the parent).

    Returns:
        The bytes to write.

    Raises:
        CredentialsError: the configured certificate or key cannot be used.
    """
    if not result.changes_pixels:
        return SignedBytes(data, False, "the pixels are unchanged: nothing new to sign")
    try:
        from kontext_studio.core.provenance.signing import sign_tool_output
    except ImportError:  # the credentials extra (cryptography) is not installed
        return SignedBytes(data, False, "content credentials are not installed")
    model = model_used(spec, result)
    signed = sign_tool_output(data, fmt, spec.name, list(inputs), ai=model is not None, model=model,
                              description=spec.title, parameters=result.params)
    return SignedBytes(signed.data, signed.signed, signed.note)
