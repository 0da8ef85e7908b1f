"""The edit backends under the contract: each case is one backend, ready to run, with what the checks need
to know about it (its tiers, its reference limits, how it reports progress, what it sent upstream).

Adding a backend to the contract means adding one case here; every check in ``test_edit_backends.py`` then
runs on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kontext_studio.core.backends.base import (
    CancelFn,
    EditBackend,
    GenerationOutput,
    GenerationPlan,
    ProgressFn,
)
from kontext_studio.core.backends.bfl_api import BflApiBackend, BflConfig
from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.testing.fake_bfl import FakeBflServer, FakeBflUpstream

BFL_KEY = "contract-bfl-key"


class Recording(EditBackend):
    """Runs another backend unchanged and keeps every plan it was given and every output it returned, so
    a check can tell whether the backend ran at all and what it handed back before the engine's geometry
    lock."""

    def __init__(self, inner: EditBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.separate_references = inner.separate_references
        self.plans: list[GenerationPlan] = []
        self.outputs: list[GenerationOutput] = []

    @property
    def resolution(self) -> int:
        return self.inner.resolution

    def model_info(self) -> dict[str, Any]:
        return self.inner.model_info()

    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        self.plans.append(plan)
        out = self.inner.generate(plan, on_step=on_step, cancel=cancel)
        self.outputs.append(out)
        return out


def no_sleep(_seconds: float) -> None:
    """The BFL backend's pauses between polls, skipped: the contract checks outcomes, not timing."""


def bfl_backend(upstream: FakeBflUpstream, *, transport: bool, sleep: Callable[[float], None] = no_sleep,
                **config: Any) -> BflApiBackend:
    """A BFL backend pointed at ``upstream``: over a socket (FakeBflServer) or through its httpx transport."""
    cfg = BflConfig(api_key=config.pop("api_key", BFL_KEY), base_url=upstream.url, poll_initial=0.001,
                    poll_max=0.002, **config)
    return BflApiBackend(cfg, sleep=sleep, transport=upstream.transport() if transport else None)


@dataclass
class Case:
    """One backend under the contract.

    Attributes:
        name: the case's id in test names.
        backend: the backend, wrapped so its calls are recorded.
        tier: the tier the checks run on (one that takes several references).
        reference_limits: (tier, most references it takes) pairs the refusal check tries.
        steps: the steps the progress and cancel checks ask for (None: hosted tiers choose their own; the
            other checks ask local backends for one step, which is all they need).
        local: True for a model run here (pixels at the planned size, one progress report per step).
        real_model: True when the pixels come from a model (every reference changes them), not a pattern.
        upstream: the fake BFL upstream of a hosted backend (what was submitted, polled, downloaded).
        model: the catalogue model the checks ask for (None: ``tier`` names it); its reference limits are
            then model names too.
        min_steps: the fewest steps the model runs (one is enough for most checks).
    """

    name: str
    backend: Recording
    tier: str
    reference_limits: list[tuple[str, int]]
    steps: int | None
    local: bool
    real_model: bool = False
    upstream: FakeBflUpstream | None = None
    model: str | None = None
    min_steps: int = 1

    def editor(self) -> Editor:
        return Editor({self.model or self.backend.name: self.backend})

    def sent_upstream(self) -> int:
        """Submissions that reached the hosted upstream (each one is charged); 0 for local backends."""
        return 0 if self.upstream is None else len(self.upstream.submit_attempts)


# The other local families: catalogue key and backend class, on their tiny models.
FAMILIES = {
    "klein": ("klein-4b", "diffusers_flux2", "Flux2KleinBackend"),
    "flux2": ("flux2-dev", "diffusers_flux2", "Flux2DevBackend"),
    "qwen": ("qwen-edit", "diffusers_qwen", "QwenImageEditBackend"),
}
CASES = ["fake", "diffusers-kontext", "bfl-server", "bfl-transport", "bfl-flux2-transport",
         *(f"diffusers-{f}" for f in FAMILIES)]


@pytest.fixture(scope="session")
def family_backends(tiny_family_dirs: dict[str, Any]) -> dict[str, EditBackend]:
    """One warm backend per family on its tiny model, loaded once for the whole contract run."""
    import importlib

    from kontext_studio.core.catalogue import get_model
    from kontext_studio.core.weights import ModelSource

    out: dict[str, EditBackend] = {}
    for family, (key, module, cls) in FAMILIES.items():
        backend_cls = getattr(importlib.import_module(f"kontext_studio.core.backends.{module}"), cls)
        backend = backend_cls(get_model(key), ModelSource.parse(str(tiny_family_dirs[family])))
        backend.load()
        out[family] = backend
    return out


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every edit backend in turn, fresh for each check (the tiny diffusers model stays warm)."""
    name = request.param
    if name == "fake":
        yield Case(name, Recording(FakeBackend(resolution=256)), "dev", [("dev", 4), ("pro", 1)], steps=3,
                   local=True)
    elif name == "diffusers-kontext":
        backend = request.getfixturevalue("backend")
        backend.loras.apply([])
        yield Case(name, Recording(backend), "dev", [("dev", 4), ("fast", 4)], steps=2, local=True,
                   real_model=True)
    elif name == "bfl-server":
        with FakeBflServer(BFL_KEY) as server:
            yield Case(name, Recording(bfl_backend(server, transport=False)), "max", [("max", 4), ("pro", 1)],
                       steps=None, local=False, upstream=server)
    elif name == "bfl-transport":
        upstream = FakeBflUpstream(BFL_KEY)
        yield Case(name, Recording(bfl_backend(upstream, transport=True)), "max", [("max", 4), ("pro", 1)],
                   steps=None, local=False, upstream=upstream)
    elif name == "bfl-flux2-transport":  # hosted FLUX.2: exact width and height, up to 8 references
        upstream = FakeBflUpstream(BFL_KEY)
        yield Case(name, Recording(bfl_backend(upstream, transport=True)), "flux2-pro", [("flux2-pro", 8)],
                   steps=None, local=False, upstream=upstream, model="flux2-pro")
    elif name.removeprefix("diffusers-") in FAMILIES:
        from kontext_studio.core.catalogue import get_model

        family = name.removeprefix("diffusers-")
        key = FAMILIES[family][0]
        backend = request.getfixturevalue("family_backends")[family]
        backend.loras.apply([])
        entry = get_model(key)
        yield Case(name, Recording(backend), key, [(key, entry.max_references)], steps=max(2, entry.min_steps),
                   local=True, real_model=True, model=key, min_steps=entry.min_steps)
    else:  # pragma: no cover - a name in CASES without a branch
        raise AssertionError(name)
