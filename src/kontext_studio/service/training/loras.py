"""A user's trained LoRAs in edits: the ``loras`` input field → ``LoraSpec`` files the engine loads.

The field takes ``[{"id": "<lora id>", "weight": 0.8}, ...]`` (or ``"<id>"`` / ``"<id>:0.8"`` strings).
Adapters live in storage under ``loras/<id>.safetensors``; the worker copies one to a local file in a
private (0700) folder (the engine loads LoRAs from files) and reuses it only while its hash matches.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.lora import file_sha256
from kontext_studio.core.types import LoraSpec
from kontext_studio.service.storage.storage_base import Storage

MAX_LORAS = 4
_ID = re.compile(r"^[a-z2-7]{8,32}$")
LOCAL_DIR = Path(tempfile.gettempdir()) / "kontext-studio-loras"


def lora_key(lora_id: str) -> str:
    """The storage key of a user LoRA."""
    return f"loras/{lora_id}.safetensors"


def _entries(value: Any) -> list[tuple[str, float]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LORAS:
        raise InvalidRequest(f"loras: give a list of at most {MAX_LORAS} entries like "
                             '{"id": "...", "weight": 0.8}', field="loras")
    out = []
    for item in value:
        lora_id: Any
        if isinstance(item, str):
            lora_id, _, w = item.partition(":")
            weight: Any = float(w) if re.fullmatch(r"-?\d+(\.\d+)?", w or "") else (w or None)
        elif isinstance(item, dict) and set(item) <= {"id", "weight"}:
            lora_id, weight = item.get("id"), item.get("weight", 1.0)
        else:
            raise InvalidRequest(f"loras: each entry is {{\"id\": ..., \"weight\": ...}}; got {item!r}",
                                 field="loras")
        if not isinstance(lora_id, str) or not _ID.match(lora_id):
            raise InvalidRequest(f"loras: {lora_id!r} is not a LoRA id; list yours with GET /v1/loras",
                                 field="loras")
        if weight is None:
            weight = 1.0
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not -4 <= weight <= 4:
            raise InvalidRequest(f"loras: weight of {lora_id} must be a number between -4 and 4; got {weight!r}",
                                 field="loras")
        out.append((lora_id, float(weight)))
    return out


def lora_specs(value: Any, storage: Storage, check_only: bool = False,
               owns: Callable[[str], bool] | None = None) -> list[LoraSpec]:
    """The ``LoraSpec`` list an input's ``loras`` field names.

    Args:
        value: the field (see the module docstring).
        storage: where the adapters are.
        check_only: validate without copying files (at submit).
        owns: whether the submitting user owns a stored key (the runner records each LoRA as the user's
            file); another user's LoRA answers like a missing one. ``None``: no owner check (the worker).

    Returns:
        Specs pointing at local copies (``check_only``: at the storage keys).

    Raises:
        InvalidRequest: a malformed entry or an unknown LoRA (field ``loras``).
    """
    specs = []
    for lora_id, weight in _entries(value):
        key = lora_key(lora_id)
        if not storage.exists(key) or (owns is not None and not owns(key)):
            raise InvalidRequest(f"loras: no LoRA {lora_id}; list yours with GET /v1/loras", field="loras")
        if check_only:
            specs.append(LoraSpec(key, weight))
            continue
        specs.append(LoraSpec(str(local_copy(lora_id, storage.get(key))), weight))
    return specs


def private_dir(folder: Path) -> Path:
    """``folder``, created if needed, readable by this user only (0700).

    Raises:
        PermissionError: it exists and belongs to another user (another account could swap the files).
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user; remove it or point the server elsewhere")
    if info.st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def local_copy(lora_id: str, data: bytes) -> Path:
    """A private local file holding ``data`` for the loaders; an existing copy is reused only when its
    SHA-256 matches the stored adapter's (a stale or swapped file is replaced)."""
    folder = private_dir(LOCAL_DIR)
    local = folder / f"{lora_id}.safetensors"
    want = hashlib.sha256(data).hexdigest()
    if local.is_file() and file_sha256(local) == want:
        return local
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:  # mkstemp creates it 0600
        f.write(data)
    os.replace(tmp, local)
    return local
