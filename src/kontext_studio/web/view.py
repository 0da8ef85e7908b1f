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

from kontext_studio.core.catalogue import ModelEntry, get_model
from kontext_studio.service.models import ModelInfo

STATIC = Path(__file__).parent / "static"

# Speed class of the Kontext tiers (their step counts alone do not say it: Fast runs a step cache); other models
# are classed from their steps and where they run.
KONTEXT_SPEED = {"fast": "fast", "dev": "standard", "pro": "fast (hosted)", "max": "slower (hosted)"}

EXAMPLES = (
    "make it a watercolour painting, keep the composition",
    "change the background to a sunny beach, keep the subject unchanged",
    "add a red knitted scarf, keep everything else the same",
)

T2I_REASON = ("Text-to-image (a picture from words alone) needs a model that generates without a photo; none can "
              "run on this server, so start from a photo.")


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


def speed_class(entry: ModelEntry) -> str:
    """How fast a model feels, in a word or two (hosted ones say so)."""
    if entry.key in KONTEXT_SPEED:
        return KONTEXT_SPEED[entry.key]
    if not entry.local:
        return "standard (hosted)" if (entry.steps or 0) <= 30 else "slower (hosted)"
    steps = entry.steps or 28
    if steps <= 8:
        return "fast"
    return "slow" if steps >= 40 or (entry.memory_gb or 0) > 80 else "standard"


def unavailable_reason(info: ModelInfo, *, settings_page: bool) -> str:
    """Why a model cannot run here, for someone in a browser (never a command-line flag or variable name)."""
    if info.state == "failed":
        return "This model failed to start on this server; it is tried again in a moment."
    if info.spec.backend == "bfl_api":
        where = "an administrator can add one under Settings" if settings_page else \
            "ask the administrator of this server to add one"
        return f"Runs on Black Forest Labs' servers and needs their API key: {where}."
    return "This model's weights are not installed on this server; ask its administrator to install them."


def model_card(info: ModelInfo, *, free: bool, settings_page: bool = True) -> dict[str, Any]:
    """One model card's facts, from the catalogue entry the service lists.

    Args:
        info: the model as the service lists it (its catalogue entry, price and state here).
        free: prices switched off.
        settings_page: whether the server has a settings page where an administrator can fix a missing key.

    Returns:
        A dict for the templates: ``name`` (the short key, the form's value), ``model`` (the catalogue name
        the studio submits), title, price, description, speed, licence, commercial, references, whether it
        edits and generates, and, when it cannot run here, the reason.
    """
    entry = info.entry or get_model(info.spec.name)
    return {"name": entry.key, "model": entry.name, "title": entry.title, "price": 0 if free else info.price,
            "description": entry.description, "trades": entry.trades, "steps": entry.steps,
            "guidance": entry.guidance, "max_references": entry.max_references,
            "speed": speed_class(entry), "licence": entry.licence.name, "commercial": entry.licence.commercial,
            "edits": entry.can_edit, "generates": entry.can_generate, "hosted": not entry.local,
            "configured": info.configured, "state": info.state,
            "reason": None if info.configured else unavailable_reason(info, settings_page=settings_page)}


def samples() -> list[Sample]:
    """The sample photos under static/samples, with their sizes (so the page reserves their space)."""
    out = []
    for path in sorted((STATIC / "samples").glob("*.jpg")):
        with Image.open(path) as im:
            w, h = im.size
        out.append(Sample(path.stem, path.stem.replace("-", " "), f"/static/samples/{path.name}", w, h))
    return out
