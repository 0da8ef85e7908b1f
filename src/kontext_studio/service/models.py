"""The models this server offers, with whether each can run here now: ready, starting (its backend is being
built), failed (it will be retried), or not configured (and what it needs)."""

from __future__ import annotations

from dataclasses import dataclass

from kontext_studio.core.catalogue import CATALOGUE, Catalogue, Family, ModelEntry
from kontext_studio.core.engine import Editor
from kontext_studio.core.registry import TierSpec


@dataclass(frozen=True)
class ModelInfo:
    """One model as the API and the studio list it (``spec``: the model seen as a tier)."""

    name: str
    spec: TierSpec
    price: int
    state: str  # ready | starting | failed | lazy | absent
    missing: str | None
    entry: ModelEntry | None = None

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

    def __init__(self, editor: Editor, free: bool, catalogue: Catalogue = CATALOGUE):
        self.editor, self.free, self.catalogue = editor, free, catalogue

    def list(self, every: bool = False) -> list[ModelInfo]:
        """The models in the catalogue's order: the Kontext tiers and the other models this server can run
        (``every``: all of them, with the state saying which can run here)."""
        out = []
        for entry in self.catalogue:
            state, why = self.editor.backend_state(entry)
            if not every and entry.family is not Family.KONTEXT and state == "absent":
                continue
            if not every and not entry.local and entry.family is not Family.KONTEXT:
                continue  # the studio's cards: hosted FLUX.2 is offered through the API
            out.append(ModelInfo(entry.short_name, entry.tier, 0 if self.free else entry.price_credits, state, why,
                                 entry))
        return out
