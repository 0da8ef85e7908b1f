"""The local backend: FLUX.1 Kontext [dev] through diffusers' ``FluxKontextPipeline``.

``KontextEditPipeline`` subclasses the stock pipeline and overrides only ``prepare_latents``: the engine
encodes references itself (so it can cache them and lay several out on the position grid) and hands the
packed tokens and their position ids in. With one reference the tokens, ids, noise and every later
operation are the stock pipeline's, so the pixels are bit-identical for the same seed.

The backend keeps the pipeline warm between edits, caches prompt embeddings and reference latents by
content, hot-swaps LoRA adapters without touching the base weights, and stops mid-denoise on request.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxKontextPipeline, FluxTransformer2DModel
from PIL import Image

from kontext_studio.core.acceleration import Accelerator, keep_compiled_graphs
from kontext_studio.core.backends.base import (
    CancelFn,
    EditBackend,
    GenerationOutput,
    GenerationPlan,
    PreparedReference,
    ProgressFn,
)
from kontext_studio.core.device import (
    DevicePlan,
    MemoryMode,
    choose_memory_mode,
    free_vram,
    module_bytes,
    pick_device,
    pick_dtype_name,
)
from kontext_studio.core.errors import Canceled, WeightsNotFound
from kontext_studio.core.lora import LoraFormat, LoraInfo, check_fit, read_lora, to_diffusers
from kontext_studio.core.quantize import apply_weight_precision, load_transformer_file
from kontext_studio.core.types import LoraSpec
from kontext_studio.core.weights import ModelSource, WeightsStatus, fingerprint, locate, weights_bytes

PROMPT_CACHE_SIZE = 32
REFERENCE_CACHE_SIZE = 16
MAX_LOADED_LORAS = 8
# bf16 holds integers exactly up to 256; tiled references can have larger grid positions.
_BF16_EXACT = 256


class KontextEditPipeline(FluxKontextPipeline):
    """``FluxKontextPipeline`` that accepts pre-encoded reference tokens and their position ids.

    Call with ``reference_tokens=(tokens, ids)`` and ``image=None``; everything else is the stock call.
    """

    _reference_tokens: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, *args: Any, reference_tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
                 **kwargs: Any) -> Any:
        self._reference_tokens = reference_tokens
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._reference_tokens = None

    def prepare_latents(self, image, batch_size, num_channels_latents, height, width, dtype, device,
                        generator=None, latents=None):
        latents, image_latents, latent_ids, image_ids = super().prepare_latents(
            image, batch_size, num_channels_latents, height, width, dtype, device, generator, latents
        )
        if self._reference_tokens is not None:
            tokens, ids = self._reference_tokens
            image_latents = tokens.to(device=device, dtype=dtype).expand(batch_size, -1, -1)
            image_ids = ids.to(device=device)
        return latents, image_latents, latent_ids, image_ids

    @torch.no_grad()
    def encode_reference(self, image: Image.Image, size: tuple[int, int], index: int, row: int, col: int,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE-encode one reference exactly as the stock pipeline does; return packed tokens and ids.

        Args:
            image: RGB reference.
            size: (width, height) working size (multiple of 16).
            index: position index (1 for the stock layout).
            row, col: offset of its top-left token on the position grid.
            dtype: the text embeddings' dtype (the stock pipeline encodes in it).

        Returns:
            tokens of shape (1, n, 64) and ids of shape (n, 3).
        """
        width, height = size
        device = self._execution_device
        pixels = self.image_processor.preprocess(self.image_processor.resize(image, height, width), height, width)
        latents = self._encode_vae_image(pixels.to(device=device, dtype=dtype), generator=None)
        lh, lw = latents.shape[2:]
        tokens = self._pack_latents(latents, 1, latents.shape[1], lh, lw)
        ids = self._prepare_latent_image_ids(1, lh // 2, lw // 2, device, torch.float32)
        ids[..., 0] = index
        ids[..., 1] += row
        ids[..., 2] += col
        return tokens, ids

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, height: int, width: int) -> Image.Image:
        """Packed latents → PIL image, the same operations as the end of the stock ``__call__``."""
        latents = self._unpack_latents(latents, height, width, self.vae_scale_factor)
        latents = (latents / self.vae.config.scaling_factor) + self.vae.config.shift_factor
        decoded = self.vae.decode(latents, return_dict=False)[0]
        images: list[Image.Image] = self.image_processor.postprocess(decoded, output_type="pil")
        return images[0]


