"""Options and helpers the command modules share. Cheap to import: no torch, no model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.settings import Settings

ModelOpt = Annotated[str | None, typer.Option("--model", metavar="MODEL",
                                              help="A model of the catalogue (e.g. black-forest-labs/flux-2-klein-4b "
                                                   "or klein-4b; see kontext models), or where Kontext [dev]'s "
                                                   "weights are: hub repo id, diffusers folder or single checkpoint "
                                                   "file (default: KONTEXT_MODEL or the official repo).")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", metavar="PATH|REPO",
                                                help="Where the chosen model's weights are: diffusers folder, hub "
                                                     "repo id or transformer file (default: KONTEXT_WEIGHTS or the "
                                                     "model's hub repo).")]
SizeOpt = Annotated[int | None, typer.Option(metavar="PX", help="Exact output size in pixels (give --width and "
                                             "--height together); wins over --aspect.")]
BaseOpt = Annotated[str | None, typer.Option("--base", metavar="PATH|REPO",
                                             help="For a single-file checkpoint: folder or repo holding the text "
                                                  "encoders, VAE and configs.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", metavar="DEVICE",
                                               help="auto, cuda, cuda:1, mps or cpu.")]
MemoryOpt = Annotated[str | None, typer.Option("--memory-mode", metavar="MODE",
                                               help="auto, gpu, model_offload, group_offload or sequential_offload.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout (progress stays on stderr).")]
GuardOpt = Annotated[float | None, typer.Option("--identity-guard", metavar="0-1",
                                                help="Minimum identity similarity (0.5 = same-person threshold): "
                                                     "try further seeds until one reaches it.")]
CandidatesOpt = Annotated[int | None, typer.Option(metavar="N", help="Seeds to try at most (default 4 with "
                                                   "--identity-guard, else 1); the best is kept.")]
LockOpt = Annotated[str, typer.Option("--pixel-lock", metavar="auto|off|MASK",
                                      help="auto (undo drift outside the edited area), off, or a mask image "
                                           "(white = the area to edit).")]
CheckOpt = Annotated[bool, typer.Option("--check/--no-check", help="Check each reference photo and report "
                                        "problems (resolution, blur, exposure, faces...).")]


def settings_for(model: str | None, base: str | None, device: str | None, memory_mode: str | None) -> Settings:
    """The environment's settings with the command line's overrides applied."""
    from kontext_studio.bootstrap import with_overrides

    return with_overrides(Settings.from_env(), model=model, base_model=base, device=device,
                          memory_mode=memory_mode)


def references(images: list[str], roles: list[str] | None) -> list[Any]:
    """``Reference`` objects for the image arguments and their ``--role`` options, in order.

    Raises:
        InvalidRequest: more roles than images.
    """
    from kontext_studio.core.types import Reference

    roles = roles or []
    if len(roles) > len(images):
        raise InvalidRequest(f"--role given {len(roles)} times for {len(images)} image(s); give one per image, "
                             "in order", field="role")
    return [Reference(img, roles[i] if i < len(roles) else None) for i, img in enumerate(images)]


def fidelity_options(guard: float | None, candidates: int | None, pixel_lock: str) -> dict[str, Any]:
    """The request fields behind --identity-guard, --candidates and --pixel-lock.

    Raises:
        InvalidRequest: --pixel-lock is neither a mode nor a file.
    """
    lock, mask = (pixel_lock, None) if pixel_lock in ("auto", "off") else ("auto", pixel_lock)
    if mask is not None and not Path(mask).is_file():
        raise InvalidRequest(f"--pixel-lock must be auto, off or a mask image file; {mask!r} is neither",
                             field="pixel_lock")
    return {"identity_guard": guard, "candidates": candidates or (4 if guard is not None else 1),
            "pixel_lock": lock, "lock_mask": mask}


def model_choice(model: str | None) -> tuple[str | None, str | None]:
    """``--model`` names a catalogue model (or its hub repo), or, as before the catalogue, where Kontext
    [dev]'s weights are (a folder, a checkpoint file or the Kontext repo).

    Returns:
        (catalogue name or None, Kontext weights location or None).

    Raises:
        UnsupportedTier: anything else, listing the catalogue's names.
    """
    from kontext_studio.core.catalogue import CATALOGUE, Family

    if model is None:
        return None, None
    if CATALOGUE.find(model) is not None:
        return model, None
    by_repo = {e.weights.hub.lower(): e for e in CATALOGUE.local() if e.weights.hub}
    entry = by_repo.get(model.strip().lower())
    if entry is not None:
        return (None, model) if entry.family is Family.KONTEXT else (entry.name, None)
    p = Path(model).expanduser()
    if p.exists() or p.suffix.lower() in (".safetensors", ".sft") or model.startswith((".", "/", "~")):
        return None, model
    CATALOGUE.resolve(model, "model")  # raises, listing the names; other weights go in --weights
    return None, None


def model_settings(entry: Any, kontext_weights: str | None, weights: str | None, base: str | None,
                   device: str | None, memory_mode: str | None) -> Settings:
    """Settings with ``--weights`` applied to the catalogue model ``entry`` (Kontext's go in ``model``)."""
    import dataclasses

    from kontext_studio.core.catalogue import Family

    kontext = entry.family is Family.KONTEXT
    if weights and kontext:
        kontext_weights = weights
    settings = settings_for(kontext_weights, base if kontext else None, device, memory_mode)
    if weights and not kontext:
        settings = dataclasses.replace(settings, weights=(*settings.weights, (entry.key, weights)))
    if base and not kontext:  # --base: where a single file's other parts are, for this model only
        settings = dataclasses.replace(settings, bases=(*settings.bases, (entry.key, base)))
    return settings
