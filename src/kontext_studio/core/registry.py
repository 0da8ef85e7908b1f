"""Tiers and model sources as data: defaults, prices and limits live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field

from kontext_studio.core.errors import UnsupportedTier

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"
SINGLE_FILE_NAME = "flux1-kontext-dev.safetensors"


@dataclass(frozen=True)
class TierSpec:
    """One user-facing tier.

    Attributes:
        backend: ``diffusers`` (local, open weights) or ``bfl_api`` (hosted).
        step_cache: diffusers step cache the tier turns on (``first_block`` or None) and its threshold; tiers
            with an acceleration profile take the profile's step cache instead.
        acceleration: the acceleration profile local edits run with (``stock``, ``lossless``, ``fast``; see
            ``core.acceleration``).
        trades: what the tier gives up for its speed or price, in words shown by ``kontext models``.
        requires: settings the tier needs before it can run (shown when they are missing).
    """

    name: str
    title: str
    backend: str
    price_credits: int
    max_references: int
    steps: int | None
    guidance: float | None
    description: str
    trades: str = ""
    step_cache: str | None = None
    step_cache_threshold: float = 0.0
    requires: tuple[str, ...] = field(default_factory=tuple)
    acceleration: str = "stock"

    @property
    def local(self) -> bool:
        return self.backend == "diffusers"


TIERS: dict[str, TierSpec] = {
    "fast": TierSpec(
        name="fast",
        title="Kontext Fast",
        backend="diffusers",
        price_credits=4,
        max_references=4,
        steps=28,
        guidance=2.5,
        description="The open [dev] weights at their full 28 steps, accelerated: compiled blocks, fused attention "
        "projections, the fastest attention kernel for the GPU, fp8 matmuls where the GPU has them, and a "
        "MagCache step cache.",
        trades="On a GPU with fp8 (Ada, Hopper, Blackwell) about 2-3x faster than dev at the same steps; fp8 "
        "matmuls and the step cache (steps whose output barely changes are reused) cost a small, bounded loss "
        "of fine detail. --draft halves the steps on top of that, visibly softer. Promote a good result to dev "
        "or pro with the same seed and recipe.",
        acceleration="fast",
    ),
    "dev": TierSpec(
        name="dev",
        title="Kontext [dev]",
        backend="diffusers",
        price_credits=5,
        max_references=4,
        steps=28,
        guidance=2.5,
        description="The open FLUX.1 Kontext [dev] weights, run locally through diffusers.",
        trades="Full quality of the open model; several references are approximated (see strategies).",
    ),
    "pro": TierSpec(
        name="pro",
        title="Kontext [pro]",
        backend="bfl_api",
        price_credits=8,
        max_references=1,
        steps=None,
        guidance=None,
        description="BFL's hosted Kontext [pro]: stronger edits and typography, one reference.",
        trades="Hosted: needs a BFL API key and network access; steps and guidance are chosen by BFL; no LoRAs.",
        requires=("BFL_API_KEY",),
    ),
    "max": TierSpec(
        name="max",
        title="Kontext [max]",
        backend="bfl_api",
        price_credits=15,
        max_references=4,
        steps=None,
        guidance=None,
        description="BFL's hosted Kontext [max]: the flagship, up to four references at once.",
        trades="Hosted: needs a BFL API key and network access; the most expensive tier; no LoRAs. Each reference "
        "goes up as its own image, with the roles as a sentence in the prompt.",
        requires=("BFL_API_KEY",),
    ),
}


def get_tier(name: str) -> TierSpec:
    """Look a tier up by name.

    Raises:
        UnsupportedTier: naming the tiers that exist.
    """
    key = str(name).strip().lower()
    try:
        return TIERS[key]
    except KeyError:
        raise UnsupportedTier(
            f"tier must be one of {', '.join(TIERS)}; got {name!r}", field="tier"
        ) from None
