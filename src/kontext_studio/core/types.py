"""The shared vocabulary: what an edit asks for (EditRequest) and what it returns (EditResult).

The CLI flags, the HTTP body and the training validation set all convert into these objects, so
validation lives here once. Images are normalised later, in ``images.py``; this module stays free of
torch so that importing it is cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from kontext_studio.core.errors import InvalidRequest

if TYPE_CHECKING:
    from kontext_studio.core.catalogue import ModelEntry

MAX_REFERENCES = 8  # the most any catalogue model takes (hosted FLUX.2); each model has its own limit
MAX_INSTRUCTION_CHARS = 2000
MAX_STEPS = 100
MAX_SEED = 2**32 - 1  # seeds are 32-bit everywhere: torch generators, the BFL API, the studio form
MAX_CANDIDATES = 8
SAFETY_TOLERANCE_RANGE = (0, 6)  # BFL's moderation tolerance: 0 strictest, 6 most permissive
PIXEL_LOCK_MODES = ("auto", "off")


class Role(StrEnum):
    """What a reference image contributes; used to label stitched canvases and Max prompts."""

    SUBJECT = "subject"
    GARMENT = "garment"
    STYLE = "style"
    BACKGROUND = "background"
    OBJECT = "object"


class Strategy(StrEnum):
    """How several references reach the model (with one reference they are all the same)."""

    NATIVE = "native"  # the model takes each reference itself (FLUX.2, Qwen-Image-Edit): their default
    STITCH = "stitch"  # pixels side by side in one canvas, encoded once (default: most robust)
    OFFSET = "offset"  # each encoded alone, tiled on the position grid by its own width/height
    INDEX = "index"  # each encoded alone with its own position index (1, 2, 3, ...)


class GeometryMode(StrEnum):
    """What size the output has."""

    LOCK = "lock"  # exactly the input's W x H (or exactly the requested ratio), never cropped
    NATIVE = "native"  # the model's snapped working size, as stock diffusers returns it


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


def _enum(cls: type[StrEnum], value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise InvalidRequest(f"{name} must be one of {choices}; got {value!r}", field=name) from None


@dataclass(frozen=True)
class Reference:
    """One reference image and the part it plays.

    ``image`` may be a path, raw bytes or a PIL image; ``images.load_reference`` normalises it.
    """

    image: str | Path | bytes | Image.Image
    role: Role | str | None = None

    def __post_init__(self) -> None:
        if self.role is not None:
            object.__setattr__(self, "role", _enum(Role, self.role, "role"))

    @property
    def label(self) -> str:
        if isinstance(self.image, str | Path):
            return str(self.image)
        return f"<{type(self.image).__name__}>"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter file and the weight to apply it with."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """Parse ``PATH`` or ``PATH:WEIGHT`` (the CLI form)."""
        path, sep, weight = text.rpartition(":")
        if sep and path and not weight.startswith(("/", "\\")):
            try:
                return cls(path=path, weight=float(weight))
            except ValueError:
                pass
        return cls(path=text)


@dataclass
class EditRequest:
    """Everything an edit asks for. ``None`` for steps/guidance/strategy means the model's default.

    ``model`` names a catalogue entry by any of its names (``black-forest-labs/flux-2-klein-4b``,
    ``flux-2-klein-4b``, ``klein-4b``); when it is None, ``tier`` does (the Kontext tiers ``dev``, ``fast``,
    ``pro``, ``max`` are catalogue entries too). With no reference, models that can generate make an image
    from the instruction alone, at ``aspect_ratio`` (or ``width`` x ``height``).
    """

    references: list[Reference]
    instruction: str
    tier: str = "dev"
    model: str | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str = "match_input_image"
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    output_format: OutputFormat | str = OutputFormat.PNG
    loras: list[LoraSpec] = field(default_factory=list)
    strategy: Strategy | str | None = None
    geometry: GeometryMode | str = GeometryMode.LOCK
    identity_guard: float | None = None
    candidates: int = 1
    pixel_lock: str = "auto"
    lock_mask: str | Path | bytes | Image.Image | None = None
    check_references: bool = True
    safety_tolerance: int | None = None  # hosted tiers only (BFL's default 2 when None)
    prompt_upsampling: bool = False  # hosted tiers only: BFL rewrites the prompt before the edit
    acceleration: str | None = None  # local tiers: stock, lossless or fast (None: the tier's profile)
    draft: bool = False  # local tiers: half the steps, visibly softer, for quick looks

    def __post_init__(self) -> None:
        self.output_format = _enum(OutputFormat, self.output_format, "output_format")
        if self.strategy is not None:
            self.strategy = _enum(Strategy, self.strategy, "strategy")
        self.geometry = _enum(GeometryMode, self.geometry, "geometry")
        self.tier = str(self.tier).lower()
        self.references = [r if isinstance(r, Reference) else Reference(r) for r in self.references]
        self.loras = [lo if isinstance(lo, LoraSpec) else LoraSpec.parse(str(lo)) for lo in self.loras]

    def validate(self) -> None:
        """Check the fields that need no image decoding or model.

        Raises:
            InvalidRequest: naming the field, the value and the fix.
        """
        entry = self.entry()
        n = len(self.references)
        entry.check_references(n)  # the model's own limit (never above MAX_REFERENCES)
        strategy = None if self.strategy is None else Strategy(self.strategy)
        if strategy is not None and n > 1 and strategy.value not in (*entry.strategies, "stitch"):
            raise InvalidRequest(
                f"strategy: {entry.title} takes several references as {' or '.join(entry.strategies)} (or stitch: "
                f"side by side in one picture); got {strategy.value!r}", field="strategy")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is not None and (isinstance(value, bool) or not 64 <= int(value) <= 4096):
                raise InvalidRequest(f"{name} must be between 64 and 4096 pixels, got {value!r}", field=name)
        if (self.width is None) != (self.height is None):
            raise InvalidRequest("width and height go together: give both, or neither (then aspect_ratio or the "
                                 "input's size sets the size)", field="width" if self.width is None else "height")
        if not entry.local and int(self.candidates) > 1:
            # The job is priced once, but BFL charges every image it makes.
            raise InvalidRequest(
                f"candidates: on the hosted model {entry.key} every candidate is a separate BFL request, each "
                f"charged by BFL; use 1 (the identity guard still scores the result), or find a good seed on dev "
                f"or fast and promote it; got {self.candidates}", field="candidates")
        low, high = SAFETY_TOLERANCE_RANGE
        if self.safety_tolerance is not None and (
                isinstance(self.safety_tolerance, bool) or not low <= int(self.safety_tolerance) <= high):
            raise InvalidRequest(
                f"safety_tolerance must be an integer from {low} (strictest) to {high} (most permissive), got "
                f"{self.safety_tolerance!r}", field="safety_tolerance")
        text = self.instruction.strip() if isinstance(self.instruction, str) else ""
        if not text:
            raise InvalidRequest(
                "instruction: describe the change, e.g. \"put her on a beach at sunset\"; got an empty text",
                field="instruction",
            )
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise InvalidRequest(
                f"instruction: at most {MAX_INSTRUCTION_CHARS} characters, got {len(text)}",
                field="instruction",
            )
        if self.seed is not None and not (0 <= int(self.seed) <= MAX_SEED):
            raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}, got {self.seed}", field="seed")
        if self.steps is not None and not (entry.min_steps <= int(self.steps) <= MAX_STEPS):
            raise InvalidRequest(f"steps must be between {entry.min_steps} and {MAX_STEPS} for {entry.title}, got "
                                 f"{self.steps}", field="steps")
        if self.guidance is not None and not (0.0 <= float(self.guidance) <= 20.0):
            raise InvalidRequest(
                f"guidance must be between 0 and 20 (Kontext default 2.5), got {self.guidance}",
                field="guidance",
            )
        if self.acceleration is not None:
            from kontext_studio.core.acceleration import PROFILES

            if str(self.acceleration).lower() not in PROFILES:
                raise InvalidRequest(f"acceleration must be one of {', '.join(PROFILES)}; got {self.acceleration!r}",
                                     field="acceleration")
            if not entry.local:
                raise InvalidRequest(f"acceleration applies to models that run on this machine; {entry.title} runs "
                                     "on Black Forest Labs' servers, which choose their own speed: leave it unset",
                                     field="acceleration")
        if self.draft and not entry.local:
            raise InvalidRequest(f"draft (half the steps) applies to models that run on this machine; {entry.title} "
                                 "chooses its own steps: leave draft off", field="draft")
        from kontext_studio.core.resolution import parse_aspect_ratio  # resolution imports this module

        parse_aspect_ratio(self.aspect_ratio)
        if self.identity_guard is not None and not 0.0 < float(self.identity_guard) <= 1.0:
            raise InvalidRequest(
                f"identity_guard is a similarity between 0 and 1 (0.5 = same-person threshold), got "
                f"{self.identity_guard}", field="identity_guard")
        if not 1 <= int(self.candidates) <= MAX_CANDIDATES:
            raise InvalidRequest(f"candidates must be between 1 and {MAX_CANDIDATES}, got {self.candidates}",
                                 field="candidates")
        if str(self.pixel_lock) not in PIXEL_LOCK_MODES:
            raise InvalidRequest(f"pixel_lock must be auto or off (or give a mask image), got {self.pixel_lock!r}",
                                 field="pixel_lock")
        for lo in self.loras:
            if not -4.0 <= lo.weight <= 4.0:
                raise InvalidRequest(
                    f"loras: weight for {lo.path} must be between -4 and 4, got {lo.weight}", field="loras"
                )

    def entry(self) -> ModelEntry:
        """The catalogue entry this request runs on (``model``, else ``tier``).

        Raises:
            UnsupportedTier: an unknown name, listing the valid ones.
        """
        from kontext_studio.core.catalogue import get_model  # the catalogue imports this module's neighbours

        if self.model is not None:
            return get_model(self.model, "model")
        return get_model(self.tier, "tier")

    def replace(self, **changes: Any) -> EditRequest:
        """A copy with some fields changed (e.g. another seed or instruction)."""
        return dataclasses.replace(self, **changes)


@dataclass
class EditResult:
    """One finished edit.

    Attributes:
        image: the output, at the size the geometry mode promises.
        seed: the seed actually used (drawn at random when the request had none).
        recipe: everything needed to reproduce the edit (see ``recipe.py``).
        timings: seconds per phase (prompt, reference encode, denoise, decode, postprocess, total).
        warnings: every adjustment the engine made, in words.
        identity: the identity score of the output against the subject reference (and every guard
            candidate's), when a fidelity analyser is configured.
        pixel_lock: what the pixel lock did (alignment, colour correction, changed area), if it ran.
        findings: the reference checker's findings, one list per reference.
        references: the request's references, named as ingredients in the output's content credentials.
    """

    image: Image.Image
    seed: int
    recipe: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str]
    output_format: OutputFormat = OutputFormat.PNG
    identity: dict[str, Any] | None = None
    pixel_lock: dict[str, Any] | None = None
    findings: list[list[dict[str, Any]]] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write the image with its recipe and AI-provenance marks embedded, then sign it with the
        installation's content credentials (a note joins ``warnings`` when it cannot be signed); returns
        the path."""
        from kontext_studio.core.provenance.signing import sign_saved_edit
        from kontext_studio.core.recipe import save_image_with_recipe

        out = save_image_with_recipe(self.image, path, self.recipe, self.output_format)
        sign_saved_edit(out, self.recipe, self.references, self.warnings)
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (no pixels), for ``--json`` and the API."""
        return {
            "seed": self.seed,
            "size": list(self.image.size),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
            "identity": self.identity,
            "pixel_lock": self.pixel_lock,
            "findings": self.findings,
            "recipe": self.recipe,
        }
