"""Geometry: preferred working sizes, aspect-ratio parsing and the geometry lock. Pure functions.

Kontext was trained on about 1 MP at a fixed list of sizes. The engine always runs the model at one of
them ("snaps"), then gives the user back exactly what they asked for: the input's W x H, or the requested
ratio. Every resize is described in words so the result can report it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.types import GeometryMode

MATCH_INPUT = "match_input_image"

# (width, height) at about 1 MP, multiples of 16, aspect 3:7 ... 7:3 (the sizes Kontext was trained on).
PREFERRED_1MP: tuple[tuple[int, int], ...] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip

# Ratios offered as presets (BFL's list); any W:H between 21:9 and 9:21 is accepted.
ASPECT_PRESETS: tuple[str, ...] = (
    "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21",
)  # fmt: skip
MIN_RATIO = Fraction(9, 21)
MAX_RATIO = Fraction(21, 9)
MULTIPLE = 16  # VAE 8x downsampling times the 2x2 token patches


def preferred_sizes(resolution: int = 1024) -> tuple[tuple[int, int], ...]:
    """The preferred sizes for a model whose square working size is ``resolution``.

    Args:
        resolution: side of the square size (1024 for the real model; the tiny test model uses 128).

    Returns:
        (width, height) pairs, multiples of 16, ordered from tall to wide.
    """
    if resolution == 1024:
        return PREFERRED_1MP
    scale = resolution / 1024
    sizes: list[tuple[int, int]] = []
    for w, h in PREFERRED_1MP:
        size = (max(MULTIPLE, round(w * scale / MULTIPLE) * MULTIPLE),
                max(MULTIPLE, round(h * scale / MULTIPLE) * MULTIPLE))  # fmt: skip
        if size not in sizes:
            sizes.append(size)
    return tuple(sizes)


def nearest_preferred(aspect: float, resolution: int = 1024) -> tuple[int, int]:
    """The preferred size whose aspect ratio (w/h) is closest to ``aspect`` (ties: first listed)."""
    return min(preferred_sizes(resolution), key=lambda s: abs(aspect - s[0] / s[1]))


def parse_aspect_ratio(value: str) -> Fraction | None:
    """Parse ``match_input_image`` (returns None) or ``"W:H"`` within 21:9 ... 9:21.

    Raises:
        InvalidRequest: for anything else, listing the accepted forms.
    """
    text = str(value).strip().lower()
    if text in (MATCH_INPUT, "match_input", "input", ""):
        return None
    parts = text.replace("x", ":").replace("/", ":").split(":")
    try:
        w, h = (int(p) for p in parts)
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise InvalidRequest(
            f"aspect_ratio must be 'match_input_image' or 'W:H' such as {', '.join(ASPECT_PRESETS)}; "
            f"got {value!r}",
            field="aspect_ratio",
        ) from None
    ratio = Fraction(w, h)
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise InvalidRequest(
            f"aspect_ratio must be between 21:9 and 9:21, got {value!r}; crop the input or pick a preset "
            f"({', '.join(ASPECT_PRESETS)})",
            field="aspect_ratio",
        )
    return ratio


def exact_ratio_size(ratio: Fraction, area: int) -> tuple[int, int]:
    """The largest size with exactly ``ratio`` (w/h) and at most ``area`` pixels."""
    a, b = ratio.numerator, ratio.denominator
    k = max(1, math.isqrt(area // (a * b)))
    if a * k < 2 or b * k < 2:  # absurdly small areas: keep the ratio approximately
        k = max(2 // min(a, b), 1)
    return a * k, b * k


@dataclass(frozen=True)
class GeometryPlan:
    """Where the model works and what the user gets back."""

    model_size: tuple[int, int]
    output_size: tuple[int, int]
    warnings: tuple[str, ...]


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def plan_output(
    input_size: tuple[int, int],
    aspect_ratio: str,
    geometry: GeometryMode,
    resolution: int = 1024,
    explicit: tuple[int, int] | None = None,
) -> GeometryPlan:
    """Decide the model's working size and the output size for an edit.

    Args:
        input_size: (width, height) of the first reference, after EXIF orientation.
        aspect_ratio: ``match_input_image`` or ``"W:H"``.
        geometry: ``lock`` returns exactly the input size / requested ratio; ``native`` the model size.
        resolution: the model's square working size.
        explicit: an exact (width, height) asked for; it wins over ``aspect_ratio``.

    Returns:
        A GeometryPlan whose warnings describe each resize.

    Raises:
        InvalidRequest: for an aspect ratio outside 21:9 ... 9:21 or not in W:H form.
    """
    ratio = parse_aspect_ratio(aspect_ratio)
    warnings: list[str] = []
    if explicit is not None:
        model = nearest_preferred(explicit[0] / explicit[1], resolution)
        wanted = explicit
        what = f"size {_fmt(explicit)}"
    elif ratio is None:
        model = nearest_preferred(input_size[0] / input_size[1], resolution)
        wanted = input_size
        what = f"input {_fmt(input_size)}"
    else:
        model = nearest_preferred(float(ratio), resolution)
        wanted = exact_ratio_size(ratio, model[0] * model[1])
        what = f"aspect ratio {ratio.numerator}:{ratio.denominator}"
    output = wanted if geometry is GeometryMode.LOCK else model
    if model != wanted:
        if output == model:
            warnings.append(
                f"{what} snapped to {_fmt(model)} for the model; output left at {_fmt(model)} (geometry native)"
            )
        else:
            warnings.append(f"{what} snapped to {_fmt(model)} for the model; output restored to {_fmt(output)}")
    return GeometryPlan(model_size=model, output_size=output, warnings=tuple(warnings))


def reference_size(size: tuple[int, int], resolution: int = 1024) -> tuple[int, int]:
    """The working size a reference image is resized to before encoding (nearest preferred)."""
    return nearest_preferred(size[0] / size[1], resolution)


def plan_generate(aspect_ratio: str, geometry: GeometryMode, resolution: int = 1024,
                  explicit: tuple[int, int] | None = None) -> GeometryPlan:
    """Sizes for text-to-image: ``explicit`` (width, height) if given, else the ratio (square by default).

    Raises:
        InvalidRequest: for an aspect ratio outside 21:9 ... 9:21 or not in W:H form.
    """
    ratio = parse_aspect_ratio(aspect_ratio)
    side = resolution
    if explicit is not None or ratio is not None:
        return plan_output((side, side), aspect_ratio, geometry, resolution, explicit=explicit)
    return plan_output((side, side), "1:1", geometry, resolution)
