"""The model catalogue: every model Kontext Studio can run, as data, under one public name.

One entry per model: its stable public name (Replicate style, ``owner/name``), family, diffusers pipeline
class, where its weights come from, licence (with a plain commercial-use yes/no), how many references it
takes natively, what it can do (edit, generate), defaults, credit price, memory estimate and what it
trades. The four Kontext tiers (fast, dev, pro, max) are entries here with exactly the prices, steps and
limits of ``registry.TIERS``; their short names keep working everywhere.

Names resolve loosely so every face can use the same words: the full name
(``black-forest-labs/flux-2-klein-4b``), its last part (``flux-2-klein-4b``, also the BFL route), or the
short key (``klein-4b``, ``dev``). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from kontext_studio.core.errors import InvalidRequest, UnsupportedTier
from kontext_studio.core.registry import TIERS, TierSpec


class Family(StrEnum):
    """Model families: one backend module each (hosted entries name the family they belong to)."""

    KONTEXT = "kontext"  # FLUX.1 Kontext: FluxKontextPipeline
    KLEIN = "klein"  # FLUX.2 [klein]: Flux2KleinPipeline (Qwen3 text encoder)
    FLUX2 = "flux2"  # FLUX.2 [dev]: Flux2Pipeline (Mistral-Small-3 text encoder)
    QWEN = "qwen"  # Qwen-Image-Edit-2509/2511: QwenImageEditPlusPipeline (Qwen2.5-VL)


class Task(StrEnum):
    EDIT = "edit"  # one or more reference images + an instruction
    GENERATE = "generate"  # text to image: no reference


NATIVE = "native"  # the strategy of families that take several references themselves
KONTEXT_STRATEGIES = ("stitch", "offset", "index")


@dataclass(frozen=True)
class Licence:
    """A model licence in one line, and whether it allows commercial use of the model."""

    name: str
    url: str
    commercial: bool
    note: str = ""


@dataclass(frozen=True)
class WeightSources:
    """Where the weights can come from.

    Attributes:
        hub: Hugging Face repo id (gated repos need the licence accepted and HF_TOKEN).
        single_file: the file name the maker or the community ships for the transformer alone (the other
            parts then come from the hub repo or a local folder).
        download_gb: roughly what a full download weighs.
    """

    hub: str | None = None
    single_file: str | None = None
    download_gb: float | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue.

    Attributes:
        name: stable public name, ``owner/name`` (lower case).
        key: short name (at most 16 characters): the tier for Kontext, else e.g. ``klein-4b``. The service
            stores it per job and names the worker queue after it.
        title: what people call it.
        family: which backend module runs it locally (and which LoRAs fit).
        backend: ``diffusers`` (local, open weights) or ``bfl_api`` (hosted).
        pipeline: the diffusers pipeline class (local entries).
        weights: where the weights come from (local entries).
        licence: the model's licence.
        max_references: how many reference images it takes (natively, or through a Kontext strategy).
        tasks: edit and/or generate.
        steps, guidance: defaults (None: chosen by the host).
        price_credits: credits per image (configurable, see ``Catalogue.with_prices``).
        memory_gb: estimated resident weights in bf16 (None for hosted models).
        description, trades: shown by ``kontext models`` and ``/v1/models``.
        strategies: how several references may reach the model; the first is the default.
        step_cache, step_cache_threshold: a diffusers step cache the entry turns on.
        requires: settings the entry needs before it can run.
        bfl_endpoint: for hosted entries, the BFL route (``flux-2-pro``).
        explicit_size: hosted entries that take ``width``/``height`` instead of an aspect ratio.
        weights_key: local entries sharing one set of weights share one warm pipeline (Kontext dev/fast).
        min_steps: the fewest steps its scheduler works with.
    """

    name: str
    key: str
    title: str
    family: Family
    backend: str
    pipeline: str | None
    weights: WeightSources
    licence: Licence
    max_references: int
    tasks: frozenset[Task]
    steps: int | None
    guidance: float | None
    price_credits: int
    memory_gb: float | None
    description: str
    trades: str
    strategies: tuple[str, ...] = (NATIVE,)
    step_cache: str | None = None
    step_cache_threshold: float = 0.0
    requires: tuple[str, ...] = field(default_factory=tuple)
    bfl_endpoint: str | None = None
    explicit_size: bool = False
    weights_key: str = ""
    min_steps: int = 1

    @property
    def local(self) -> bool:
        return self.backend == "diffusers"

    @property
    def short_name(self) -> str:
        """The last part of the name: the BFL shim route and the Replicate model name."""
        return self.name.split("/", 1)[1]

    @property
    def can_generate(self) -> bool:
        return Task.GENERATE in self.tasks

    @property
    def can_edit(self) -> bool:
        return Task.EDIT in self.tasks

    @property
    def default_strategy(self) -> str:
        return self.strategies[0]

    @property
    def warm_key(self) -> str:
        """Entries with the same warm key run on one loaded pipeline."""
        return self.weights_key or self.key

    @property
    def tier(self) -> TierSpec:
        """The entry seen through the older tier interface (engine and service code written for tiers)."""
        if self.key in TIERS:
            return TIERS[self.key]
        return TierSpec(name=self.key, title=self.title, backend=self.backend, price_credits=self.price_credits,
                        max_references=self.max_references, steps=self.steps, guidance=self.guidance,
                        description=self.description, trades=self.trades, step_cache=self.step_cache,
                        step_cache_threshold=self.step_cache_threshold, requires=self.requires)

    def check_references(self, n: int, field_name: str = "references") -> None:
        """Refuse a reference count the model cannot take.

        Raises:
            InvalidRequest: naming the model's limit (or that it cannot generate without a reference).
        """
        if n == 0 and not self.can_generate:
            raise InvalidRequest(
                f"{field_name}: {self.title} ({self.name}) only edits: give at least one reference image, or pick "
                f"a model that generates from text alone ({', '.join(e.name for e in ENTRIES if e.can_generate)})",
                field=field_name)
        if n > 0 and not self.can_edit:
            raise InvalidRequest(f"{field_name}: {self.title} only generates from text; remove the images",
                                 field=field_name)
        if n > self.max_references:
            label = f"tier {self.key}" if self.key in TIERS else f"{self.title} ({self.name})"
            noun = "reference image" if self.max_references == 1 else "reference images"
            takers = [e.key for e in ENTRIES if e.max_references >= n]
            hint = f"; models taking {n}: {', '.join(takers)}" if takers else ""
            if self.key in TIERS and n <= TIERS["max"].max_references:
                hint = "; Kontext [max] (hosted, up to 4) or [dev] take several references" + hint
            raise InvalidRequest(
                f"{field_name}: {label} takes at most {self.max_references} {noun}, got {n}; drop the least "
                f"important or combine some into one picture{hint}", field=field_name)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready description (``/v1/models``, ``kontext models --json``)."""
        return {
            "name": self.name, "key": self.key, "title": self.title, "family": self.family.value,
            "backend": self.backend, "local": self.local, "pipeline": self.pipeline,
            "weights": dataclasses.asdict(self.weights),
            "licence": dataclasses.asdict(self.licence), "commercial_use": self.licence.commercial,
            "max_references": self.max_references, "tasks": sorted(t.value for t in self.tasks),
            "steps": self.steps, "guidance": self.guidance, "price_credits": self.price_credits,
            "memory_gb": self.memory_gb, "strategies": list(self.strategies), "description": self.description,
            "trades": self.trades, "requires": list(self.requires),
        }


_FLUX1_DEV_LICENCE = Licence(
    "FLUX.1 [dev] Non-Commercial License",
    "https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev/blob/main/LICENSE.md", False,
    "non-commercial use of the model; BFL sells commercial licences")
_FLUX_NC_LICENCE = Licence(
    "FLUX Non-Commercial License", "https://huggingface.co/black-forest-labs/FLUX.2-klein-9B", False,
    "non-commercial use of the model; BFL sells commercial licences")
_FLUX2_DEV_LICENCE = Licence(
    "FLUX.2 [dev] Non-Commercial License",
    "https://huggingface.co/black-forest-labs/FLUX.2-dev/blob/main/LICENSE.txt", False,
    "non-commercial use of the model; BFL sells commercial licences")
_APACHE = Licence("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0", True)
_BFL_API = Licence("BFL API terms of service", "https://bfl.ai/legal/terms-of-service", True,
                   "paid per image by your BFL account; outputs may be used commercially")
_KONTEXT_WEIGHTS = WeightSources(hub="black-forest-labs/FLUX.1-Kontext-dev",
                                 single_file="flux1-kontext-dev.safetensors", download_gb=34)


def _kontext(key: str, name: str) -> ModelEntry:
    t = TIERS[key]
    local = t.local
    return ModelEntry(
        name=name, key=key, title=t.title, family=Family.KONTEXT, backend=t.backend,
        pipeline="FluxKontextPipeline" if local else None,
        weights=_KONTEXT_WEIGHTS if local else WeightSources(),
        licence=_FLUX1_DEV_LICENCE if local else _BFL_API, max_references=t.max_references,
        # Kontext [dev] also generates from text alone (its pipeline without an image); the hosted tiers edit.
        tasks=frozenset({Task.EDIT, Task.GENERATE}) if local else frozenset({Task.EDIT}),
        steps=t.steps, guidance=t.guidance, price_credits=t.price_credits, memory_gb=34.0 if local else None,
        description=t.description, trades=t.trades,
        strategies=KONTEXT_STRATEGIES if local else (NATIVE,), step_cache=t.step_cache,
        step_cache_threshold=t.step_cache_threshold, requires=t.requires,
        bfl_endpoint=None if local else f"flux-kontext-{key}", weights_key="kontext" if local else "")


def _hosted_flux2(key: str, name: str, title: str, price: int, description: str, trades: str,
                  steps: int | None = None, guidance: float | None = None) -> ModelEntry:
    return ModelEntry(
        name=name, key=key, title=title, family=Family.FLUX2, backend="bfl_api", pipeline=None,
        weights=WeightSources(), licence=_BFL_API, max_references=8,
        tasks=frozenset({Task.EDIT, Task.GENERATE}), steps=steps, guidance=guidance, price_credits=price,
        memory_gb=None, description=description, trades=trades, requires=("BFL_API_KEY",),
        bfl_endpoint=name.split("/", 1)[1], explicit_size=True)


ENTRIES: tuple[ModelEntry, ...] = (
    _kontext("dev", "black-forest-labs/flux-kontext-dev"),
    _kontext("fast", "black-forest-labs/flux-kontext-fast"),
    _kontext("pro", "black-forest-labs/flux-kontext-pro"),
    _kontext("max", "black-forest-labs/flux-kontext-max"),
    ModelEntry(
        name="black-forest-labs/flux-2-klein-4b", key="klein-4b", title="FLUX.2 [klein] 4B", family=Family.KLEIN,
        backend="diffusers", pipeline="Flux2KleinPipeline",
        weights=WeightSources(hub="black-forest-labs/FLUX.2-klein-4B", single_file="flux-2-klein-4b.safetensors",
                              download_gb=16),
        licence=_APACHE, max_references=4, tasks=frozenset({Task.EDIT, Task.GENERATE}), steps=4, guidance=1.0,
        price_credits=2, memory_gb=16.0,
        description="FLUX.2 [klein] 4B: a small distilled FLUX.2 that edits with up to 4 references natively "
                    "and generates from text, in 4 steps.",
        trades="Fast and small (about 8 GB for the transformer); less detail and text fidelity than FLUX.2 "
               "[dev] or Kontext; guidance is distilled in (the guidance setting has no effect). Apache-2.0: "
               "commercial use allowed."),
    ModelEntry(
        name="black-forest-labs/flux-2-klein-9b", key="klein-9b", title="FLUX.2 [klein] 9B", family=Family.KLEIN,
        backend="diffusers", pipeline="Flux2KleinPipeline",
        weights=WeightSources(hub="black-forest-labs/FLUX.2-klein-9B", single_file="flux-2-klein-9b.safetensors",
                              download_gb=34),
        licence=_FLUX_NC_LICENCE, max_references=4, tasks=frozenset({Task.EDIT, Task.GENERATE}), steps=4,
        guidance=1.0, price_credits=3, memory_gb=34.0,
        description="FLUX.2 [klein] 9B: the larger distilled klein, up to 4 references natively, 4 steps.",
        trades="Better detail than klein 4B at about twice the memory; non-commercial licence."),
    ModelEntry(
        name="black-forest-labs/flux-2-dev", key="flux2-dev", title="FLUX.2 [dev]", family=Family.FLUX2,
        backend="diffusers", pipeline="Flux2Pipeline",
        weights=WeightSources(hub="black-forest-labs/FLUX.2-dev", single_file="flux2-dev.safetensors",
                              download_gb=110),
        licence=_FLUX2_DEV_LICENCE, max_references=6, tasks=frozenset({Task.EDIT, Task.GENERATE}), steps=28,
        guidance=4.0, price_credits=8, memory_gb=112.0,
        description="FLUX.2 [dev]: the 32B open FLUX.2 with a Mistral-Small-3 text encoder; several "
                    "references natively (BFL recommends at most 6).",
        trades="The strongest open FLUX.2, and the heaviest: it does not fit one 80 GB card resident, so it "
               "runs offloaded (slow) unless quantized; 28 steps instead of BFL's 50 (a fair trade); "
               "non-commercial licence."),
    ModelEntry(
        name="qwen/qwen-image-edit-2511", key="qwen-edit", title="Qwen-Image-Edit-2511", family=Family.QWEN,
        backend="diffusers", pipeline="QwenImageEditPlusPipeline",
        weights=WeightSources(hub="Qwen/Qwen-Image-Edit-2511", single_file="qwen_image_edit_2511_bf16.safetensors",
                              download_gb=58),
        licence=_APACHE, max_references=3, tasks=frozenset({Task.EDIT}), steps=40, guidance=4.0,
        price_credits=6, memory_gb=57.0, min_steps=2,  # its scheduler's terminal shift needs two steps
        description="Qwen-Image-Edit-2511: a 20B editor with a Qwen2.5-VL encoder that sees the pictures; 1 to 3 "
                    "references natively; strong at text in images.",
        trades="Real classifier-free guidance (two transformer passes per step: about twice the time per "
               "step); edit-only; about 57 GB in bf16. Apache-2.0: commercial use allowed."),
    _hosted_flux2("flux2-pro", "black-forest-labs/flux-2-pro", "FLUX.2 [pro]", 6,
                  "BFL's hosted FLUX.2 [pro]: up to 8 references, explicit width and height, or text alone.",
                  "Hosted: needs a BFL API key and network access; steps and guidance chosen by BFL; no LoRAs."),
    _hosted_flux2("flux2-flex", "black-forest-labs/flux-2-flex", "FLUX.2 [flex]", 10,
                  "BFL's hosted FLUX.2 [flex]: like pro, with steps and guidance under your control.",
                  "Hosted: needs a BFL API key; costs more than pro; slower at high step counts; no LoRAs.",
                  steps=50, guidance=4.5),
    _hosted_flux2("flux2-max", "black-forest-labs/flux-2-max", "FLUX.2 [max]", 14,
                  "BFL's hosted FLUX.2 [max]: the flagship FLUX.2, up to 8 references.",
                  "Hosted: needs a BFL API key; the most expensive FLUX.2; no LoRAs."),
)


def _norm(text: str) -> str:
    return str(text).strip().lower()


class Catalogue:
    """The entries, looked up by any of their names, with prices that configuration may change.

    Args:
        entries: the models.
        prices: credit prices by key or name that replace the entries' defaults.
    """

    def __init__(self, entries: Iterable[ModelEntry] = ENTRIES, prices: Mapping[str, int] | None = None):
        base = list(entries)
        self._index: dict[str, ModelEntry] = {}
        out = []
        for entry in base:
            for alias in (entry.name, entry.short_name, entry.key):
                if prices and alias in prices:
                    entry = dataclasses.replace(entry, price_credits=int(prices[alias]))
            out.append(entry)
        if prices:
            known = {a for e in base for a in (e.name, e.short_name, e.key)}
            unknown = sorted(set(prices) - known)
            if unknown:
                raise InvalidRequest(f"prices: no model named {', '.join(unknown)}; models: "
                                     f"{', '.join(e.key for e in base)}", field="prices")
        self.entries: tuple[ModelEntry, ...] = tuple(out)
        for entry in self.entries:
            for alias in (entry.name, entry.short_name, entry.key):
                self._index[_norm(alias)] = entry

    def with_prices(self, prices: Mapping[str, int]) -> Catalogue:
        """A catalogue with some prices replaced (keys: any of a model's names)."""
        return Catalogue(self.entries, prices)

    def find(self, name: str | None) -> ModelEntry | None:
        """The entry ``name`` names (full name, its last part or short key), or None."""
        if name is None:
            return None
        return self._index.get(_norm(name))

    def resolve(self, name: str | None, field_name: str = "model") -> ModelEntry:
        """The entry ``name`` names.

        Raises:
            UnsupportedTier: (an InvalidRequest) listing every valid name.
        """
        entry = self.find(name)
        if entry is None and field_name == "tier":
            others = ", ".join(e.name for e in self.entries if e.key not in TIERS)
            raise UnsupportedTier(f"tier must be one of {', '.join(TIERS)}; got {name!r} (other models, named with "
                                  f"model: {others})", field=field_name)
        if entry is None:
            raise UnsupportedTier(f"{field_name} must be one of {', '.join(self.names())} (or a short name: "
                                  f"{', '.join(e.key for e in self.entries)}); got {name!r}", field=field_name)
        return entry

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def local(self) -> list[ModelEntry]:
        return [e for e in self.entries if e.local]

    def __iter__(self):
        return iter(self.entries)


CATALOGUE = Catalogue()


def get_model(name: str | None, field_name: str = "model") -> ModelEntry:
    """Look a model up in the default catalogue by any of its names (see ``Catalogue.resolve``)."""
    return CATALOGUE.resolve(name, field_name)


def parse_prices(text: str | None) -> dict[str, int]:
    """Parse ``key=credits,key=credits`` (the ``KONTEXT_PRICES`` form).

    Raises:
        InvalidRequest: a part that is not ``name=integer``.
    """
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = int(value)
        except ValueError:
            raise InvalidRequest(f"prices: expected name=credits (e.g. klein-4b=2), got {part.strip()!r}",
                                 field="prices") from None
    return out
