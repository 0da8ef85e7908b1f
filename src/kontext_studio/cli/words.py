"""Scores in words: what the identity and drift numbers mean for the picture, not which algorithm ran."""

from __future__ import annotations

from typing import Any


def identity_line(identity: dict[str, Any] | None) -> str | None:
    """One line about whether the edit kept the subject, or None when nothing was scored.

    A face is compared as a face ("same person"); a product or object by how much of its surface detail
    reappears ("the same object"). The method names stay in ``--json``.
    """
    if not identity:
        return None
    sim = identity.get("similarity")
    if sim is None:
        reason = (identity.get("details") or {}).get("reason") or "nothing to compare"
        return f"likeness not measured: {reason}"
    tries = identity.get("candidates") or []
    extra = f", best of {len(tries)} seeds" if len(tries) > 1 else ""
    passed = identity.get("passed")
    if identity.get("measured"):
        verdict = {True: "the same person", False: "looks like a different person",
                   None: "unclear whether it is the same person"}[passed]
        return f"face: {verdict} (similarity {sim:.2f}; 0.50 or more is the same person{extra})"
    verdict = {True: "the object looks the same as in the reference",
               False: "the object looks different from the reference",
               None: "unclear whether the object is kept"}[passed]
    return f"subject: {verdict} (match {sim:.2f} of 1{extra})"


def drift_value(drift: dict[str, Any] | None) -> float | None:
    """How far a chain of edits has moved from the original: 0 = not at all, 1 = nothing left of it."""
    if not drift:
        return None
    if drift.get("drift") is not None:
        return float(drift["drift"])
    sim = drift.get("similarity")
    return None if sim is None else round(min(1.0, max(0.0, 1.0 - float(sim))), 4)


def drift_line(chain: dict[str, Any] | None) -> str | None:
    """``drift from the original after 3 edits: 0.12 (0 = unchanged, 1 = nothing of it left)`` or None."""
    if not chain or not chain.get("drift"):
        return None
    value = drift_value(chain["drift"])
    if value is None:
        return None
    edits = chain.get("turn")
    after = f" after {edits} edits" if edits else ""
    return f"drift from the original{after}: {value:.2f} (0 = unchanged, 1 = nothing of it left)"


def speed_lines(report: dict[str, Any] | None) -> list[str]:
    """A ``speed:`` line saying what an acceleration profile turned on, then one line per part it could not use
    here and why; empty when the edit ran stock with no step cache (or on a hosted model: ``report`` None)."""
    from kontext_studio.core.acceleration import in_words

    said = in_words(report)
    if said is None:
        return []
    summary, fallbacks = said
    return [f"speed: {summary}"] + [f"  not used: {why}" for why in fallbacks]
