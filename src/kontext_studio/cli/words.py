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


_STEP_CACHES = {"magcache": "MagCache", "taylorseer": "TaylorSeer", "first_block": "first-block"}


def speed_lines(report: dict[str, Any] | None) -> list[str]:
    """What an acceleration profile turned on, then what it could not use here and why (none for ``stock``).

    Args:
        report: the recipe's ``acceleration`` (None for hosted models).

    Returns:
        A ``speed:`` line and one line per fallback; empty when the edit ran stock with no step cache.
    """
    if not report or (report.get("profile") == "stock" and not report.get("step_cache")):
        return []
    on = []
    if report.get("attention") not in (None, "native"):
        on.append(f"{report['attention'].strip('_')} attention")
    if report.get("compiled"):
        on.append("compiled blocks")
    if report.get("fused_qkv"):
        on.append("fused QKV")
    if report.get("fp8"):
        on.append("fp8 matmuls")
    if report.get("step_cache"):
        on.append(f"{_STEP_CACHES.get(report['step_cache'], report['step_cache'])} step cache")
    lines = [f"speed: {report.get('profile')} profile ({', '.join(on) or 'nothing it speeds up runs here'})"]
    return lines + [f"  not used: {why}" for why in report.get("fallbacks") or []]
