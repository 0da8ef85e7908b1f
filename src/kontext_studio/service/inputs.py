"""Prediction inputs (BFL field names plus ours) → stored references → ``EditRequest``.

Validation happens at submit, before any credit is held or job queued: images are sniffed and stored
by content hash, every field is checked by building the EditRequest once. The worker rebuilds the same
request from the stored input, so a job survives a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Callable
from typing import Any

from kontext_studio.core.acceleration import PROFILES
from kontext_studio.core.catalogue import get_model
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.images import load_reference
from kontext_studio.core.types import EditRequest, Reference
from kontext_studio.service.security.text import check_text, check_tree
from kontext_studio.service.security.uploads import sniff_image, strip_private_metadata
from kontext_studio.service.storage.storage_base import Storage
from kontext_studio.service.training.loras import lora_specs

# BFL's names: input_image, input_image_2 ... input_image_8 (FLUX.2 takes eight; each model has its own limit).
IMAGE_FIELDS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
KNOWN_FIELDS = {*IMAGE_FIELDS, "prompt", "seed", "aspect_ratio", "width", "height", "output_format", "safety_tolerance",
                "prompt_upsampling", "num_inference_steps", "guidance", "strategy", "roles", "geometry",
                "identity_guard", "candidates", "pixel_lock", "lock_mask", "loras", "num_outputs", "acceleration",
                "draft"}
MAX_OUTPUTS = 4
FILE_PREFIX = "file:"
UPLOADS = "uploads/"
MAX_IMAGE_BYTES = 20 * 2**20
# Fields that must arrive as JSON strings (a number or object is refused, never stringified).
STRING_FIELDS = ("prompt", "aspect_ratio", "output_format", "strategy", "geometry", "pixel_lock")
MAX_INT = 2**63 - 1


def upload_key(data: bytes, kind: str) -> str:
    """Where an uploaded image is stored: by content hash, so the same bytes are stored once."""
    return f"{UPLOADS}{hashlib.sha256(data).hexdigest()}.{kind}"


def upload_sha256(key: str) -> str:
    """The content hash an upload key carries (the inverse of ``upload_key``)."""
    return key.removeprefix(UPLOADS).split(".", 1)[0]


def _decode_image(value: Any, field: str, storage: Storage, owns_file: Callable[[str], bool] | None = None,
                  fetch_url: Callable[[str, str], bytes] | None = None,
                  on_stored: Callable[[str, str, int], None] | None = None) -> str:
    """A stored reference key for a data URL / base64 string / uploaded file reference / image URL."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field}: give a data URL, base64 image or an uploaded file id", field=field)
    if value.startswith(FILE_PREFIX) or value.startswith(UPLOADS):
        key = value.removeprefix(FILE_PREFIX)
        if ".." in key.split("/") or "\\" in key or key.startswith("/"):
            raise InvalidRequest(f"{field}: {value[:80]!r} is not a file id; upload it with POST /v1/files",
                                 field=field)
        # Another user's file answers exactly like a missing one: ids reveal nothing across accounts.
        if not key.startswith(UPLOADS) or not storage.exists(key) or (owns_file is not None
                                                                          and not owns_file(key)):
            raise InvalidRequest(f"{field}: no uploaded file {value!r}; upload it with POST /v1/files", field=field)
        return key
    if value.startswith(("http://", "https://")):
        if fetch_url is None:
            raise InvalidRequest(f"{field}: image URLs are switched off on this server; send the image as a data "
                                 "URL or upload it with POST /v1/files", field=field)
        data = fetch_url(value, field)
    else:
        payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{field}: not valid base64 image data", field=field) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(f"{field}: the image is over {MAX_IMAGE_BYTES // 2**20} MB", field=field)
    kind = sniff_image(data)
    data = strip_private_metadata(data, keep_recipe=True)  # GPS and camera EXIF never reach storage
    key = upload_key(data, kind)
    if not storage.exists(key):
        storage.put(key, data)
    if on_stored is not None:
        on_stored(key, kind, len(data))
    return key


def normalize_input(raw: Any, tier: str, storage: Storage, owns_file: Callable[[str], bool] | None = None,
                    fetch_url: Callable[[str, str], bytes] | None = None,
                    on_stored: Callable[[str, str, int], None] | None = None) -> dict[str, Any]:
    """Check an input object and replace its images with stored keys.

    Args:
        raw: the prediction's ``input`` as the client sent it.
        tier: the tier it runs on (decides limits such as the number of references).
        storage: where images are stored.
        owns_file: whether the submitting user uploaded the file under a key (``None``: any stored upload
            is accepted, for trusted callers such as the CLI and tests).
        fetch_url: fetches an image URL (``security.remote_images.ImageFetcher``); ``None``: URLs are refused.
        on_stored: told ``(key, kind, size)`` of each image that arrived inline or by URL, so the service can
            record it as the submitter's file (a recipe's ``file:`` ids then work for them in a later submit).

    Returns:
        The input with images replaced by storage keys, ready to store with the job.

    Raises:
        InvalidRequest: the field, the value and the fix (HTTP 422).
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("input must be a JSON object with at least prompt and input_image", field="input")
    unknown = sorted(set(raw) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequest(f"input: unknown field(s) {', '.join(unknown)}; accepted: "
                             f"{', '.join(sorted(KNOWN_FIELDS))}",
                             field="input")
    for name, value in raw.items():  # errors name the input field itself (prompt, roles, ...)
        check_text(str(name), "input")
        check_tree(value, name)
    for name in STRING_FIELDS:
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise InvalidRequest(f"{name} must be a string, got {type(raw[name]).__name__} {raw[name]!r}"[:300],
                                 field=name)
    if isinstance(raw.get("prompt"), str):
        check_text(raw["prompt"], "prompt")
    body = {k: v for k, v in raw.items() if k not in IMAGE_FIELDS and v is not None}
    images = [raw.get(f) for f in IMAGE_FIELDS]
    entry = get_model(tier, "model")
    acceleration, _ = speed_settings(body, tier)  # before any image is stored
    if acceleration is not None:  # stored as the engine reads it: " Lossless" and "lossless" are one profile
        body["acceleration"] = acceleration
    if not images[0] and (any(images) or not entry.can_generate):
        raise InvalidRequest(f"input_image: the reference image is required ({entry.title} edits a picture; models "
                             "that generate from the prompt alone are listed at /v1/models)", field="input_image")
    entry.check_references(sum(1 for v in images if v), "input_image")  # before anything is stored
    body["images"] = [_decode_image(v, f, storage, owns_file, fetch_url, on_stored)
                      for f, v in zip(IMAGE_FIELDS, images, strict=True) if v]
    if body.get("lock_mask"):
        body["lock_mask"] = _decode_image(body["lock_mask"], "lock_mask", storage, owns_file, fetch_url, on_stored)
        _check_mask_size(body["lock_mask"], body["images"][0], storage)
    lora_specs(body.get("loras"), storage, check_only=True, owns=owns_file)  # another user's LoRA is unknown
    num_outputs(body, tier)
    to_request(body, tier, storage, check_only=True).validate()
    return body


def num_outputs(body: dict[str, Any], tier: str | None = None) -> int:
    """How many pictures one prediction makes (``num_outputs``, 1-4; each is charged).

    Args:
        body: the input (raw or stored).
        tier: when given, hosted tiers are held to one output per run.

    Raises:
        InvalidRequest: not a whole number from 1 to 4, or more than one on a hosted tier.
    """
    raw = body.get("num_outputs", 1)
    if raw is None:
        return 1
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_OUTPUTS:
        raise InvalidRequest(f"num_outputs must be a whole number from 1 to {MAX_OUTPUTS}; got {raw!r}",
                             field="num_outputs")
    if raw > 1 and tier is not None and not get_model(tier).local:
        raise InvalidRequest(f"num_outputs: the hosted model {tier} makes one picture per run; send 1, or ask a local "
                             "model for variations", field="num_outputs")
    return int(raw)


def speed_settings(body: dict[str, Any], tier: str | None = None) -> tuple[str | None, bool]:
    """The acceleration profile and draft flag an input asks for (local models only).

    Args:
        body: the input (raw or stored).
        tier: when given, a hosted model refuses both: it runs on Black Forest Labs' servers, which choose
            their own speed and steps.

    Returns:
        ``(acceleration, draft)``: the profile name in lower case, or None for the model's own default; and
        whether to halve the steps.

    Raises:
        InvalidRequest: acceleration not one of the profiles (a number or object is refused, never turned into
            text), draft not true or false, or either asked of a hosted model.
    """
    raw = body.get("acceleration")
    allowed = ", ".join(PROFILES)
    if raw is not None and (not isinstance(raw, str) or raw.strip().lower() not in PROFILES):
        raise InvalidRequest(f"acceleration must be one of {allowed} (or null for the model's default); "
                             f"got {raw!r}"[:300], field="acceleration")
    acceleration = None if raw is None else raw.strip().lower()
    draft = _bool(body, "draft")
    entry = get_model(tier) if tier is not None else None
    if entry is not None and not entry.local:
        if acceleration is not None:
            raise InvalidRequest(
                f"acceleration: {entry.title} runs on Black Forest Labs' servers, which choose their own speed; "
                f"leave acceleration out (or null), or pick a local model to run {allowed}; got {raw!r}",
                field="acceleration")
        if draft:
            raise InvalidRequest(
                f"draft: {entry.title} runs on Black Forest Labs' servers, which choose their own steps; leave "
                "draft out (or false), or make quick drafts on a local model such as Kontext Fast; got true",
                field="draft")
    return acceleration, draft


def to_request(body: dict[str, Any], tier: str, storage: Storage, check_only: bool = False) -> EditRequest:
    """The EditRequest a stored input describes (images read from storage unless ``check_only``)."""
    get_model(tier, "model")
    roles = body.get("roles") or []
    if not isinstance(roles, list):
        raise InvalidRequest("roles: give a list, one role per image", field="roles")
    refs = [Reference(key if check_only else storage.get(key), roles[i] if i < len(roles) else None)
            for i, key in enumerate(body["images"])]
    acceleration, draft = speed_settings(body)
    try:
        return EditRequest(
            references=refs, instruction=str(body.get("prompt") or ""), tier=tier,
            aspect_ratio=str(body.get("aspect_ratio") or "match_input_image"),
            width=_int(body, "width"), height=_int(body, "height"),
            seed=_int(body, "seed"), steps=_int(body, "num_inference_steps"),
            guidance=_float(body, "guidance"), output_format=str(body.get("output_format") or "png"),
            strategy=str(body["strategy"]) if body.get("strategy") else None,
            geometry=str(body.get("geometry") or "lock"),
            identity_guard=_float(body, "identity_guard"), candidates=_candidates(body),
            pixel_lock=str(body.get("pixel_lock") or "auto"),
            lock_mask=_mask(body.get("lock_mask"), storage, check_only),
            loras=lora_specs(body.get("loras"), storage, check_only),
            safety_tolerance=_int(body, "safety_tolerance"), prompt_upsampling=_bool(body, "prompt_upsampling"),
            acceleration=acceleration, draft=draft,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"input: {exc}", field="input") from None


def _check_mask_size(mask_key: str, first_key: str, storage: Storage) -> None:
    """Refuse a mask the engine would refuse, at submit: a failed job would have held credits first."""
    # Loaded the way the engine loads them (EXIF orientation applied), so both sides agree on the size.
    mask = load_reference(Reference(storage.get(mask_key)), 0).size
    first = load_reference(Reference(storage.get(first_key)), 0).size
    if mask != first:
        raise InvalidRequest(
            f"lock_mask is {mask[0]}×{mask[1]} but input_image is {first[0]}×{first[1]}; paint the mask on the "
            "first reference at its own size (white = the area to edit, black = keep)", field="lock_mask")


def _mask(key: Any, storage: Storage, check_only: bool) -> str | bytes | None:
    if not key:
        return None
    if not isinstance(key, str):
        raise InvalidRequest("lock_mask: give a data URL, base64 image or an uploaded file id", field="lock_mask")
    return key if check_only else storage.get(key)


def _candidates(body: dict[str, Any]) -> int:
    n = _int(body, "candidates")
    return 1 if n is None else n  # 0 stays 0 and is refused by the request's own check


def _int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not math.isfinite(v)) \
            or int(v) != v or abs(int(v)) > MAX_INT:
        raise InvalidRequest(f"{key} must be a whole number, got {v!r}", field=key)
    return int(v)


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise InvalidRequest(f"{key} must be true or false, got {v!r}", field=key)
    return v


def _float(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, int) and abs(v) > MAX_INT) \
            or (isinstance(v, float) and not math.isfinite(v)):
        raise InvalidRequest(f"{key} must be a finite number, got {v!r}", field=key)
    return float(v)


def data_url(data: bytes, kind: str = "png") -> str:
    """A data URL for ``data`` (tests and clients)."""
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()
