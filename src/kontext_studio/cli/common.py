"""Options and helpers the command modules share. Cheap to import: no torch, no model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.settings import Settings

ModelOpt = Annotated[str | None, typer.Option("--model", metavar="MODEL",
                                              help="Hub repo id, diffusers folder or single checkpoint file "
                                                   "(default: KONTEXT_MODEL or the official repo).")]
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
