"""Everything about an edit request that can be checked without a model.

A wrong file, a text file given as a picture, an unknown tier or a missing LoRA must be reported in a
fraction of a second, not after torch and the weights have loaded. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_studio.core.catalogue import ModelEntry
from kontext_studio.core.errors import InvalidRequest, LoraError
from kontext_studio.core.images import LoadedImage, load_reference
from kontext_studio.core.registry import TierSpec
from kontext_studio.core.types import EditRequest, Reference


@dataclass
class Checked:
    """A request that passed every model-free check, with its decoded inputs.

    Attributes:
        tier: the tier the request names (the catalogue entry seen as a tier).
        references: the decoded reference images, in order (none: text to image).
        mask: the decoded lock mask (grayscale, the first reference's size), or None.
        entry: the catalogue model the request runs on.
    """

    tier: TierSpec
    references: list[LoadedImage]
    mask: Image.Image | None
    entry: ModelEntry


def check_loras(request: EditRequest) -> None:
    """Each LoRA file exists and is not empty (its contents are checked when the model loads).

    Raises:
        LoraError: naming the file and what is wrong.
    """
    for lo in request.loras:
        p = Path(lo.path).expanduser()
        if not p.is_file():
            raise LoraError(f"loras: file not found: {p}", field="loras")
        if p.stat().st_size == 0:
            raise LoraError(f"loras: {p} is empty (0 bytes); download it again", field="loras")


def load_mask(source: Any, size: tuple[int, int]) -> Image.Image | None:
    """The lock mask as a grayscale image of the input's size, or None without one.

    Raises:
        InvalidRequest: unreadable, or not the input's size.
    """
    if source is None:
        return None
    loaded = load_reference(Reference(source), 0)
    if loaded.size != size:
        raise InvalidRequest(
            f"lock_mask is {loaded.size[0]}x{loaded.size[1]} but the input is {size[0]}x{size[1]}; paint the mask "
            "on the input at its own size (white = the area to edit)", field="lock_mask")
    return loaded.image.convert("L")


def preflight(request: EditRequest, loaded: list[LoadedImage] | None = None) -> Checked:
    """Validate ``request`` and decode its images, all before any model is touched.

    Args:
        request: the edit.
        loaded: references decoded earlier (a series decodes them once).

    Returns:
        The model, its tier view and the decoded inputs.

    Raises:
        InvalidRequest: a field, an image, the mask or a LoRA file is wrong (the message names it).
        UnsupportedTier: the tier is not registered.
    """
    request.validate()  # includes the model's own reference limit and tasks
    entry = request.entry()
    check_loras(request)
    refs = loaded if loaded is not None else [load_reference(r, i) for i, r in enumerate(request.references)]
    if request.lock_mask is not None and not refs:
        raise InvalidRequest("lock_mask: a pixel-lock mask needs a reference image to lock to", field="lock_mask")
    mask = load_mask(request.lock_mask, refs[0].size) if refs else None
    return Checked(entry.tier, refs, mask, entry)
