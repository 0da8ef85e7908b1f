"""What the studio's pages say about models, samples and first steps, in words for a browser user.

The service's model list speaks to API clients (and may name settings); the studio turns the same facts
into cards: price, speed class, references accepted, whether the licence allows commercial use, and, for a
model this server cannot run, why in plain words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_studio.core.registry import TierSpec

STATIC = Path(__file__).parent / "static"

# Speed class and licence per tier: [dev] weights are under a non-commercial licence; BFL's hosted
# endpoints are licensed for commercial use.
SPEED = {"fast": "fast", "dev": "standard", "pro": "fast (hosted)", "max": "slower (hosted)"}
COMMERCIAL = {"fast": False, "dev": False, "pro": True, "max": True}

EXAMPLES = (
    "make it a watercolour painting, keep the composition",
    "change the background to a sunny beach, keep the subject unchanged",
    "add a red knitted scarf, keep everything else the same",
)

T2I_REASON = ("Text-to-image (a picture from words alone) needs a model that generates without a photo; none is "
              "installed on this server yet, so start from a photo.")


# Routine adjustments the engine reports (resizes, snapping to the model's grid): notes, not warnings.
ROUTINE = re.compile(r"resized to|snapped to|stitched into|rotated upright|converted from 16-bit|filled with white|"
                     r"output restored", re.I)


def is_routine(warning: str) -> bool:
    """Whether an engine warning is a routine adjustment (shown as a note) rather than a real warning."""
    return bool(ROUTINE.search(warning))


@dataclass(frozen=True)
class Sample:
    """A sample photo shipped with the studio (from scikit-image's public-domain data set)."""

    name: str
    title: str
    url: str
    width: int
    height: int


def unavailable_reason(spec: TierSpec, *, settings_page: bool) -> str:
    """Why a model cannot run here, for someone in a browser (never a command-line flag or variable name)."""
    if spec.backend == "bfl_api":
        where = "an administrator can add one under Settings" if settings_page else \
            "ask the administrator of this server to add one"
        return f"Runs on Black Forest Labs' servers and needs their API key: {where}."
    return "This model's weights are not installed on this server; ask its administrator to install them."


def model_card(spec: TierSpec, *, configured: bool, free: bool, settings_page: bool = True) -> dict[str, Any]:
    """One model card's facts.

    Args:
        spec: the tier.
        configured: whether this server can run it.
        free: prices switched off.
        settings_page: whether the server has a settings page where an administrator can fix a missing key.

    Returns:
        A dict for the templates (name, title, price, description, speed, commercial, references, reason).
    """
    return {"name": spec.name, "title": spec.title, "price": 0 if free else spec.price_credits,
            "description": spec.description, "trades": spec.trades, "steps": spec.steps,
            "guidance": spec.guidance, "max_references": spec.max_references,
            "speed": SPEED.get(spec.name, "standard"), "commercial": COMMERCIAL.get(spec.name, False),
            "configured": configured,
            "reason": None if configured else unavailable_reason(spec, settings_page=settings_page)}


def samples() -> list[Sample]:
    """The sample photos under static/samples, with their sizes (so the page reserves their space)."""
    out = []
    for path in sorted((STATIC / "samples").glob("*.jpg")):
        with Image.open(path) as im:
            w, h = im.size
        out.append(Sample(path.stem, path.stem.replace("-", " "), f"/static/samples/{path.name}", w, h))
    return out