def release_pipeline(backend: Any) -> None:
    """Forget a backend's pipeline and cached tensors, and return the memory to the device."""
    import gc

    backend.pipe = None
    backend._prompts.clear()
    backend._references.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _LRU(OrderedDict[Any, Any]):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> tuple[Any, bool]:
        if key in self:
            self.move_to_end(key)
            return self[key], True
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value, False


class LoraSlots:
    """Adapters loaded on the warm pipeline, by content hash; activates the requested set per edit."""

    def __init__(self, pipe: Any, pipeline_class: type | None = None, model_title: str = "FLUX.1 Kontext [dev]"):
        self.pipe = pipe
        self.pipeline_class = pipeline_class  # whose converters read community formats (default: Kontext's)
        self.model_title = model_title
        self.loaded: OrderedDict[str, LoraInfo] = OrderedDict()
        self._info: dict[tuple[str, int, int], LoraInfo] = {}
        self.enabled = False
        self.load_count = 0

    def _describe(self, path: str) -> tuple[LoraInfo, dict[str, torch.Tensor] | None]:
        p = Path(path).expanduser()
        st = p.stat() if p.is_file() else None
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns) if st else None
        if key is not None and key in self._info:
            return self._info[key], None
        state, info = read_lora(p)  # raises LoraError with the reason for missing / bad files
        if key is not None:
            self._info[key] = info
        return info, state

    def _load(self, name: str, info: LoraInfo, state: dict[str, torch.Tensor] | None) -> None:
        if state is None:
            state, info = read_lora(info.path)
        converted = to_diffusers(state, info, self.pipeline_class)
        check_fit(converted, {"transformer": self.pipe.transformer, "text_encoder": self.pipe.text_encoder}, info,
                  self.model_title)
        with warnings.catch_warnings():
            # peft notes every second adapter on the same model; that is exactly what hot-swapping does.
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            if info.format in (LoraFormat.DIFFUSERS, LoraFormat.AI_TOOLKIT):
                # From the file, so diffusers reads lora_alpha from its metadata.
                self.pipe.load_lora_weights(info.path, adapter_name=name)
            else:
                self.pipe.load_lora_weights(converted, adapter_name=name)
        self.load_count += 1
        self.loaded[name] = info
        while len(self.loaded) > MAX_LOADED_LORAS:
            old, _ = self.loaded.popitem(last=False)
            self.pipe.delete_adapters(old)

    def apply(self, specs: list[LoraSpec]) -> list[dict[str, Any]]:
        """Make exactly ``specs`` active (with their weights); returns their recipe entries."""
        if not specs:
            if self.enabled:
                self.pipe.disable_lora()
                self.enabled = False
            return []
        names, weights, entries = [], [], []
        try:
            for spec in specs:
                info, state = self._describe(spec.path)
                name = f"lora_{info.sha256[:16]}"
                if name in self.loaded:
                    self.loaded.move_to_end(name)
                else:
                    self._load(name, info, state)
                names.append(name)
                weights.append(spec.weight)
                entries.append({"path": info.path, "sha256": info.sha256, "weight": spec.weight,
                                "format": info.format.value, "rank": info.rank, "alpha": info.alpha})
        except Exception:
            # Loading an adapter switches its layers on: when a later file of the same request fails, the
            # ones loaded before it would stay active in every following edit. Switch all of them off.
            if self.loaded:
                self.pipe.disable_lora()
            self.enabled = False
            raise
        self.pipe.set_adapters(names, weights)
        if not self.enabled:
            self.pipe.enable_lora()
            self.enabled = True
        return entries


