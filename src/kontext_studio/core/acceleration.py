"""Acceleration as data: named profiles of attention backend, regional compilation, fused QKV, fp8 and step cache.

A profile says what to turn on; ``Accelerator`` applies it to a warm pipeline, reverting what the previous
profile turned on, and reports what actually ran (an attention backend this GPU lacks falls back to PyTorch's
SDPA, fp8 matmuls fall back to none where the GPU has no fp8, and each fallback is named). The recipe
records the profile and the report; replay asks for the same profile by name.

Profiles:

* ``stock``: diffusers as shipped (bit-identical to the stock pipeline).
* ``lossless``: the fastest attention backend for the GPU, regional compilation of the repeated transformer
  blocks, fused QKV projections. Same maths; pixels differ only by floating-point reordering.
* ``fast``: ``lossless`` plus fp8 dynamic quantization of the transformer's linear layers where the GPU has fp8
  tensor cores, plus the family's step cache (``FAMILY_STEP_CACHE``) at the model's normal step count. It
  trades a small, bounded loss: steps whose output barely changes are reused.

Every local family takes every profile: FLUX.1 Kontext, FLUX.2 [klein], FLUX.2 [dev] and Qwen-Image-Edit. What a
family's transformer lacks is named as a fallback (Qwen-Image's attention reads separate projections, so it
has nothing to fuse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.planner import GpuGeneration, attention_backend_for

STEP_CACHES = ("magcache", "taylorseer", "first_block")


@dataclass(frozen=True)
class AccelerationProfile:
    """What to turn on for one model.

    Attributes:
        name: profile name recorded in the recipe.
        attention: ``auto`` (by GPU generation), ``native``, ``_native_cudnn``, ``_flash_3``, ``flash``, ``sage``.
        compile: regional compilation of the repeated transformer blocks (``compile_repeated_blocks``).
        fuse_qkv: fuse the query/key/value projections into one matmul.
        fp8: fp8 dynamic quantization of the linear layers (torchao) where the GPU has fp8 tensor cores.
        step_cache: ``magcache``, ``taylorseer``, ``first_block`` or None.
        step_cache_threshold: the cache's threshold (MagCache: accumulated error; first-block: relative change).
    """

    name: str
    attention: str = "native"
    compile: bool = False
    fuse_qkv: bool = False
    fp8: bool = False
    step_cache: str | None = None
    step_cache_threshold: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


STOCK = AccelerationProfile("stock")
LOSSLESS = AccelerationProfile("lossless", attention="auto", compile=True, fuse_qkv=True)
FAST = AccelerationProfile("fast", attention="auto", compile=True, fuse_qkv=True, fp8=True, step_cache="magcache",
                           step_cache_threshold=0.06)
PROFILES = {p.name: p for p in (STOCK, LOSSLESS, FAST)}
# Each family's step cache and its threshold. MagCache's published ratios are FLUX.1's, so only Kontext uses
# them. FLUX.2 [dev] takes TaylorSeer (it needs no per-model calibration; the number is its refresh interval in
# steps): diffusers' first-block cache cannot hook FLUX.2, whose double and single blocks return different
# shapes. Qwen-Image takes the first-block cache (the approach cache-dit's Qwen-Image figures use). FLUX.2
# [klein] runs 4 steps, too few for any step cache to skip one safely.
FAMILY_STEP_CACHE: dict[str, tuple[str | None, float]] = {
    "kontext": ("magcache", 0.06), "flux2": ("taylorseer", 3), "qwen": ("first_block", 0.08), "klein": (None, 0.0)}


def get_profile(name: str, family: str = "kontext") -> AccelerationProfile:
    """The profile ``name`` adjusted for ``family`` (its step cache).

    Raises:
        InvalidRequest: naming the profiles.
    """
    key = str(name).strip().lower()
    if key not in PROFILES:
        raise InvalidRequest(f"acceleration must be one of {', '.join(PROFILES)}; got {name!r}", field="acceleration")
    profile = PROFILES[key]
    if profile.step_cache is not None and family in FAMILY_STEP_CACHE:
        cache, threshold = FAMILY_STEP_CACHE[family]
        profile = replace(profile, step_cache=cache, step_cache_threshold=threshold)
    return profile


def gpu_generation(device: str) -> GpuGeneration:
    """The generation of ``device`` (cpu and mps without querying CUDA)."""
    if device.startswith("cuda"):
        import torch

        major, minor = torch.cuda.get_device_capability(torch.device(device))
        return GpuGeneration.from_capability(major, minor)
    return GpuGeneration.APPLE if device.startswith("mps") else GpuGeneration.CPU


def keep_compiled_graphs() -> None:
    """Have torch.compile keep compiled graphs and autotuning results in its on-disk cache, so the next start
    skips compiling (the cache folder itself is set by the composition root: ``bootstrap.compile_cache_dir``)."""
    with contextlib.suppress(Exception):
        import torch

        torch._inductor.config.fx_graph_cache = True
        torch._inductor.config.autotune_local_cache = True


@dataclass
class AccelerationReport:
    """What ran: the profile, the attention backend actually used, and every fallback in words."""

    profile: str
    attention: str = "native"
    compiled: bool = False
    fused_qkv: bool = False
    fp8: bool = False
    step_cache: str | None = None
    step_cache_threshold: float = 0.0
    fallbacks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Accelerator:
    """Applies profiles to one warm pipeline's transformer.

    Args:
        transformer: the pipeline's denoiser (a diffusers ``ModelMixin``).
        device: where it runs (``cuda``, ``cuda:1``, ``mps``, ``cpu``).
        compile_on_cpu: compile on the CPU too. Off by default: Inductor's CPU compile takes longer than it
            saves on an edit or two, and compilation is a GPU speed-up.
    """

    def __init__(self, transformer: Any, device: str, compile_on_cpu: bool = False):
        self.transformer = transformer
        self.device = device
        self.compile_on_cpu = compile_on_cpu
        self.generation = gpu_generation(device)
        self.current: AccelerationReport = AccelerationReport("stock")
        self._compiled: list[Any] = []
        self._compiled_inner = False
        self._fp8_applied = False
        self._cannot_fuse: str | None = None  # said once found, so a profile never retries (and recompiles)
        self._full_precision: dict[str, Any] | None = None  # linear weights before fp8, on the CPU

    # -- load-time parts (kept while the profile stays the same) ---------------------------------------
    def use(self, profile: AccelerationProfile) -> AccelerationReport:
        """Switch the transformer to ``profile``; returns what is now active (fallbacks included)."""
        if self.current.profile == profile.name and not self._drifted(profile) and profile.step_cache is None:
            return self.current
        report = AccelerationReport(profile.name, step_cache=profile.step_cache,
                                    step_cache_threshold=profile.step_cache_threshold)
        names = getattr(self.transformer, "_repeated_blocks", None) or []
        if profile.step_cache and sum(type(m).__name__ in names for m in self.transformer.modules()) < 2:
            report.fallbacks.append(f"the {profile.step_cache} step cache needs at least two transformer blocks; "
                                    "every step computed")
            report.step_cache, report.step_cache_threshold = None, 0.0
        report.attention = self._attention(profile.attention, report.fallbacks)
        report.fused_qkv = self._fuse(profile.fuse_qkv, report.fallbacks)
        report.fp8 = self._fp8(profile.fp8, report.fallbacks)
        report.compiled = self._compile(profile.compile, report.fallbacks, inner=profile.step_cache is not None)
        self.current = report
        return report

    def _drifted(self, profile: AccelerationProfile) -> bool:
        return (self.current.step_cache, self.current.step_cache_threshold) != (profile.step_cache,
                                                                                 profile.step_cache_threshold)

    def _attention(self, wanted: str, fallbacks: list[str]) -> str:
        if wanted == "auto":
            wanted = attention_backend_for(self.generation)[0] if self.generation.cuda else "native"
        if wanted != "native" and not self.generation.cuda:
            fallbacks.append(f"attention {wanted} needs an NVIDIA GPU; PyTorch SDPA used on {self.device}")
            wanted = "native"
        if wanted == "_flash_3" and self.generation is not GpuGeneration.HOPPER:
            fallbacks.append(f"FlashAttention-3 runs only on Hopper (this GPU is {self.generation.value}); "
                             "PyTorch SDPA used")
            wanted = "native"
        if not hasattr(self.transformer, "set_attention_backend"):
            return "native"
        try:
            self.transformer.set_attention_backend(wanted)
        except Exception as exc:  # kernel package missing or unsupported here
            if wanted == "native":
                raise
            fallbacks.append(f"attention {wanted} unavailable ({str(exc).splitlines()[0][:160]}); "
                             "PyTorch SDPA used")
            self.transformer.set_attention_backend("native")
            wanted = "native"
        return wanted

    def _fuse(self, wanted: bool, fallbacks: list[str]) -> bool:
        fused = bool(getattr(self.transformer, "_kontext_fused", False))
        if wanted and self._cannot_fuse is not None:
            fallbacks.append(self._cannot_fuse)
            return False
        if wanted == fused:
            return fused
        if self._compiled:
            self._uncompile()  # the compiled graphs captured the unfused layers
        name = type(self.transformer).__name__
        try:
            if wanted:
                self.transformer.fuse_qkv_projections()
            else:
                self.transformer.unfuse_qkv_projections()
        except Exception as exc:
            self._cannot_fuse = (f"fused QKV unavailable for {name} ({exc.__class__.__name__}); "
                                 "separate projections used")
            fallbacks.append(self._cannot_fuse)
            return fused
        if wanted and not any(getattr(m, "fused_projections", False) for m in self.transformer.modules()):
            # Qwen-Image: its attention processor reads to_q/to_k/to_v, so there is nothing to fuse.
            self._cannot_fuse = f"{name}'s attention has no projections to fuse; separate projections used"
            fallbacks.append(self._cannot_fuse)
            return False
        self.transformer._kontext_fused = wanted
        return wanted

    def _fp8(self, wanted: bool, fallbacks: list[str]) -> bool:
        if not wanted:
            if self._fp8_applied:
                if self._full_precision is None:
                    fallbacks.append("fp8 matmuls stay on until the model reloads (no full-precision copy of the "
                                     "weights fitted in system memory to switch back)")
                    return True
                self._restore_full_precision()
            return False
        if self._fp8_applied:
            return True
        if not self.generation.has_fp8:
            here = f"this is {self.generation.value}" if self.generation.cuda else "there is none here"
            fallbacks.append(f"fp8 matmuls need an Ada, Hopper or Blackwell GPU ({here}); weights left in their "
                             "precision")
            return False
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
        except ImportError:
            fallbacks.append("fp8 dynamic quantization needs torchao (pip install torchao); skipped")
            return False
        if self._compiled:
            self._uncompile()
        if self._full_precision is None:
            # Tiers share a warm model (dev and fast do): keep the linear weights as they were, in system
            # memory, so a later edit asking for full precision gets it back in one copy instead of fp8.
            self._full_precision = self._copy_linear_weights(fallbacks)
        quantize_(self.transformer, Float8DynamicActivationFloat8WeightConfig())
        self._fp8_applied = True
        return True

    def _copy_linear_weights(self, fallbacks: list[str]) -> dict[str, Any] | None:
        import torch

        linears = {name: m for name, m in self.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
        need = sum(m.weight.numel() * m.weight.element_size() for m in linears.values())
        room = available_system_memory()
        if room is not None and need > 0.8 * room:
            fallbacks.append(f"fp8 stays on for later edits until the model reloads: a full-precision copy "
                             f"({need / 2**30:.1f} GiB) does not fit in free system memory ({room / 2**30:.1f} GiB)")
            return None
        return {name: m.weight.detach().to("cpu", copy=True) for name, m in linears.items()}

    def _restore_full_precision(self) -> None:
        import torch

        assert self._full_precision is not None
        if self._compiled:
            self._uncompile()  # the graphs captured the fp8 weights
        modules = dict(self.transformer.named_modules())
        for name, weight in self._full_precision.items():
            # A LoRA loaded since wraps the layer (its own weights live in ``base_layer``); one unloaded since
            # took its adapter layers with it.
            module = modules.get(name)
            module = getattr(module, "base_layer", module)
            if isinstance(module, torch.nn.Linear):
                module.weight = torch.nn.Parameter(weight.to(module.weight.device), requires_grad=False)
        self._fp8_applied = False

    def _compile(self, wanted: bool, fallbacks: list[str], inner: bool = False) -> bool:
        if not wanted:
            if self._compiled:
                self._uncompile()
            return False
        if self.device == "cpu" and not self.compile_on_cpu:
            fallbacks.append("regional compilation is a GPU speed-up; skipped on the CPU")
            return False
        if self._compiled and self._compiled_inner == inner:
            return True
        if self._compiled:
            self._uncompile()
        self._compiled_inner = inner
        blocks = getattr(self.transformer, "_repeated_blocks", None) or []
        if not blocks:
            fallbacks.append(f"{type(self.transformer).__name__} names no repeated blocks; not compiled")
            return False
        _import_inductor()
        # The same steps as diffusers' compile_repeated_blocks, keeping the list so the profile can be undone.
        # A step cache hooks the blocks themselves with functions torch.compile must not trace; then the
        # blocks' parts (attention, feed-forward, norms) are compiled instead, which the hooks leave alone.
        for module in self.transformer.modules():
            if type(module).__name__ in blocks:
                targets = [c for c in module.children() if any(True for _ in c.parameters())] if inner else [module]
                for target in targets:
                    target.compile(fullgraph=not inner)
                    self._compiled.append(target)
        return True

    def _uncompile(self) -> None:
        for module in self._compiled:
            module._compiled_call_impl = None
        self._compiled = []

    def activate(self, profile_name: str | None, family: str, step_cache: str | None = None,
                 threshold: float = 0.0) -> AccelerationReport:
        """Switch to the profile an edit asked for and return what will run.

        Args:
            profile_name: ``stock``, ``lossless``, ``fast`` (None: ``stock``).
            family: the catalogue family (its step cache for ``fast``).
            step_cache, threshold: a step cache the model's entry names itself; used under ``stock`` only.

        Returns:
            The report the recipe records (enter ``step_cache`` with its cache and threshold for the call).

        Raises:
            InvalidRequest: an unknown profile name.
        """
        report = self.use(get_profile(profile_name or "stock", family))
        if report.step_cache is None and step_cache is not None and report.profile == "stock":
            report = AccelerationReport(**{**report.as_dict(), "step_cache": step_cache,
                                           "step_cache_threshold": threshold})
        return report

    # -- per-call part --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step_cache(self, kind: str | None, threshold: float, steps: int) -> Iterator[None]:
        """Turn a diffusers step cache on for one generation of ``steps`` steps."""
        if kind is None:
            yield
            return
        config = step_cache_config(kind, threshold, steps)
        self.transformer.enable_cache(config)
        try:
            # The stock pipelines never enter a cache context; the cache hooks need one.
            with self.transformer.cache_context("cond"):
                yield
        finally:
            self.transformer.disable_cache()


_STEP_CACHE_NAMES = {"magcache": "MagCache", "taylorseer": "TaylorSeer", "first_block": "first-block"}


def in_words(report: dict[str, Any] | None) -> tuple[str, list[str]] | None:
    """A recipe's acceleration report as people read it, for every face.

    Args:
        report: the recipe's ``acceleration`` (``AccelerationReport.as_dict``; None for hosted models).

    Returns:
        ("fast profile (fused QKV, TaylorSeer step cache)", [each part it could not use here, and why]), or
        None when the edit ran stock with no step cache: nothing to say.
    """
    if not report or (report.get("profile") == "stock" and not report.get("step_cache")):
        return None
    on = []
    if report.get("attention") not in (None, "native"):
        on.append(f"{str(report['attention']).strip('_')} attention")
    if report.get("compiled"):
        on.append("compiled blocks")
    if report.get("fused_qkv"):
        on.append("fused QKV")
    if report.get("fp8"):
        on.append("fp8 matmuls")
    if report.get("step_cache"):
        on.append(f"{_STEP_CACHE_NAMES.get(report['step_cache'], report['step_cache'])} step cache")
    summary = f"{report.get('profile')} profile ({', '.join(on) or 'nothing it speeds up runs here'})"
    return summary, [str(why) for why in report.get("fallbacks") or []]


def available_system_memory() -> int | None:
    """Bytes of system memory free for a new allocation (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _import_inductor() -> None:
    """Import torch's compiler up front: its import runs deprecated torch.jit code that warns (torch's own
    internals, nothing this program calls), which would otherwise surface in the middle of the first edit."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401


def step_cache_config(kind: str, threshold: float, steps: int) -> Any:
    """The diffusers cache config for ``kind`` at ``threshold``, sized for ``steps`` steps.

    Raises:
        InvalidRequest: unknown kind.
    """
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if kind == "first_block":
        return FirstBlockCacheConfig(threshold=threshold)
    if kind == "magcache":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        # The published ratios are for 28 steps; MagCache interpolates them to other step counts.
        return MagCacheConfig(threshold=threshold or 0.06, num_inference_steps=steps, mag_ratios=FLUX_MAG_RATIOS,
                              max_skip_steps=3, retention_ratio=0.2)
    if kind == "taylorseer":
        import torch

        return TaylorSeerCacheConfig(cache_interval=max(2, int(threshold) or 4), disable_cache_before_step=3,
                                     taylor_factors_dtype=torch.float32)
    raise InvalidRequest(f"step cache must be one of {', '.join(STEP_CACHES)}; got {kind!r}", field="step_cache")
