"""What every local diffusers family shares: locating and loading the weights, memory modes, the warm
pipeline, prompt and reference caches, LoRA slots, progress, cancellation and the recipe's model facts.

A family module (``diffusers_flux2.py``, ``diffusers_qwen.py``) supplies a pipeline subclass and says how a
plan becomes a call of the stock pipeline. The subclasses only add caches around the stock
``encode_prompt`` and ``_encode_vae_image``: every tensor the transformer sees is the stock pipeline's, so
with the same images and seed the pixels are bit-identical to the stock pipeline's.

``load_pipeline`` is the one function that turns weights into a pipeline; pass another ``loader`` to the
backend (for instance one that quantizes) to change how a family loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from kontext_studio.core.acceleration import Accelerator, keep_compiled_graphs
from kontext_studio.core.backends.base import (
    CancelFn,
    EditBackend,
    GenerationOutput,
    GenerationPlan,
    ProgressFn,
)
from kontext_studio.core.backends.diffusers_kontext import (
    _LRU,
    PROMPT_CACHE_SIZE,
    REFERENCE_CACHE_SIZE,
    DiffusersKontextBackend,
    LocalWeights,
    LoraSlots,
    start_steps,
)
from kontext_studio.core.catalogue import ModelEntry
from kontext_studio.core.device import (
    DevicePlan,
    MemoryMode,
    choose_memory_mode,
    free_vram,
    module_bytes,
    pick_device,
    pick_dtype_name,
)
from kontext_studio.core.errors import WeightsNotFound
from kontext_studio.core.quantize import apply_weight_precision, load_transformer_file
from kontext_studio.core.weights import ModelSource, WeightsStatus, locate

PipelineLoader = Callable[[ModelEntry, WeightsStatus, torch.dtype], Any]


class CachingMixin:
    """Caches around a stock pipeline's prompt and reference encoders (keys set per call by the backend).

    ``encode_prompt`` results are kept by (prompt, what the prompt encoder also sees); ``_encode_vae_image``
    results by the content key of each reference, handed over in call order in ``_reference_keys``.
    """

    _prompt_cache: _LRU
    _latent_cache: _LRU
    _reference_keys: list[Any]
    _prompt_context: tuple[Any, ...] = ()
    stats: dict[str, int]

    def init_caches(self) -> None:
        self._prompt_cache = _LRU(PROMPT_CACHE_SIZE)
        self._latent_cache = _LRU(REFERENCE_CACHE_SIZE)
        self._reference_keys = []
        self._prompt_context = ()
        self.stats = {"prompt_encodes": 0, "reference_encodes": 0}

    def cached_prompt(self, key: Any, make: Callable[[], Any]) -> Any:
        def counted() -> Any:
            self.stats["prompt_encodes"] += 1
            return make()

        value, _hit = self._prompt_cache.get_or((key, self._prompt_context), counted)
        return value

    def _encode_vae_image(self, image: torch.Tensor, generator: Any) -> torch.Tensor:  # stock name
        key = self._reference_keys.pop(0) if self._reference_keys else None
        parent = super()._encode_vae_image  # type: ignore[misc]
        if key is None:
            return parent(image=image, generator=generator)

        def make() -> torch.Tensor:
            self.stats["reference_encodes"] += 1
            return parent(image=image, generator=generator)

        value, _hit = self._latent_cache.get_or((key, tuple(image.shape), str(image.dtype)), make)
        return value

    def clear_caches(self) -> None:
        self._prompt_cache.clear()
        self._latent_cache.clear()


def pipeline_class(entry: ModelEntry) -> Any:
    """The stock diffusers class of ``entry`` (``Flux2KleinPipeline`` ...)."""
    import diffusers

    if entry.pipeline is None:
        raise ValueError(f"{entry.name} is hosted: it has no local pipeline")
    return getattr(diffusers, entry.pipeline)


def load_pipeline(entry: ModelEntry, status: WeightsStatus, dtype: torch.dtype, *, token: str | None = None,
                  allow_download: bool = False, extra: dict[str, Any] | None = None) -> Any:
    """Load the stock pipeline of ``entry`` from located weights (a diffusers folder, or a single
    transformer file with the other parts from its base).

    Args:
        entry: the catalogue entry (its ``pipeline`` class is used).
        status: where ``locate`` found the weights.
        dtype: the dtype to load in.
        token, allow_download: for a single file's base on the hub.
        extra: components to use instead of loading them (e.g. a processor, a quantized transformer).

    Returns:
        The stock pipeline, on the CPU.
    """
    cls = pipeline_class(entry)
    components = dict(extra or {})
    assert status.path is not None
    source = status.source
    if source.kind == "single_file":
        base = locate(ModelSource.parse(source.base, revision=source.revision), token, allow_download)
        assert base.path is not None
        import diffusers

        transformer_name = {"Flux2KleinPipeline": "Flux2Transformer2DModel",
                            "Flux2Pipeline": "Flux2Transformer2DModel",
                            "QwenImageEditPlusPipeline": "QwenImageTransformer2DModel"}.get(cls.__name__)
        if transformer_name is None:
            raise WeightsNotFound(f"{entry.title} cannot load from a single file; point at a diffusers folder")
        transformer_cls = getattr(diffusers, transformer_name)
        if "transformer" not in components:
            # GGUF and fp8 files keep their format; a plain checkpoint loads as before.
            quantized, info = load_transformer_file(transformer_cls, status.path, base.path, dtype)
            transformer = quantized if quantized is not None else transformer_cls.from_single_file(
                status.path, config=base.path, subfolder="transformer", dtype=dtype)
            transformer._kontext_weights_info = info  # the recipe's model.weights (read by the backend)
            components["transformer"] = transformer
        return cls.from_pretrained(base.path, dtype=dtype, **components)
    return cls.from_pretrained(status.path, dtype=dtype, **components)


class DiffusersFamilyBackend(LocalWeights, EditBackend):
    """A local catalogue model other than Kontext, through its stock diffusers pipeline.

    Args:
        entry: the catalogue entry.
        source: hub repo id, local diffusers folder, or single-file transformer (default: the entry's hub id).
        device, dtype, memory_mode, token, allow_download, cache_dir, on_status: as for the Kontext backend.
        loader: builds the stock pipeline from located weights (default ``load_pipeline``).
        precision, text_encoder_precision: weights on load, as for the Kontext backend (``auto``: the memory
            planner's choice on a GPU, as stored on the CPU).
    """

    name = "diffusers"
    edit_class: type = object  # the family's caching subclass of its stock pipeline
    text_encoders: tuple[str, ...] = ("text_encoder",)

    def __init__(self, entry: ModelEntry, source: ModelSource | str | None = None, *, device: str = "auto",
                 dtype: str = "auto", memory_mode: str = "auto", token: str | None = None,
                 allow_download: bool = False, cache_dir: str | Path | None = None,
                 on_status: Callable[[str], None] | None = None, loader: Callable[..., Any] | None = None,
                 precision: str = "auto", text_encoder_precision: str = "auto"):
        self.entry = entry
        if isinstance(source, ModelSource):
            self.source = source
        else:
            self.source = ModelSource.parse(source or entry.weights.hub, base=entry.weights.hub)
        self._device_pref, self._dtype_pref, self._memory_pref = device, dtype, memory_mode
        self.token, self.allow_download, self.cache_dir = token, allow_download, cache_dir
        self.on_status = on_status or (lambda _msg: None)
        self.loader = loader or load_pipeline
        self.pipe: Any = None
        self.status: WeightsStatus | None = None
        self.device_plan: DevicePlan | None = None
        self._fingerprint: str | None = None
        self.loras: LoraSlots | None = None
        self.accelerator: Accelerator | None = None
        self._precision_pref, self._te_precision_pref = precision, text_encoder_precision
        self.weights_info: dict[str, Any] = {"format": "diffusers", "precision": "as stored"}
        self.stats = {"loads": 0}
        # release_pipeline() clears these on the backend (the Kontext backend keeps its caches there).
        self._prompts = _LRU(1)
        self._references = _LRU(1)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, entry: ModelEntry, pipe: Any, resolution: int = 1024) -> DiffusersFamilyBackend:
        """Wrap an already-built stock pipeline (tests and benchmarks); no weights are located or hashed."""
        backend = cls(entry, ModelSource("folder", "<in-memory>"))
        backend.status = WeightsStatus(True, None, backend.source, resolution=resolution)
        backend._adopt(pipe, MemoryMode.NONE, "given pipeline")
        backend._fingerprint = "in-memory"
        return backend

    def _adopt(self, pipe: Any, mode: MemoryMode, reason: str) -> None:
        if not isinstance(pipe, self.edit_class):
            extra = {k: v for k, v in pipe.config.items() if not k.startswith("_") and not isinstance(v, list | tuple)}
            pipe = self.edit_class(**pipe.components, **extra)
        if isinstance(pipe, CachingMixin):
            pipe.init_caches()
        pipe.set_progress_bar_config(disable=True)
        device = str(pipe._execution_device)
        dtype = str(pipe.transformer.dtype).replace("torch.", "")
        self.device_plan = DevicePlan(device, dtype, mode, free_vram(device), reason)
        self.pipe = pipe
        self.loras = LoraSlots(pipe, pipeline_class=pipeline_class(self.entry), model_title=self.entry.title)
        self.accelerator = Accelerator(pipe.transformer, device)

    def extra_components(self, status: WeightsStatus) -> dict[str, Any]:
        """Components the family builds itself instead of letting diffusers load them."""
        return {}

    def load(self) -> Any:
        """Load the pipeline once (later calls return the warm one).

        Raises:
            WeightsNotFound: with instructions for getting the weights.
        """
        if self.pipe is not None:
            return self.pipe
        status = locate(self.source, self.token, download=self.allow_download)
        if not status.found:
            raise WeightsNotFound(self.how_to_get(status))
        self.status = status
        device = pick_device(self._device_pref)
        dtype_name = pick_dtype_name(device, self._dtype_pref)
        self.on_status(f"loading {self.entry.title} from {self.source.describe()} ({dtype_name})")
        pipe = self.loader(self.entry, status, getattr(torch, dtype_name), token=self.token,
                           allow_download=self.allow_download, extra=self.extra_components(status))
        stored = getattr(pipe.transformer, "_kontext_weights_info", None) or {"format": "diffusers",
                                                                                "precision": "as stored"}
        self.weights_info = apply_weight_precision(pipe, list(self.text_encoders), device, self._precision_pref,
                                                   self._te_precision_pref, stored, on_status=self.on_status)
        if device != "cpu":
            keep_compiled_graphs()
        mode, reason = self._memory_mode(pipe, device)
        DiffusersKontextBackend._apply_memory_mode(pipe, mode, device)
        self._adopt(pipe, mode, reason)
        self.stats["loads"] += 1
        return self.pipe

    def how_to_get(self, status: WeightsStatus) -> str:
        w, lic = self.entry.weights, self.entry.licence
        gated = "accept its licence on the model page while signed in, create a read token and set HF_TOKEN, then "
        return (f"{self.entry.title} weights not found: {status.message.split('. To get')[0]}. To get them: "
                f"{gated if not lic.commercial else ''}run again with downloads allowed (about {w.download_gb:g} GB "
                f"from https://huggingface.co/{w.hub}), or point --weights / KONTEXT_WEIGHTS at a local diffusers "
                f"folder. Licence: {lic.name} ({'commercial use allowed' if lic.commercial else 'non-commercial'}).")

    def _memory_mode(self, pipe: Any, device: str) -> tuple[MemoryMode, str]:
        if device == "cpu":
            return MemoryMode.NONE, "running on the CPU"
        if self._memory_pref != "auto":
            return MemoryMode(self._memory_pref), "chosen by the user"
        free = free_vram(device)
        if free is None:
            return MemoryMode.MODEL_OFFLOAD, "unified memory: one component at a time"
        parts = [pipe.transformer, pipe.text_encoder, pipe.vae]
        blocks = list(getattr(pipe.transformer, "single_transformer_blocks", [])) or list(
            pipe.transformer.transformer_blocks)
        return choose_memory_mode(free, sum(module_bytes(p) for p in parts), module_bytes(pipe.transformer),
                                  module_bytes(blocks[0]) if blocks else 0)

    # -- EditBackend ---------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        self.load()
        assert self.status is not None and self.device_plan is not None
        return {
            "backend": self.name,
            "name": self.entry.name,
            "family": self.entry.family.value,
            "pipeline": self.entry.pipeline,
            "source": self.source.location,
            "kind": self.source.kind,
            "base": self.source.base if self.source.kind == "single_file" else None,
            "revision": self.status.revision,
            "fingerprint": self.weights_fingerprint(),
            "random_weights": self.status.random_weights,
            "resolution": self.status.resolution,
            "weights": dict(self.weights_info),
            **self.device_plan.as_dict(),
        }

    @property
    def caches(self) -> dict[str, int]:
        """How often the prompt and reference encoders actually ran (series reuse shows here)."""
        return dict(getattr(self.pipe, "stats", {}))

    def reference_images(self, plan: GenerationPlan) -> list[Image.Image]:
        """The references as the stock pipeline takes them: each at its working size, in order."""
        out = []
        for ref in plan.references:
            image = ref.image.convert("RGB")
            if image.size != ref.working_size:
                image = self.pipe.image_processor.resize(image, ref.working_size[1], ref.working_size[0])
            out.append(image)
        return out

    def call_arguments(self, plan: GenerationPlan, images: list[Image.Image]) -> dict[str, Any]:
        """The family's keyword arguments for the stock ``__call__`` (prompt, guidance, images...)."""
        raise NotImplementedError

    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        pipe = self.load()
        assert self.loras is not None and self.accelerator is not None
        timings: dict[str, float] = {}
        t = time.perf_counter()
        lora_entries = self.loras.apply(plan.loras)
        timings["lora"] = time.perf_counter() - t

        on_step_end = start_steps(plan.steps, on_step, cancel)
        images = self.reference_images(plan)
        if isinstance(pipe, CachingMixin):
            pipe._reference_keys = [(r.sha256, r.working_size) for r in plan.references]
            pipe._prompt_context = tuple(pipe._reference_keys)
        width, height = plan.model_size
        report = self.accelerator.activate(plan.acceleration, self.entry.family.value, plan.step_cache,
                                           plan.step_cache_threshold)
        t = time.perf_counter()
        try:
            with self.accelerator.step_cache(report.step_cache, report.step_cache_threshold, plan.steps), \
                    self.call_context():
                result = pipe(
                    **self.call_arguments(plan, images),
                    height=height,
                    width=width,
                    num_inference_steps=plan.steps,
                    generator=torch.Generator(device="cpu").manual_seed(plan.seed),
                    callback_on_step_end=on_step_end,
                )
        finally:
            if isinstance(pipe, CachingMixin):
                pipe._reference_keys = []
                pipe._prompt_context = ()
        timings["denoise"] = time.perf_counter() - t
        info = {"loras": lora_entries, "references": len(images), "strategy": plan.strategy.value,
                "step_cache": report.step_cache, "acceleration": report.as_dict()}
        return GenerationOutput(image=result.images[0], timings=timings, info=info)

    def call_context(self) -> Any:
        """A context the stock call runs in (the family may adjust module settings for test models)."""
        import contextlib

        return contextlib.nullcontext()
