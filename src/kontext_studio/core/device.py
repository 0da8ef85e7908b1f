"""Device, dtype and memory-mode choice. The decision functions are pure so they can be tested."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

GiB = 1024**3
# Activations and workspace at ~1 MP with one ~1 MP reference (8k image tokens), bf16.
ACTIVATION_HEADROOM = 6 * GiB


class MemoryMode(StrEnum):
    AUTO = "auto"
    GPU = "gpu"  # everything resident on the accelerator: fastest
    MODEL_OFFLOAD = "model_offload"  # one component on the GPU at a time (transformer must fit)
    GROUP_OFFLOAD = "group_offload"  # transformer blocks streamed in groups, overlapped with compute
    SEQUENTIAL_OFFLOAD = "sequential_offload"  # layer by layer: smallest footprint, slowest
    NONE = "none"  # CPU: nothing to offload


@dataclass(frozen=True)
class DevicePlan:
    device: str
    dtype_name: str
    memory_mode: MemoryMode
    free_bytes: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype_name, "memory_mode": self.memory_mode.value,
                "free_vram_gib": None if self.free_bytes is None else round(self.free_bytes / GiB, 1),
                "reason": self.reason}


def pick_device(preference: str = "auto") -> str:
    """``cuda`` if available, else ``mps``, else ``cpu`` (or the preference when it is not ``auto``)."""
    import torch

    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype_name(device: str, preference: str = "auto") -> str:
    """bf16 on accelerators, float32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if preference != "auto":
        return preference
    return "float32" if device == "cpu" else "bfloat16"


def choose_memory_mode(free_bytes: int, total_model_bytes: int, largest_component_bytes: int,
                       block_bytes: int) -> tuple[MemoryMode, str]:
    """Pick the fastest memory mode that fits in ``free_bytes``.

    Args:
        free_bytes: free accelerator memory.
        total_model_bytes: all components together.
        largest_component_bytes: the transformer, usually.
        block_bytes: one transformer block (the unit group offload streams).

    Returns:
        The mode and a one-line reason.
    """
    gib = lambda b: f"{b / GiB:.1f} GiB"  # noqa: E731
    if total_model_bytes + ACTIVATION_HEADROOM <= free_bytes:
        return MemoryMode.GPU, f"all {gib(total_model_bytes)} fit in {gib(free_bytes)} free"
    if largest_component_bytes + ACTIVATION_HEADROOM <= free_bytes:
        return MemoryMode.MODEL_OFFLOAD, (
            f"the {gib(largest_component_bytes)} transformer fits in {gib(free_bytes)} free, "
            f"the whole model ({gib(total_model_bytes)}) does not"
        )
    if 4 * block_bytes + ACTIVATION_HEADROOM <= free_bytes:
        return MemoryMode.GROUP_OFFLOAD, f"only {gib(free_bytes)} free: transformer blocks are streamed in groups"
    return MemoryMode.SEQUENTIAL_OFFLOAD, f"only {gib(free_bytes)} free: layers are streamed one by one (slow)"


def free_vram(device: str) -> int | None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    return None


def module_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0