def start_steps(steps: int, on_step: ProgressFn | None, cancel: CancelFn | None) -> Callable[..., dict[str, Any]]:
    """Check for a cancel before the first step, then give the stock pipelines' ``callback_on_step_end``: it
    reports each finished step and stops between steps when ``cancel()`` says so.

    Raises:
        Canceled: ``cancel()`` was already true.
    """
    def on_step_end(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(i + 1, steps)
        if cancel is not None and cancel() and i + 1 < steps:
            raise Canceled(f"canceled after step {i + 1} of {steps}")
        return kwargs

    if cancel is not None and cancel():
        raise Canceled("canceled before the first step")
    return on_step_end


class LocalWeights:
    """What every local diffusers backend does with its located weights: the working resolution, the size the
    warm pool makes room for, the fingerprint the recipe records, and unloading."""

    source: ModelSource
    token: str | None
    status: WeightsStatus | None
    cache_dir: str | Path | None
    on_status: Callable[[str], None]
    loras: LoraSlots | None
    accelerator: Accelerator | None
    _fingerprint: str | None

    def unload(self) -> None:
        """Drop the pipeline and its caches (the warm pool evicted this model)."""
        release_pipeline(self)
        self.loras = None
        self.accelerator = None

    def estimated_bytes(self) -> int | None:
        return weights_bytes(self.source, self.token)

    @property
    def resolution(self) -> int:
        if self.status is None:
            status = locate(self.source, self.token, download=False)
            return status.resolution if status.found else 1024
        return self.status.resolution

    def weights_fingerprint(self) -> str:
        """The hub revision, or the SHA-256 of the local weights (hashed once, then cached); a single file adds
        its base's, whose text encoders and VAE are part of what made the image."""
        assert self.status is not None
        if self._fingerprint is None:
            if self.source.kind == "hub":
                self._fingerprint = f"revision:{self.status.revision}"
            else:
                self.on_status("fingerprinting the weights for the recipe (hashed once, then cached)")
                found = "sha256:" + fingerprint(self.status.path or self.source.location, self.cache_dir)
                if self.source.kind == "single_file":
                    base = locate(ModelSource.parse(self.source.base, revision=self.source.revision), self.token)
                    found += (f"+base:revision:{base.revision}" if base.revision else
                              "+base:sha256:" + fingerprint(base.path or "", self.cache_dir))
                self._fingerprint = found
        return self._fingerprint


class DiffusersKontextBackend(LocalWeights, EditBackend):
    """FLUX.1 Kontext [dev] on this machine.

    Args:
        source: hub repo id, local diffusers folder, or single-file checkpoint (see ``ModelSource``).
        device: ``auto`` (cuda, mps, cpu) or an explicit device.
        dtype: ``auto`` (bf16 on accelerators, float32 on CPU) or a torch dtype name.
        memory_mode: ``auto`` (from free VRAM) or a ``MemoryMode`` value.
        token: Hugging Face token for the gated repo.
        allow_download: fetch missing hub weights (otherwise only the local cache is used).
        cache_dir: where file fingerprints (and torch.compile's caches) are kept.
        on_status: receives one-line status messages while loading.
        precision: transformer weights on load: ``auto`` (the memory planner's choice on a GPU, as stored on
            the CPU), ``bf16``, ``fp8``, ``int8`` or ``nf4`` (see ``core.quantize``). A GGUF or fp8 checkpoint
            keeps its own format.
        text_encoder_precision: ``auto``, ``bf16``, ``fp8`` or ``int8`` for the text encoders.
    """

    name = "diffusers"

    def __init__(self, source: ModelSource | str | None = None, *, device: str = "auto", dtype: str = "auto",
                 memory_mode: str = "auto", token: str | None = None, allow_download: bool = False,
                 cache_dir: str | Path | None = None, on_status: Callable[[str], None] | None = None,
                 precision: str = "auto", text_encoder_precision: str = "auto"):
        self.source = source if isinstance(source, ModelSource) else ModelSource.parse(source)
        self._device_pref, self._dtype_pref, self._memory_pref = device, dtype, memory_mode
        self.token, self.allow_download, self.cache_dir = token, allow_download, cache_dir
        self.on_status = on_status or (lambda _msg: None)
        self.pipe: KontextEditPipeline | None = None
        self.status: WeightsStatus | None = None
        self.device_plan: DevicePlan | None = None
        self._fingerprint: str | None = None
        self._prompts = _LRU(PROMPT_CACHE_SIZE)
        self._references = _LRU(REFERENCE_CACHE_SIZE)
        self.loras: LoraSlots | None = None
        self.stats = {"loads": 0, "prompt_encodes": 0, "reference_encodes": 0}
        self._precision_pref, self._te_precision_pref = precision, text_encoder_precision
        self.weights_info: dict[str, Any] = {"format": "diffusers", "precision": "as stored"}
        self.accelerator: Accelerator | None = None

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipe: FluxKontextPipeline, source: ModelSource | None = None,
                      resolution: int = 1024) -> DiffusersKontextBackend:
        """Wrap an already-built pipeline (tests and benchmarks); no weights are located or hashed."""
        backend = cls(source or ModelSource("folder", "<in-memory>"))
        backend.status = WeightsStatus(True, None, backend.source, resolution=resolution)
        backend._adopt(pipe, MemoryMode.NONE, "given pipeline")
        backend._fingerprint = "in-memory"
        return backend

    def _adopt(self, pipe: FluxKontextPipeline, mode: MemoryMode, reason: str) -> None:
        edit_pipe = pipe if isinstance(pipe, KontextEditPipeline) else KontextEditPipeline(**pipe.components)
        edit_pipe.set_progress_bar_config(disable=True)
        device = str(edit_pipe._execution_device)
        dtype = str(edit_pipe.transformer.dtype).replace("torch.", "")
        self.device_plan = DevicePlan(device, dtype, mode, free_vram(device), reason)
        self.pipe = edit_pipe
        self.loras = LoraSlots(edit_pipe)
        self.accelerator = Accelerator(edit_pipe.transformer, device)

    def load(self) -> KontextEditPipeline:
        """Load the pipeline once (later calls return the warm one).

        Raises:
            WeightsNotFound: with instructions for getting the weights.
        """
        if self.pipe is not None:
            return self.pipe
        status = locate(self.source, self.token, download=self.allow_download)
        if not status.found:
            raise WeightsNotFound(status.message)
        self.status = status
        device = pick_device(self._device_pref)
        dtype_name = pick_dtype_name(device, self._dtype_pref)
        dtype = getattr(torch, dtype_name)
        self.on_status(f"loading {self.source.describe()} ({dtype_name})")
        assert status.path is not None
        if self.source.kind == "single_file":
            base = locate(ModelSource.parse(self.source.base, revision=self.source.revision), self.token,
                          self.allow_download)
            assert base.path is not None
            # GGUF and fp8 files keep their format; a plain checkpoint loads as before.
            transformer, self.weights_info = load_transformer_file(FluxTransformer2DModel, status.path, base.path,
                                                                   dtype)
            if transformer is None:
                transformer = FluxTransformer2DModel.from_single_file(
                    status.path, config=base.path, subfolder="transformer", dtype=dtype
                )
            pipe = FluxKontextPipeline.from_pretrained(base.path, transformer=transformer, dtype=dtype)
        else:
            pipe = FluxKontextPipeline.from_pretrained(status.path, dtype=dtype)
        self.weights_info = apply_weight_precision(
            pipe, ["text_encoder", "text_encoder_2"], device, self._precision_pref, self._te_precision_pref,
            self.weights_info, on_status=self.on_status)
        if device != "cpu":
            keep_compiled_graphs()
        mode, reason = self._memory_mode(pipe, device)
        self._apply_memory_mode(pipe, mode, device)
        self._adopt(pipe, mode, reason)
        self.stats["loads"] += 1
        return self.pipe  # type: ignore[return-value]

    def _memory_mode(self, pipe: FluxKontextPipeline, device: str) -> tuple[MemoryMode, str]:
        if device == "cpu":
            return MemoryMode.NONE, "running on the CPU"
        if self._memory_pref != "auto":
            return MemoryMode(self._memory_pref), "chosen by the user"
        free = free_vram(device)
        if free is None:  # mps: unified memory, no reliable free figure
            return MemoryMode.MODEL_OFFLOAD, "unified memory: one component at a time"
        parts = [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae]
        blocks = list(pipe.transformer.single_transformer_blocks) or list(pipe.transformer.transformer_blocks)
        return choose_memory_mode(free, sum(module_bytes(p) for p in parts), module_bytes(pipe.transformer),
                                  module_bytes(blocks[0]) if blocks else 0)

    @staticmethod
    def _apply_memory_mode(pipe: FluxKontextPipeline, mode: MemoryMode, device: str) -> None:
        if mode in (MemoryMode.NONE, MemoryMode.GPU):
            pipe.to(device)
        elif mode is MemoryMode.MODEL_OFFLOAD:
            pipe.enable_model_cpu_offload(device=device)
        elif mode is MemoryMode.SEQUENTIAL_OFFLOAD:
            pipe.enable_sequential_cpu_offload(device=device)
        elif mode is MemoryMode.GROUP_OFFLOAD:
            pipe.enable_group_offload(onload_device=torch.device(device), offload_type="block_level",
                                      num_blocks_per_group=2, use_stream=True)

    # -- EditBackend ---------------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        self.load()
        assert self.status is not None and self.device_plan is not None
        return {
            "backend": self.name,
            "source": self.source.location,
            "kind": self.source.kind,
            "base": self.source.base,
            "revision": self.status.revision,
            "fingerprint": self.weights_fingerprint(),
            "random_weights": self.status.random_weights,
            "resolution": self.status.resolution,
            "weights": dict(self.weights_info),
            **self.device_plan.as_dict(),
        }

    def encode_prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 + CLIP embeddings for ``text``, cached by text."""
        pipe = self.load()

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            self.stats["prompt_encodes"] += 1
            with torch.no_grad():
                embeds, pooled, _ids = pipe.encode_prompt(prompt=text, prompt_2=None,
                                                          device=pipe._execution_device, max_sequence_length=512)
            return embeds, pooled

        value, _hit = self._prompts.get_or(text, make)
        return value

    def encode_references(self, refs: list[PreparedReference], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed reference tokens and position ids for all references, cached by content and layout."""
        pipe = self.load()
        parts = []
        for ref in refs:
            p = ref.placement
            key = (ref.sha256, ref.working_size, p.index, p.row, p.col, str(dtype))

            def make(ref: PreparedReference = ref) -> tuple[torch.Tensor, torch.Tensor]:
                self.stats["reference_encodes"] += 1
                return pipe.encode_reference(ref.image, ref.working_size, ref.placement.index,
                                             ref.placement.row, ref.placement.col, dtype)

            value, _hit = self._references.get_or(key, make)
            parts.append(value)
        tokens = torch.cat([t for t, _ in parts], dim=1)
        ids = torch.cat([i for _, i in parts], dim=0)
        # Positions beyond 256 are not exact in bf16: keep float32 ids then (the transformer upcasts).
        if ids.abs().max().item() <= _BF16_EXACT:
            ids = ids.to(dtype)
        return tokens, ids

    def generate(self, plan: GenerationPlan, on_step: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> GenerationOutput:
        pipe = self.load()
        assert self.loras is not None
        timings: dict[str, float] = {}
        t = time.perf_counter()
        embeds, pooled = self.encode_prompt(plan.instruction)
        timings["prompt"] = time.perf_counter() - t

        t = time.perf_counter()
        # No reference: text to image, the stock pipeline's own path (no reference tokens at all).
        reference = self.encode_references(plan.references, embeds.dtype) if plan.references else None
        timings["reference_encode"] = time.perf_counter() - t

        t = time.perf_counter()
        lora_entries = self.loras.apply(plan.loras)
        timings["lora"] = time.perf_counter() - t

        on_step_end = start_steps(plan.steps, on_step, cancel)
        width, height = plan.model_size
        generator = torch.Generator(device="cpu").manual_seed(plan.seed)
        assert self.accelerator is not None
        report = self.accelerator.activate(plan.acceleration, "kontext", plan.step_cache, plan.step_cache_threshold)
        t = time.perf_counter()
        with self.accelerator.step_cache(report.step_cache, report.step_cache_threshold, plan.steps):
            latents = pipe(
                image=None,
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                reference_tokens=reference,
                height=height,
                width=width,
                max_area=width * height,
                _auto_resize=False,
                num_inference_steps=plan.steps,
                guidance_scale=plan.guidance,
                generator=generator,
                output_type="latent",
                callback_on_step_end=on_step_end,
            ).images
        timings["denoise"] = time.perf_counter() - t

        t = time.perf_counter()
        image = pipe.decode_latents(latents, height, width)
        timings["decode"] = time.perf_counter() - t
        info = {"loras": lora_entries, "reference_tokens": int(reference[0].shape[1]) if reference else 0,
                "step_cache": report.step_cache, "acceleration": report.as_dict()}
        return GenerationOutput(image=image, timings=timings, info=info)
