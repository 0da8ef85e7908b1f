"""The backend interface: what the engine hands a backend, and what it gets back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from kontext_studio.core.multiref import Placement
from kontext_studio.core.types import LoraSpec, Strategy

ProgressFn = Callable[[int, int], None]  # (step done, total steps)
CancelFn = Callable[[], bool]  # True to stop at the next step


class RemoteTaskLog(Protocol):
    """Where a hosted backend notes the upstream tasks it started, so that no attempt ever sends a request twice.

    A request is named by ``key`` (a hash of exactly what would be sent). The service keeps the log on the job
    row, so a worker that restarts finds the task an earlier attempt started and resumes polling it.
    """

    def reserve(self, key: str) -> dict[str, Any] | None:
        """Before sending request ``key``.

        Returns:
            None when nothing was sent for ``key`` yet (the reservation is now recorded: send it), or the
            entry an earlier attempt left: ``{"state": "sent", "id", "polling_url", ...}`` (resume that task)
            or ``{"state": "sending", ...}`` (it may have been accepted: do not send it again).

        Raises:
            Canceled: this attempt is no longer the current one (nothing may be sent).
        """
        ...

    def record(self, key: str, task: dict[str, Any]) -> None:
        """The upstream accepted request ``key`` as ``task`` (its id, polling URL, cost)."""
        ...

    def release(self, key: str) -> None:
        """Request ``key`` certainly never reached the upstream (refused connection, 4xx): forget it."""
        ...


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
    acceleration: str = "stock"  # the acceleration profile (core.acceleration) local backends apply
    # What hosted backends send as is (local backends use model_size and the references' placements).
    tier: str = ""
    roles: list[str | None] = field(default_factory=list)
    aspect_ratio: str = "match_input_image"
    output_format: str = "png"
    safety_tolerance: int | None = None
    prompt_upsampling: bool = False
    remote_tasks: RemoteTaskLog | None = None
    output_size: tuple[int, int] | None = None  # what the user gets (hosted models that take width/height)


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
    # True for backends that take each reference as its own image (hosted Max): the engine then neither
    # stitches nor tiles them.
    separate_references: bool = False

    @property
    @abstractmethod
    def resolution(self) -> int:
        """Side of the model's square working size (1024 for the real model)."""

    @abstractmethod
    def model_info(self) -> dict[str, Any]:
        """Model source, revision or file hash, device, dtype: the recipe's ``model`` section."""

    def unload(self) -> None:  # noqa: B027 - optional: only backends that hold a model override it
        """Free the loaded model (the engine's warm pool evicted it); the next edit loads it again."""

    def estimated_bytes(self) -> int | None:
        """Memory the loaded model will hold, if known before loading (the warm pool makes room for it)."""
        return None

    @abstractmethod
    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        """Run one generation.

        Raises:
            Canceled: when ``cancel()`` returned True between steps.
        """
