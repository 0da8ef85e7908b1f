"""The models this server offers, with whether each can run here now: ready, starting (its backend is being
built), failed (it will be retried), or not configured (and what it needs)."""

from __future__ import annotations

from dataclasses import dataclass

from kontext_studio.core.engine import Editor
from kontext_studio.core.registry import TIERS, TierSpec


@dataclass(frozen=True)
class ModelInfo:
    """One model (tier) as the API and the studio list it."""

    name: str
    spec: TierSpec
    price: int
    state: str  # ready | starting | failed | lazy | absent
    missing: str | None

    @property
    def configured(self) -> bool:
        """Whether predictions on it are accepted (a starting or lazily built backend counts)."""
        return self.state in ("ready", "starting", "lazy")


class ModelCatalogue:
    """Lists models without building any backend (a page load never waits for a model to load).

    Args:
        editor: the engine whose backends run the tiers.
        free: prices switched off.
    """

    def __init__(self, editor: Editor, free: bool):
        self.editor, self.free = editor, free

    def list(self) -> list[ModelInfo]:
        """Every tier, in the registry's order."""
        out = []
        for tier, spec in TIERS.items():
            state, why = self.editor.backend_state(spec)
            out.append(ModelInfo(f"flux-kontext-{tier}", spec, 0 if self.free else spec.price_credits, state, why))
        return out
