"""Which local models stay loaded: a least-recently-used pool sized by free memory (or a fixed count).

Loading a 12-30 GB pipeline takes tens of seconds, so a model stays warm after its first edit. When another
model is needed, the pool evicts the least recently used ones until the newcomer fits in the memory that
is free (``max_models`` caps the count whatever the memory says). The engine calls ``unload`` on what is
evicted and builds it again on its next use.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kontext_studio.core.catalogue import ModelEntry

logger = logging.getLogger("kontext_studio.warm")
GIB = 1024**3


def available_memory() -> int | None:
    """Bytes free for another model: free VRAM on the current CUDA device, else available RAM."""
    try:
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return int(free)
    except Exception:  # no torch or no driver: fall back to RAM
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


class WarmPool:
    """Least-recently-used set of loaded local models.

    Args:
        max_models: keep at most this many loaded (None: as many as ``free_memory`` allows, at least one).
        free_memory: bytes free right now (None when unknown: then only ``max_models`` limits the pool).
        headroom: fraction of a newcomer's size kept free on top of it (activations, caches).
    """

    def __init__(self, max_models: int | None = None, free_memory: Callable[[], int | None] = available_memory,
                 headroom: float = 0.2):
        if max_models is not None and max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.max_models = max_models
        self.free_memory = free_memory
        self.headroom = headroom
        self._loaded: OrderedDict[str, int] = OrderedDict()  # name → estimated bytes
        self.evictions = 0

    @property
    def names(self) -> list[str]:
        """Loaded models, least recently used first."""
        return list(self._loaded)

    def touch(self, name: str) -> None:
        """Mark ``name`` as just used."""
        if name in self._loaded:
            self._loaded.move_to_end(name)

    def admit(self, name: str, backend: Any, entry: ModelEntry | None = None) -> list[str]:
        """Make room for ``name`` and record it as loaded.

        Args:
            name: the backend's name in the engine.
            backend: the new backend (its ``estimated_bytes()`` sizes it; else ``entry.memory_gb``).
            entry: the catalogue entry, for its memory estimate.

        Returns:
            The names to evict (least recently used first); the caller unloads them.
        """
        need = backend.estimated_bytes() if hasattr(backend, "estimated_bytes") else None
        if need is None and entry is not None and entry.memory_gb:
            need = int(entry.memory_gb * GIB)
        need = int((need or 0) * (1 + self.headroom))
        evict: list[str] = []
        loaded = [n for n in self._loaded if n != name]
        while loaded and self.max_models is not None and len(loaded) >= self.max_models:
            evict.append(loaded.pop(0))
        if self.max_models is None and need:
            free = self.free_memory()
            if free is not None:
                freed = sum(self._loaded[n] for n in evict)
                while loaded and free + freed < need:
                    victim = loaded.pop(0)
                    evict.append(victim)
                    freed += self._loaded[victim]
        for victim in evict:
            self._loaded.pop(victim, None)
            self.evictions += 1
            logger.info("evicting warm model %s to load %s", victim, name)
        self._loaded[name] = need
        self._loaded.move_to_end(name)
        return evict

    def forget(self, name: str) -> None:
        self._loaded.pop(name, None)
