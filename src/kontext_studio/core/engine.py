"""The engine: ``Editor.edit(EditRequest) -> EditResult``, plus series and replay.

The engine decides everything (tier defaults, seed, working sizes, reference layout) and records it in
the recipe; a backend only executes the plan. Every adjustment becomes a warning in words.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image

from kontext_studio.core.backends.base import (
    CancelFn,
    EditBackend,
    GenerationPlan,
    PreparedReference,
    RemoteTaskLog,
)
from kontext_studio.core.catalogue import Family, ModelEntry, get_model
from kontext_studio.core.contact_sheet import contact_sheet
from kontext_studio.core.errors import InvalidRequest, RecipeError, TierNotConfigured
from kontext_studio.core.fidelity_base import Fidelity
from kontext_studio.core.images import LoadedImage, load_reference, sha256_image
from kontext_studio.core.multiref import Placement, placements, stitch
from kontext_studio.core.preflight import preflight
from kontext_studio.core.recipe import IPTC_SOURCE_TYPE, RECIPE_SCHEMA, read_recipe
from kontext_studio.core.registry import TierSpec
from kontext_studio.core.resolution import GeometryPlan, plan_generate, plan_output, reference_size
from kontext_studio.core.types import (
    MAX_SEED,
    EditRequest,
    EditResult,
    GeometryMode,
    LoraSpec,
    OutputFormat,
    Reference,
    Strategy,
)
from kontext_studio.core.warm import WarmPool

logger = logging.getLogger("kontext_studio.engine")

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)
SEED_RANGE = MAX_SEED + 1  # guard candidates count up from the seed and wrap inside the range


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    # Reading package metadata costs ~10 ms; the versions cannot change within a process.
    out = [("python", platform.python_version())]
    for name in ("kontext-studio", "torch", "diffusers", "transformers", "peft", "pillow"):
        try:
            out.append((name.replace("-", "_"), metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(out)


def library_versions() -> dict[str, str]:
    """Versions that affect pixels, for the recipe."""
    return dict(_versions())


def _score_label(result: EditResult) -> str:
    sim = (result.identity or {}).get("similarity")
    return "" if sim is None else f", identity {sim:.2f}"


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass
class _Candidate:
    image: Image.Image
    seed: int
    info: dict[str, Any]
    warnings: list[str]
    similarity: float | None = None
    passed: bool | None = None
    identity: dict[str, Any] | None = None
    lock: dict[str, Any] | None = None


@dataclass
class SeriesResult:
    """A campaign: one reference set, many instructions."""

    results: list[EditResult]
    contact_sheet: Image.Image
    timings: dict[str, float] = field(default_factory=dict)


class Editor:
    """Runs edits on the backend each catalogue model names.

    Args:
        backends: backend name → instance. Names are a model's key (``klein-4b``), its warm key
            (``kontext`` for Kontext dev and fast) or a backend kind (``diffusers`` runs Kontext, ``bfl_api`` the
            hosted models, ``fake`` everything). A model whose backend is absent raises TierNotConfigured.
        backend_factories: lazily built backends under the same names (so ``kontext models`` never loads a
            model). Local backends built from them stay warm in ``warm`` and are rebuilt after an eviction.
        fidelity: the analyser for reference checks, pixel lock and identity scores (None: none run).
        warm: the pool that keeps local pipelines loaded (default: as many as free memory allows).
    """

    def __init__(self, backends: dict[str, EditBackend] | None = None,
                 backend_factories: dict[str, Callable[[], EditBackend]] | None = None,
                 fidelity: Fidelity | None = None, warm: WarmPool | None = None):
        self._backends: dict[str, EditBackend] = dict(backends or {})
        self._factories = dict(backend_factories or {})
        self.fidelity = fidelity
        # A lazily built backend is built once, under this lock: a second caller waits for the first build
        # instead of finding the factory gone. A build that failed is retried after RETRY_FAILED_AFTER s.
        self._build_lock = threading.Lock()
        self._building: set[str] = set()
        self._failed: dict[str, tuple[float, str]] = {}
        self.warm = warm or WarmPool()

    RETRY_FAILED_AFTER = 30.0

    # -- plumbing -----------------------------------------------------------------------------
    def use_backend(self, name: str, backend: EditBackend | None) -> None:
        """Install the backend behind ``name`` while the process runs (None removes it), e.g. the hosted
        backend once an administrator enters its API key in the studio's settings."""
        self._factories.pop(name, None)
        if backend is None:
            self._backends.pop(name, None)
        else:
            self._backends[name] = backend

    @staticmethod
    def _names(entry: ModelEntry) -> list[str]:
        names = [entry.key, entry.warm_key]
        # The generic kinds: "diffusers" has always meant the Kontext backend; "bfl_api" runs every hosted model.
        if entry.family is Family.KONTEXT or not entry.local:
            names.append(entry.backend)
        return list(dict.fromkeys(names))

    @staticmethod
    def _entry(model: ModelEntry | TierSpec | str) -> ModelEntry:
        return model if isinstance(model, ModelEntry) else get_model(model if isinstance(model, str) else model.name)

    def backend_for(self, model: ModelEntry | TierSpec | str) -> EditBackend:
        """The backend that runs ``model`` (a catalogue entry, a tier, or any name of either), built now if it
        is lazy (a concurrent caller waits for the build).

        Local backends stay warm after their first use; building one may evict the least recently used other
        local model (see ``WarmPool``), which is rebuilt from its factory when it is needed again.

        Raises:
            TierNotConfigured: naming what the model needs, or why its backend failed to start.
            UnsupportedTier: an unknown name.
        """
        entry = self._entry(model)
        names = self._names(entry)
        for known in names:
            if known in self._backends:
                if entry.local:
                    self.warm.touch(known)
                return self._backends[known]
        name = next((n for n in names if n in self._factories), None)
        if name is not None:
            with self._build_lock:
                if name not in self._backends:
                    failed = self._failed.get(name)
                    if failed is not None and time.monotonic() - failed[0] < self.RETRY_FAILED_AFTER:
                        raise TierNotConfigured(f"model {entry.key!r} ({entry.title}): its backend failed to start "
                                                f"({failed[1]}); it is retried in a moment")
                    self._building.add(name)
                    try:
                        backend = self._factories[name]()
                    except Exception as exc:
                        self._failed[name] = (time.monotonic(), f"{exc.__class__.__name__}: {exc}")
                        raise
                    finally:
                        self._building.discard(name)
                    self._failed.pop(name, None)
                    self._backends[name] = backend
                    if entry.local:
                        for old in self.warm.admit(name, backend, entry):
                            evicted = self._backends.pop(old, None)
                            if evicted is not None:
                                logger.info("evicting %s to make room for %s", old, entry.key)
                                evicted.unload()
                return self._backends[name]
        if "fake" in self._backends:
            return self._backends["fake"]
        needs = ", ".join(entry.requires) or f"the {entry.title} weights on this machine"
        # Said in words any face can show (the API and the studio too): no command-line flags here.
        hint = ("Kontext [dev] and [fast] run locally with the FLUX.1 Kontext [dev] weights."
                if entry.family is Family.KONTEXT else "The model list shows what this installation can run.")
        raise TierNotConfigured(
            f"model {entry.key!r} ({entry.title}) is not configured on this installation: it needs {needs}. {hint}"
        )

    def backend_state(self, model: ModelEntry | TierSpec | str) -> tuple[str, str | None]:
        """Where ``model``'s backend stands, without building it: ``ready``, ``starting`` (being built),
        ``lazy`` (built on first use, or again after an eviction), ``failed`` (retried later; with the reason)
        or ``absent`` (with what it needs)."""
        entry = self._entry(model)
        names = self._names(entry)
        if any(n in self._backends for n in names):
            return "ready", None
        lazy = [n for n in names if n in self._factories]
        if not lazy and "fake" in self._backends:
            return "ready", None
        if any(n in self._building for n in lazy):
            return "starting", None
        if lazy:
            failed = self._failed.get(lazy[0])
            return ("failed", failed[1]) if failed is not None else ("lazy", None)
        needs = ", ".join(entry.requires) or f"the {entry.title} weights on this machine"
        label = f"tier {entry.key!r}" if entry.family is Family.KONTEXT else f"model {entry.key!r}"
        return "absent", f"{label} ({entry.title}) is not configured on this installation: it needs {needs}."

    def _load_references(self, refs: list[Reference]) -> list[LoadedImage]:
        return [load_reference(r, i) for i, r in enumerate(refs)]

    def _prepare(self, loaded: list[LoadedImage], refs: list[Reference], strategy: Strategy,
                 resolution: int) -> tuple[list[PreparedReference], list[str]]:
        warnings: list[str] = []
        if not loaded:
            return [], warnings
        if strategy is Strategy.NATIVE and len(loaded) > 1:
            # The model takes each reference itself, in order, at its own preferred size.
            prepared = []
            for i, li in enumerate(loaded):
                size = reference_size(li.size, resolution)
                if size != li.size:
                    warnings.append(f"reference {i + 1} ({_fmt(li.size)}) resized to {_fmt(size)} for the model")
                prepared.append(PreparedReference(li.image, li.sha256, size, Placement(i + 1, 0, 0)))
            return prepared, warnings
        if len(loaded) == 1 or strategy is Strategy.STITCH:
            if len(loaded) == 1:
                canvas, sha = loaded[0].image, loaded[0].sha256
                what = f"reference ({_fmt(canvas.size)})"
            else:
                canvas = stitch([li.image for li in loaded], row_height=min(resolution, 1024))
                sha = sha256_image(canvas)
                roles = ", ".join(str(r.role or f"reference {i + 1}") for i, r in enumerate(refs))
                what = f"{len(loaded)} references ({roles}) stitched into one {_fmt(canvas.size)} canvas"
            size = reference_size(canvas.size, resolution)
            if size != canvas.size:
                warnings.append(f"{what} resized to {_fmt(size)} for the model")
            elif len(loaded) > 1:
                warnings.append(what)
            return [PreparedReference(canvas, sha, size, Placement(1, 0, 0))], warnings
        sizes = [reference_size(li.size, resolution) for li in loaded]
        spots = placements([(w // 16, h // 16) for w, h in sizes], strategy)
        prepared = []
        for i, (li, size, spot) in enumerate(zip(loaded, sizes, spots, strict=True)):
            if size != li.size:
                warnings.append(f"reference {i + 1} ({_fmt(li.size)}) resized to {_fmt(size)} for the model")
            prepared.append(PreparedReference(li.image, li.sha256, size, spot))
        return prepared, warnings

    # -- public API ---------------------------------------------------------------------------
    def edit(self, request: EditRequest, on_progress: ProgressFn | None = None,
             cancel: CancelFn | None = None, _loaded: list[LoadedImage] | None = None,
             remote_tasks: RemoteTaskLog | None = None) -> EditResult:
        """Run one edit.

        With a fidelity analyser configured, the references are checked, the output is pixel-locked
        (``request.pixel_lock``) and scored against the subject reference; ``identity_guard`` with
        ``candidates`` > 1 tries seeds ``seed, seed+1, ...`` until one reaches the threshold and keeps the
        best.

        Args:
            request: what to do.
            on_progress: called with (phase, done, total); phases ``load``, ``denoise``, ``done``.
            cancel: polled between denoising steps; returning True stops the edit.
            remote_tasks: for hosted tiers, where the upstream task is noted as soon as it is known, so a
                retried job resumes it instead of sending the request again (the service passes the job's).

        Returns:
            The EditResult (image at the promised size, seed, recipe, timings, warnings, scores).

        Raises:
            InvalidRequest: bad fields or images (the message names the field and the fix).
            TierNotConfigured: the tier's backend is not set up.
            WeightsNotFound: local weights are missing.
            Canceled: ``cancel()`` returned True.
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        # Every model-free check (fields, model, images, mask, LoRA files) runs before the backend is built,
        # so a wrong input is reported before the heavy libraries and the weights load.
        checked = preflight(request, _loaded)
        entry, loaded, mask = checked.entry, checked.references, checked.mask
        timings["images"] = time.perf_counter() - t_start
        backend = self.backend_for(entry)

        warnings: list[str] = [w for li in loaded for w in li.warnings]
        findings: list[list[dict[str, Any]]] = []
        if self.fidelity is not None and request.check_references and loaded:
            t = time.perf_counter()
            findings = [self.fidelity.check_reference(li.image, li.sha256) for li in loaded]
            warnings += [f"reference {i + 1}: {f['message']} ({f['fix']})" for i, found in enumerate(findings)
                         for f in found if f.get("severity") in ("warning", "problem", "error")]
            timings["reference_check"] = time.perf_counter() - t

        if on_progress:
            on_progress("load", 0, 1)
        t = time.perf_counter()
        resolution = backend.resolution
        model = backend.model_info()
        timings["load"] = time.perf_counter() - t
        if on_progress:
            on_progress("load", 1, 1)

        # __post_init__ already normalised these; the constructors only narrow the types.
        strategy = Strategy(request.strategy or entry.default_strategy)
        fmt = OutputFormat(request.output_format)
        explicit = (int(request.width), int(request.height)) if request.width and request.height else None
        if loaded:
            geometry = plan_output(loaded[0].size, request.aspect_ratio, GeometryMode(request.geometry), resolution,
                                   explicit=explicit)
        else:
            geometry = plan_generate(request.aspect_ratio, GeometryMode(request.geometry), resolution, explicit)
        if backend.separate_references:  # hosted models: each reference goes up as its own image
            prepared = [PreparedReference(li.image, li.sha256, li.size, Placement(1, 0, 0)) for li in loaded]
            ref_warnings: list[str] = []
        else:
            prepared, ref_warnings = self._prepare(loaded, request.references, strategy, resolution)
        warnings += ref_warnings + list(geometry.warnings)
        seed = int(request.seed) if request.seed is not None else secrets.randbelow(SEED_RANGE)
        tier = entry.tier
        steps = int(request.steps or entry.steps or 28)
        if request.draft:
            steps = max(1, steps // 2)
        acceleration = str(request.acceleration or tier.acceleration).lower()
        guidance = float(request.guidance if request.guidance is not None else (
            entry.guidance if entry.guidance is not None else 2.5))
        plan = GenerationPlan(
            instruction=request.instruction.strip(),
            references=prepared,
            strategy=strategy,
            model_size=geometry.model_size,
            steps=steps,
            guidance=guidance,
            seed=seed,
            loras=list(request.loras),
            step_cache=entry.step_cache,
            step_cache_threshold=entry.step_cache_threshold,
            acceleration=acceleration,
            tier=entry.key,
            roles=[str(r.role) if r.role else None for r in request.references],
            aspect_ratio=request.aspect_ratio,
            output_format=fmt.value,
            safety_tolerance=request.safety_tolerance,
            prompt_upsampling=bool(request.prompt_upsampling),
            remote_tasks=remote_tasks,
            output_size=geometry.output_size,
        )
        subject = next((i for i, r in enumerate(request.references) if r.role == "subject"), 0)
        candidates = int(request.candidates)
        best: _Candidate | None = None
        tried: list[dict[str, Any]] = []
        for k in range(candidates):
            label = "denoise" if candidates == 1 else f"candidate {k + 1}/{candidates}"
            step_cb = (lambda done, total, label=label: on_progress(label, done, total)) if on_progress else None
            cand = self._candidate(backend, dataclasses.replace(plan, seed=(seed + k) % SEED_RANGE), geometry,
                                   loaded, subject, request, mask, step_cb, cancel, timings)
            tried.append({"seed": cand.seed, "similarity": cand.similarity, "passed": cand.passed})
            if best is None or (cand.similarity or -1.0) > (best.similarity or -1.0):
                best = cand
            guard = request.identity_guard
            if guard is None and candidates == 1:
                break
            if guard is not None and cand.similarity is not None and cand.similarity >= guard:
                break
        assert best is not None
        warnings += best.warnings
        identity = best.identity
        if identity is not None:
            identity = {**identity, "threshold": request.identity_guard, "candidates": tried}
            if request.identity_guard is not None and (best.similarity or 0.0) < request.identity_guard:
                warnings.append(
                    f"identity guard: no candidate reached similarity {request.identity_guard:.2f} in "
                    f"{len(tried)} tries; kept the best ({best.similarity or 0:.2f}, seed {best.seed})"
                )
        chain = self._chain(request.references[0], loaded[0], best.image) if loaded else None
        for w in warnings:
            logger.warning(w)
        timings["total"] = time.perf_counter() - t_start
        recipe = {
            "schema": RECIPE_SCHEMA,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "instruction": plan.instruction,
            "tier": entry.key,
            "model_name": entry.name,
            "seed": best.seed,
            # Hosted tiers choose their own steps and guidance: record none rather than numbers never used.
            "steps": steps if entry.local or entry.steps is not None else None,
            "guidance": guidance if entry.local or entry.guidance is not None else None,
            "strategy": strategy.value,
            "geometry": GeometryMode(request.geometry).value,
            "aspect_ratio": request.aspect_ratio,
            "output_format": fmt.value,
            "step_cache": (best.info.get("acceleration") or {}).get("step_cache", entry.step_cache),
            "acceleration": best.info.get("acceleration") if entry.local else None,
            "draft": bool(request.draft),
            "width": request.width,
            "height": request.height,
            "pixel_lock": request.pixel_lock if request.lock_mask is None else "mask",
            "references": [
                {"path": str(Path(r.image).resolve()) if isinstance(r.image, str | Path) else None,
                 "sha256": li.sha256, "role": str(r.role) if r.role else None, "size": list(li.size)}
                for r, li in zip(request.references, loaded, strict=True)
            ],
            "loras": best.info.get("loras", [{"path": lo.path, "weight": lo.weight} for lo in request.loras]),
            "model": model,
            "hosted": best.info.get("hosted"),
            "safety_tolerance": request.safety_tolerance,
            "prompt_upsampling": bool(request.prompt_upsampling),
            "model_size": list(geometry.model_size),
            "output_size": list(best.image.size),
            "identity": identity,
            "pixel_lock_result": best.lock,
            "reference_checks": findings,
            "chain": chain,
            "versions": library_versions(),
            "digital_source_type": IPTC_SOURCE_TYPE,
        }
        if on_progress:
            on_progress("done", 1, 1)
        return EditResult(image=best.image, seed=best.seed, recipe=recipe, timings=timings, warnings=warnings,
                          output_format=fmt, identity=identity, pixel_lock=best.lock, findings=findings,
                          references=list(request.references))

    def _candidate(self, backend: EditBackend, plan: GenerationPlan, geometry: GeometryPlan,
                   loaded: list[LoadedImage], subject: int, request: EditRequest, mask: Image.Image | None,
                   on_step: Callable[[int, int], None] | None, cancel: CancelFn | None,
                   timings: dict[str, float]) -> _Candidate:
        """Generate one seed, restore the geometry, pixel-lock it and score it."""
        out = backend.generate(plan, on_step=on_step, cancel=cancel)
        for phase, seconds in out.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
        t = time.perf_counter()
        image = out.image
        if image.size != geometry.output_size:
            image = image.resize(geometry.output_size, Image.Resampling.LANCZOS)
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t
        cand = _Candidate(image=image, seed=plan.seed, info=out.info, warnings=list(out.warnings))
        if self.fidelity is None or not loaded:
            return cand
        mode = "mask" if mask is not None else request.pixel_lock
        if mode != "off":
            t = time.perf_counter()
            if image.size == loaded[0].size:
                outcome = self.fidelity.lock(loaded[0].image, image, "auto" if mask is not None else mode, mask)
                cand.image = outcome.image
                cand.lock = {"mode": mode, "applied": outcome.applied, "reason": outcome.reason, **outcome.details}
                if outcome.applied:
                    cand.warnings.append(f"pixel lock: {outcome.reason}")
            else:
                cand.lock = {"mode": mode, "applied": False,
                             "reason": "the output has another size than the input (aspect ratio changed): "
                                       "nothing to lock to"}
            timings["pixel_lock"] = timings.get("pixel_lock", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        score = self.fidelity.identity(loaded[subject].image, cand.image)
        timings["identity"] = timings.get("identity", 0.0) + time.perf_counter() - t
        cand.similarity, cand.passed = score.similarity, score.passed
        cand.identity = {"similarity": score.similarity, "passed": score.passed, "measured": score.measured,
                         "method": score.method, "reference": subject + 1, "details": score.details}
        return cand

    def _chain(self, first: Reference, loaded: LoadedImage, output: Image.Image) -> dict[str, Any] | None:
        """For an edit of a previous output: the original it started from, the turn, and the drift."""
        if not isinstance(first.image, str | Path):
            return None
        try:
            previous = read_recipe(first.image)
        except RecipeError:
            return None
        origin = (previous.get("chain") or {}).get("origin") or (previous.get("references") or [{}])[0]
        turn = int((previous.get("chain") or {}).get("turn", 1)) + 1
        chain: dict[str, Any] = {"origin": {"path": origin.get("path"), "sha256": origin.get("sha256")},
                                 "turn": turn, "previous": {"path": str(first.image), "sha256": loaded.sha256},
                                 "drift": None}
        path = origin.get("path")
        if self.fidelity is not None and path and Path(path).is_file():
            original = load_reference(Reference(path), 0)
            if original.sha256 == origin.get("sha256"):
                score = self.fidelity.identity(original.image, output)
                # Drift is reported as drift (0 = unchanged, 1 = nothing of the original left); the similarity
                # it comes from stays beside it.
                drift = None if score.similarity is None else round(min(1.0, max(0.0, 1.0 - score.similarity)), 4)
                chain["drift"] = {"drift": drift, "similarity": score.similarity, "passed": score.passed,
                                  "method": score.method}
        return chain

    def series(self, request: EditRequest, instructions: list[str], on_progress: ProgressFn | None = None,
               cancel: CancelFn | None = None) -> SeriesResult:
        """One reference set x N instructions (a campaign).

        References are decoded once and, through the backend's content-keyed caches, VAE-encoded once;
        repeated instructions reuse their text embeddings. With no seed in ``request`` every scene gets
        the same drawn seed, so the scenes differ only by their instruction.

        Returns:
            The results in order and a labelled contact sheet.
        """
        texts = [s.strip() for s in instructions if s.strip()]
        if not texts:
            raise InvalidRequest("prompts: the prompts file has no instructions (one per line)", field="prompts")
        request.replace(instruction=texts[0]).validate()
        t0 = time.perf_counter()
        loaded = self._load_references(request.references)
        seed = request.seed if request.seed is not None else secrets.randbelow(SEED_RANGE)
        results = []
        for i, text in enumerate(texts):
            def scene_progress(phase: str, done: int, total: int, i: int = i) -> None:
                if on_progress:
                    on_progress(f"scene {i + 1}/{len(texts)} {phase}", done, total)

            results.append(self.edit(request.replace(instruction=text, seed=seed), scene_progress, cancel,
                                     _loaded=loaded))
        labels = [f"{i + 1}. {r.recipe['instruction']} (seed {r.seed}{_score_label(r)})" for i, r in enumerate(results)]
        sheet = contact_sheet([r.image for r in results], labels)
        return SeriesResult(results, sheet, {"total": time.perf_counter() - t0})

    def replay(self, path: str | Path, references: list[str] | None = None,
               on_progress: ProgressFn | None = None) -> tuple[EditResult, dict[str, Any]]:
        """Re-run the recipe embedded in an output image.

        Args:
            path: an image written by ``EditResult.save``.
            references: paths to use instead of the recorded ones (same order); each must hash to the
                recorded pixels.

        Returns:
            The new result and the original recipe.

        Raises:
            RecipeError: no recipe, or a reference missing or changed since the edit.
        """
        recipe = read_recipe(path)
        recorded = recipe.get("references") or []
        if references and len(references) != len(recorded):
            raise RecipeError(f"the recipe has {len(recorded)} reference(s); got {len(references)} with --ref")
        refs = []
        for i, entry in enumerate(recorded):
            where = references[i] if references else entry.get("path")
            if not where or not Path(where).is_file():
                raise RecipeError(
                    f"reference {i + 1} of the recipe is not at {where!r}; pass it with --ref (in order)"
                )
            ref = Reference(where, entry.get("role"))
            if load_reference(ref, i).sha256 != entry.get("sha256"):
                raise RecipeError(
                    f"reference {i + 1} at {where} is not the image the edit used (its pixels hash differently)"
                )
            refs.append(ref)
        request = EditRequest(
            references=refs,
            instruction=recipe["instruction"],
            tier=recipe["tier"],
            width=recipe.get("width"),
            height=recipe.get("height"),
            aspect_ratio=recipe.get("aspect_ratio", "match_input_image"),
            seed=recipe["seed"],
            steps=recipe.get("steps"),
            guidance=recipe.get("guidance"),
            output_format=recipe.get("output_format", "png"),
            loras=[LoraSpec(lo["path"], lo.get("weight", 1.0)) for lo in recipe.get("loras", [])],
            strategy=recipe.get("strategy"),
            geometry=recipe.get("geometry", "lock"),
            # The guard already picked its seed (recorded above): replay exactly that one.
            pixel_lock="off" if recipe.get("pixel_lock") == "off" else "auto",
            safety_tolerance=recipe.get("safety_tolerance"),
            prompt_upsampling=bool(recipe.get("prompt_upsampling")),
            # The recorded profile, not the tier's current one: the same acceleration reproduces the pixels.
            acceleration=(recipe.get("acceleration") or {}).get("profile"),
        )
        if recipe.get("pixel_lock") == "mask":
            raise RecipeError("this edit used a user mask for the pixel lock; masks are not stored in the recipe, "
                              "so replay cannot reproduce it")
        return self.edit(request, on_progress), recipe
