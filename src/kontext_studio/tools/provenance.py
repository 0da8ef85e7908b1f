"""Inspect provenance: what a file says about where it came from (our recipe, IPTC marks, C2PA manifests).

Reads only what is in the file; nothing is sent anywhere. The answer is in words for people (``summary``) and
as fields for scripts.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from kontext_studio.core.recipe import IPTC_SOURCE_TYPE, RECIPE_KEY, _from_xmp
from kontext_studio.tools.base import ToolParams

IPTC_TYPES = {
    "trainedAlgorithmicMedia": "made by a generative AI model",
    "compositeWithTrainedAlgorithmicMedia": "a composite that includes AI-generated parts",
    "algorithmicallyEnhanced": "enhanced by an algorithm",
    "digitalCapture": "a digital photograph",
    "compositeSynthetic": "a composite of synthetic elements",
}


@dataclass(frozen=True)
class InspectParams(ToolParams):
    """The inspect tool takes no parameters."""


def _xmp_text(info: dict[str, Any]) -> str:
    for key in ("xmp", "XML:com.adobe.xmp"):
        v = info.get(key)
        if v:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return ""


def _c2pa(data: bytes, mime: str) -> dict[str, Any] | None:
    """The C2PA manifest store and its validation, when the c2pa library is installed and the file has one."""
    if b"c2pa" not in data and b"jumb" not in data:
        return None
    try:
        import c2pa
    except ImportError:
        return {"present": True, "validated": None,
                "note": "the file seems to carry content credentials (C2PA); install c2pa-python to read them"}
    try:
        with c2pa.Reader(mime, io.BytesIO(data)) as reader:
            store = json.loads(reader.json())
    except Exception as exc:  # the library raises its own error types for absent or broken manifests
        return {"present": False, "error": str(exc)[:300]}
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    status = store.get("validation_status") or []
    return {"present": True, "claim_generator": active.get("claim_generator"),
            "title": active.get("title"), "validated": not any("fail" in str(s.get("code", "")).lower()
                                                                 or "mismatch" in str(s.get("code", "")).lower()
                                                                 for s in status),
            "validation_status": [s.get("code") for s in status][:20],
            "actions": [a.get("action") for assertion in active.get("assertions", [])
                        if assertion.get("label", "").startswith("c2pa.actions")
                        for a in assertion.get("data", {}).get("actions", [])]}


def inspect_provenance(data: bytes, image: Image.Image | None = None) -> dict[str, Any]:
    """Say whether and how a picture was AI-generated or edited, from the marks it carries.

    Args:
        data: the file's bytes (C2PA manifests live in the file, not in the decoded pixels).
        image: the decoded picture, if already opened (its metadata is read from ``info``).

    Returns:
        ``summary`` (one or two sentences), ``ai_generated`` (True, False or None when the file says nothing),
        ``recipe`` (our edit recipe: model, instruction, seed), ``iptc_source_type``, ``c2pa``.
    """
    img = image if image is not None else Image.open(io.BytesIO(data))
    info: dict[str, Any] = {str(k): v for k, v in img.info.items()}
    recipe: dict[str, Any] | None = None
    if RECIPE_KEY in info:
        try:
            recipe = json.loads(info[RECIPE_KEY])
        except ValueError:
            recipe = None
    xmp = _xmp_text(info)
    if recipe is None and xmp:
        try:
            recipe = _from_xmp(xmp)
        except Exception:  # a damaged XMP packet is reported as "no recipe", not an error
            recipe = None
    source_type = None
    for code in IPTC_TYPES:
        if f"digitalsourcetype/{code}" in xmp:
            source_type = code
            break
    mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "AVIF": "image/avif",
            "HEIF": "image/heif"}.get(img.format or "", "image/png")
    c2pa_report = _c2pa(data, mime)
    ai: bool | None = None
    parts: list[str] = []
    if c2pa_report and c2pa_report.get("present"):
        actions = [a for a in c2pa_report.get("actions") or [] if a]
        valid = c2pa_report.get("validated")
        state = "valid" if valid else ("NOT valid (the file was changed after signing)" if valid is False
                                       else "unchecked")
        parts.append(f"Content credentials (C2PA) are present and {state}"
                     + (f"; actions: {', '.join(actions)}" if actions else "") + ".")
    if recipe:
        ai = True
        model = (recipe.get("model") or {}).get("source") or recipe.get("tier") or "a Kontext model"
        instruction = recipe.get("instruction") or recipe.get("prompt")
        parts.append(f"Edited with Kontext Studio ({model})" + (f": \u201c{instruction}\u201d" if instruction else "")
                     + ".")
    if source_type:
        ai = ai or source_type in ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")
        if ai is False and source_type == "digitalCapture":
            ai = False
        parts.append(f"Its IPTC digital source type says it is {IPTC_TYPES[source_type]}.")
    elif IPTC_SOURCE_TYPE in xmp:
        ai = True
    if not parts:
        parts.append("The file carries no provenance marks (no recipe, IPTC source type or content credentials): "
                     "nothing says whether it was AI-generated or edited, which does not prove it was not.")
    return {"summary": " ".join(parts), "ai_generated": ai, "recipe": recipe, "iptc_source_type": source_type,
            "c2pa": c2pa_report}
