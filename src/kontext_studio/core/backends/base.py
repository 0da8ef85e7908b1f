"""The backend interface: what the engine hands a backend, and what it gets back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from kontext_studio.core.multiref import Placement
from kontext_studio.core.types import LoraSpec, Strategy

ProgressFn = Callable[[int, int], None]  # (step done, total steps)
CancelFn = Callable[[], bool]  # True to stop at the next step


@dataclass(frozen=True)
class PreparedReference:
    """A reference the engine has checked: the upright RGB image, its hash, and where it goes."""

    image: Image.Image
    sha256: str
    working_size: tuple[int, int]
    placement: Placement


@dataclass
class GenerationPlan:
    """One generation, fully decided by the engine (sizes, seed, steps): backends only execute it."""

    instruction: str
    references: list[PreparedReference]
    strategy: Strategy
    model_size: tuple[int, int]
    steps: int
    guidance: float
    seed: int
    loras: list[LoraSpec] = field(default_factory=list)
    step_cache: str | None = None
    step_cache_threshold: float = 0.0


@dataclass
class GenerationOutput:
    """Pixels at ``plan.model_size`` plus per-phase timings and backend facts for the recipe."""

    image: Image.Image
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class EditBackend(ABC):
    """A way to run Kontext. Implementations keep their model warm between calls."""

    name: str = "base"

    @property
    @abstractmethod
    def resolution(self) -> int:
        """Side of the model's square working size (1024 for the real model)."""

    @abstractmethod
    def model_info(self) -> dict[str, Any]:
        """Model source, revision or file hash, device, dtype: the recipe's ``model`` section."""

    @abstractmethod
    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        """Run one generation.

        Raises:
            Canceled: when ``cancel()`` returned True between steps.
        """
