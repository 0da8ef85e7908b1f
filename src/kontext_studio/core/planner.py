"""The memory planner: which precision, offload mode and attention backend a model gets on a machine.

``plan_for`` is a pure function of (model footprint, free accelerator memory, system memory, GPU generation,
resolution, number of references). It walks a ladder of candidate plans, keeps those that fit, and picks the
one with the smallest combined loss of quality and speed; the result says in words what it chose and what
that costs. When nothing fits it raises ``PlanDoesNotFit`` naming the smallest plan that would.

Sizes are published parameter counts; memory is an estimate (weights at the chosen precision, plus
activations that grow with the image and reference tokens, plus a fixed allowance for the CUDA context and
the VAE decode), not a measurement. ``benchmarks/gpu_speed.py`` measures the real peak on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kontext_studio.core.errors import KontextError

GiB = 1024**3
CARD_SIZES_GIB = (8, 12, 16, 24, 48, 80)
# What the driver, CUDA context and allocator keep of a card before any model weight lands.
CONTEXT_RESERVE_GIB = 0.8
# RAM the operating system and the process itself keep when weights are parked in system memory.
RAM_RESERVE_GIB = 4.0


class Precision(StrEnum):
    """Transformer weight formats, from full precision down."""

    BF16 = "bf16"
    FP8 = "fp8"  # float8 e4m3 storage; fp8 matmuls where the GPU has them, upcast per layer elsewhere
    INT8 = "int8"  # torchao int8 weight-only, quantized on load
    Q8_0 = "gguf-q8_0"
    Q6_K = "gguf-q6_k"
    Q5_K = "gguf-q5_k"
    Q4_K = "gguf-q4_k"
    NF4 = "nf4"  # bitsandbytes 4-bit normal float: CUDA only


@dataclass(frozen=True)
class PrecisionFacts:
    """Bytes per parameter, how much quality it costs (0 = none), its speed relative to bf16, in words."""

    bytes_per_param: float
    quality_loss: int
    speed: float  # time per step relative to bf16 resident (below 1 is faster)
    words: str


PRECISIONS: dict[Precision, PrecisionFacts] = {
    Precision.BF16: PrecisionFacts(2.0, 0, 1.0, "full precision"),
    Precision.FP8: PrecisionFacts(1.0, 1, 1.05, "fp8 e4m3 weights: near-lossless"),
    Precision.INT8: PrecisionFacts(1.0, 1, 1.1, "int8 weight-only: near-lossless"),
    Precision.Q8_0: PrecisionFacts(34 / 32, 1, 1.25, "GGUF Q8_0: near-lossless, dequantized on the fly"),
    Precision.Q6_K: PrecisionFacts(210 / 256, 2, 1.25, "GGUF Q6_K: slight softening of fine detail"),
    Precision.Q5_K: PrecisionFacts(176 / 256, 3, 1.25, "GGUF Q5_K: small loss of fine detail"),
    Precision.Q4_K: PrecisionFacts(144 / 256, 5, 1.25, "GGUF Q4_K: visible loss of fine texture and small text"),
    Precision.NF4: PrecisionFacts(0.52, 6, 1.3, "bitsandbytes nf4: visible loss of fine texture"),
}


class Offload(StrEnum):
    """Where the weights live while the model runs (the values are the backend's memory modes)."""

    GPU = "gpu"
    MODEL = "model_offload"
    GROUP = "group_offload"
    SEQUENTIAL = "sequential_offload"
    NONE = "none"  # CPU: nothing to offload


OFFLOAD_SPEED = {Offload.GPU: 1.0, Offload.MODEL: 1.1, Offload.GROUP: 1.8, Offload.SEQUENTIAL: 8.0,
                 Offload.NONE: 1.0}
OFFLOAD_WORDS = {
    Offload.GPU: "everything resident on the GPU",
    Offload.MODEL: "the transformer resident, the text encoder moved in only to read a new prompt",
    Offload.GROUP: "transformer blocks streamed from system memory in groups, overlapped with compute",
    Offload.SEQUENTIAL: "layers streamed one at a time from system memory (slowest)",
    Offload.NONE: "everything in system memory on the CPU",
}


class GpuGeneration(StrEnum):
    """What matters about a GPU here: which kernels it has."""

    TURING = "turing"
    AMPERE = "ampere"
    ADA = "ada"
    HOPPER = "hopper"
    BLACKWELL = "blackwell"
    APPLE = "apple"
    CPU = "cpu"

    @property
    def has_fp8(self) -> bool:
        """fp8 tensor cores (Ada, Hopper, Blackwell)."""
        return self in (GpuGeneration.ADA, GpuGeneration.HOPPER, GpuGeneration.BLACKWELL)

    @property
    def cuda(self) -> bool:
        return self not in (GpuGeneration.APPLE, GpuGeneration.CPU)

    @classmethod
    def from_capability(cls, major: int, minor: int) -> GpuGeneration:
        """CUDA compute capability → generation (7.5 Turing, 8.0/8.6 Ampere, 8.9 Ada, 9.0 Hopper, 10+ Blackwell)."""
        if major >= 10:
            return cls.BLACKWELL
        if major == 9:
            return cls.HOPPER
        if (major, minor) == (8, 9):
            return cls.ADA
        if major == 8:
            return cls.AMPERE
        return cls.TURING


def attention_backend_for(gen: GpuGeneration) -> tuple[str, str]:
    """The attention backend to ask diffusers for on ``gen``, and why.

    FlashAttention-3 exists only for Hopper; cuDNN's fused attention is the fastest stock kernel on
    Blackwell; elsewhere PyTorch's SDPA picks its own flash/memory-efficient kernel.
    """
    if gen is GpuGeneration.HOPPER:
        return "_flash_3", "FlashAttention-3 (Hopper)"
    if gen is GpuGeneration.BLACKWELL:
        return "_native_cudnn", "cuDNN fused attention"
    return "native", "PyTorch SDPA"


@dataclass(frozen=True)
class ModelFootprint:
    """What the planner needs to know about one local model.

    Attributes:
        id: catalogue id.
        title: display name.
        transformer_params: denoiser parameters (billions).
        text_encoder_params: all text encoders together (billions).
        vae_params: the VAE (billions).
        hidden: transformer width (activations grow with tokens x width).
        blocks: repeated transformer blocks (group offload streams them).
        text_tokens: text sequence length per forward.
        forwards_per_step: 2 for models that run real classifier-free guidance (batch of two).
        steps: the model's normal step count.
    """

    id: str
    title: str
    transformer_params: float
    text_encoder_params: float
    vae_params: float
    hidden: int
    blocks: int
    text_tokens: int = 512
    forwards_per_step: int = 1
    steps: int = 28


# Published sizes (see the design notes on the model families).
FOOTPRINTS: dict[str, ModelFootprint] = {m.id: m for m in (
    ModelFootprint("dev", "FLUX.1 Kontext [dev]", 11.9, 4.88, 0.084, 3072, 57, 512, 1, 28),
    ModelFootprint("klein-4b", "FLUX.2 [klein] 4B", 3.9, 4.0, 0.084, 3072, 25, 512, 1, 4),
    ModelFootprint("klein-9b", "FLUX.2 [klein] 9B", 9.1, 8.2, 0.084, 4096, 32, 512, 1, 4),
    ModelFootprint("flux2-dev", "FLUX.2 [dev]", 32.2, 24.0, 0.084, 6144, 56, 512, 1, 28),
    ModelFootprint("qwen-edit", "Qwen-Image-Edit-2511", 20.4, 8.3, 0.127, 3072, 60, 256, 2, 40),
)}
# Aliases the catalogue and older configurations use.
# Other names of the same models (the catalogue's full names resolve through their last part).
FOOTPRINT_ALIASES = {"kontext-dev": "dev", "kontext": "dev", "fast": "dev", "flux-kontext-dev": "dev",
                     "flux1-kontext-dev": "dev", "flux-2-klein-4b": "klein-4b", "flux2-klein-4b": "klein-4b",
                     "flux-2-klein-9b": "klein-9b", "flux2-klein-9b": "klein-9b", "flux-2-dev": "flux2-dev",
                     "qwen-image-edit": "qwen-edit", "qwen-image-edit-2511": "qwen-edit"}


def footprint(model_id: str) -> ModelFootprint:
    """The footprint of ``model_id`` (catalogue id or alias).

    Raises:
        UnknownModel: naming the models the planner knows.
    """
    name = model_id.strip().lower().rsplit("/", 1)[-1]
    key = FOOTPRINT_ALIASES.get(name, name)
    if key not in FOOTPRINTS:
        raise UnknownModel(f"model must be one of {', '.join(FOOTPRINTS)}; got {model_id!r}")
    return FOOTPRINTS[key]


class UnknownModel(KontextError):
    """The planner has no footprint for this model."""

    code = "unknown_model"
    exit_code = 2


@dataclass(frozen=True)
class Machine:
    """The machine a plan is for.

    Attributes:
        vram_gib: free accelerator memory (GiB); None on a CPU-only machine.
        ram_gib: system memory (GiB).
        generation: the GPU generation.
    """

    vram_gib: float | None
    ram_gib: float
    generation: GpuGeneration = GpuGeneration.AMPERE

    @classmethod
    def card(cls, size_gib: float, ram_gib: float = 64.0,
             generation: GpuGeneration = GpuGeneration.ADA) -> Machine:
        """A machine with an empty card of ``size_gib`` (the driver's share taken off)."""
        return cls(max(0.0, size_gib - CONTEXT_RESERVE_GIB), ram_gib, generation)


@dataclass(frozen=True)
class Workload:
    """What one edit asks of the model: output side in pixels and how many references of that size."""

    resolution: int = 1024
    references: int = 1

    def image_tokens(self) -> int:
        per_image = (self.resolution // 16) ** 2
        return per_image * (1 + max(0, self.references))


@dataclass(frozen=True)
class Plan:
    """One way to run a model on a machine, with its estimated memory and cost."""

    model: str
    precision: Precision
    text_encoder_precision: Precision
    offload: Offload
    attention: str
    vram_gib: float  # estimated peak accelerator memory
    ram_gib: float  # estimated system memory holding offloaded weights
    speed: float  # estimated time relative to bf16 fully resident on the same GPU
    quality_loss: int
    explanation: str
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.quality_loss + 4.0 * max(0.0, self.speed - 1.0)

    def summary(self) -> str:
        """One line: what the plan is."""
        te = "" if self.text_encoder_precision is Precision.BF16 else f", text encoder {self.text_encoder_precision}"
        return f"{self.precision}{te}, {self.offload.value}, attention {self.attention}"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision.value,
                "text_encoder_precision": self.text_encoder_precision.value, "offload": self.offload.value,
                "attention": self.attention, "vram_gib": round(self.vram_gib, 1), "ram_gib": round(self.ram_gib, 1),
                "relative_time": round(self.speed, 2), "quality_loss": self.quality_loss,
                "explanation": self.explanation, "notes": list(self.notes)}


class PlanDoesNotFit(KontextError):
    """No plan fits the machine; ``smallest`` is the plan that needs the least accelerator memory."""

    code = "plan_does_not_fit"
    exit_code = 3

    def __init__(self, message: str, smallest: Plan | None):
        super().__init__(message)
        self.smallest = smallest


def activation_gib(model: ModelFootprint, work: Workload) -> float:
    """Activations and workspace during one denoising step, plus the VAE decode's peak (GiB, estimate).

    Per token per width unit the blocks keep about 60 bytes live (attention output, MLP intermediate at
    4x width in bf16, modulation and norms), doubled for models that batch a guidance pass.
    """
    tokens = work.image_tokens() + model.text_tokens
    denoise = tokens * model.hidden * 60 * model.forwards_per_step / GiB
    decode = 3.0 * (work.resolution / 1024) ** 2
    return max(denoise, decode) + 0.5


def _gib(params_b: float, precision: Precision) -> float:
    return params_b * 1e9 * PRECISIONS[precision].bytes_per_param / GiB


def _candidates(gen: GpuGeneration) -> list[tuple[Precision, Precision]]:
    """(transformer, text encoder) precisions to try, best quality first, limited to what ``gen`` runs."""
    eight = Precision.FP8 if gen.has_fp8 else Precision.Q8_0
    te8 = Precision.FP8 if gen.has_fp8 else Precision.INT8
    pairs = [(Precision.BF16, Precision.BF16), (Precision.BF16, te8), (eight, Precision.BF16), (eight, te8),
             (Precision.Q6_K, te8), (Precision.Q5_K, te8), (Precision.Q4_K, te8)]
    if gen.cuda:
        pairs.append((Precision.NF4, te8))
    return pairs


def _estimate(model: ModelFootprint, machine: Machine, work: Workload, precision: Precision,
              te_precision: Precision, offload: Offload) -> Plan:
    gen = machine.generation
    transformer = _gib(model.transformer_params, precision)
    text = _gib(model.text_encoder_params, te_precision)
    vae = _gib(model.vae_params, Precision.BF16)
    acts = activation_gib(model, work)
    block = transformer / model.blocks
    if offload is Offload.GPU:
        vram, ram = transformer + text + vae + acts, 0.0
    elif offload is Offload.MODEL:
        vram, ram = max(transformer, text) + vae + acts, min(transformer, text)
    elif offload is Offload.GROUP:
        # Group offload streams every component's blocks; the text encoder's largest groups are ~1/8 of it.
        vram, ram = 4 * block + text / 8 + vae + acts, transformer + text
    else:
        vram, ram = 2 * block + vae + acts, transformer + text
    facts = PRECISIONS[precision]
    speed = facts.speed * OFFLOAD_SPEED[offload]
    if precision is Precision.FP8 and gen.has_fp8:
        speed = 0.7 * OFFLOAD_SPEED[offload]  # fp8 tensor cores: faster than bf16, not just smaller
    attention, attention_words = attention_backend_for(gen)
    te_words = "" if te_precision is Precision.BF16 else f"; text encoder in {te_precision} (8-bit)"
    explanation = (f"{model.title}: {facts.words}{te_words}; {OFFLOAD_WORDS[offload]}; attention {attention_words}. "
                   f"Needs about {vram:.1f} GiB of GPU memory" + (f" and {ram:.0f} GiB of system memory" if ram else "")
                   + f"; about {speed:.1f}x the time of bf16 fully resident.")
    return Plan(model.id, precision, te_precision, offload, attention, vram, ram, speed,
                facts.quality_loss + (1 if te_precision is not Precision.BF16 else 0), explanation)


def all_plans(model: ModelFootprint, machine: Machine, work: Workload | None = None) -> list[Plan]:
    """Every candidate plan with its estimate, fitting or not (for tables and error messages)."""
    work = work or Workload()
    offloads = [Offload.GPU, Offload.MODEL, Offload.GROUP, Offload.SEQUENTIAL]
    return [_estimate(model, machine, work, p, t, o) for p, t in _candidates(machine.generation) for o in offloads]


def plan_for(model: ModelFootprint, machine: Machine, work: Workload | None = None) -> Plan:
    """The best plan for ``model`` on ``machine`` (pure: no hardware is queried).

    Args:
        model: the model's footprint (see ``footprint``).
        machine: free GPU memory, system memory and GPU generation; ``vram_gib=None`` for CPU-only.
        work: output resolution and number of references (default 1024² with one reference).

    Returns:
        The fitting plan with the smallest combined quality and speed loss.

    Raises:
        PlanDoesNotFit: nothing fits; the message names the smallest plan and what it would need.
    """
    work = work or Workload()
    if machine.vram_gib is None or machine.generation is GpuGeneration.CPU:
        need = _gib(model.transformer_params + model.text_encoder_params + model.vae_params, Precision.BF16) * 2
        plan = Plan(model.id, Precision.BF16, Precision.BF16, Offload.NONE, "native", 0.0, need, 1.0, 0,
                    f"{model.title} on the CPU in float32 (about {need:.0f} GiB of system memory): it works, but one "
                    f"{model.steps}-step edit at {work.resolution}² takes hours; use a GPU.")
        if need > machine.ram_gib - RAM_RESERVE_GIB:
            raise PlanDoesNotFit(f"{model.title} needs about {need:.0f} GiB of system memory on the CPU; this "
                                 f"machine has {machine.ram_gib:.0f} GiB", plan)
        return plan
    ram_free = machine.ram_gib - RAM_RESERVE_GIB
    plans = all_plans(model, machine, work)
    fitting = [p for p in plans if p.vram_gib <= machine.vram_gib and p.ram_gib <= ram_free]
    if fitting:
        return min(fitting, key=lambda p: (p.score, p.vram_gib))
    ram_ok = [p for p in plans if p.ram_gib <= ram_free] or plans
    smallest = min(ram_ok, key=lambda p: (p.vram_gib, p.score))
    card = smallest.vram_gib + CONTEXT_RESERVE_GIB
    overall = min(plans, key=lambda p: (p.vram_gib, p.score))
    more_ram = (f" With {overall.ram_gib + RAM_RESERVE_GIB:.0f} GiB of system memory, {overall.summary()} would "
                f"need only {overall.vram_gib:.1f} GiB." if overall is not smallest else "")
    raise PlanDoesNotFit(
        f"{model.title} does not fit {machine.vram_gib:.1f} GiB of free GPU memory with "
        f"{machine.ram_gib:.0f} GiB of system memory at {work.resolution}² with {work.references} reference(s). "
        f"The smallest plan ({smallest.summary()}) needs about {smallest.vram_gib:.1f} GiB free (a "
        f"{card:.0f} GB card) and {smallest.ram_gib:.0f} GiB of system memory.{more_ram} Try a smaller "
        "resolution, fewer references, or a smaller model.", smallest)


def plan_table(models: list[ModelFootprint] | None = None, cards: tuple[int, ...] = CARD_SIZES_GIB,
               ram_gib: float = 64.0, generation: GpuGeneration = GpuGeneration.ADA) -> str:
    """A Markdown table: the plan per card size per model (for the README)."""
    models = models or list(FOOTPRINTS.values())
    head = "| model | " + " | ".join(f"{c} GB" for c in cards) + " |"
    rows = [head, "|" + "---|" * (len(cards) + 1)]
    for m in models:
        cells = []
        for c in cards:
            try:
                p = plan_for(m, Machine.card(c, ram_gib, generation))
                cells.append(f"{p.precision}{'+te8' if p.text_encoder_precision is not Precision.BF16 else ''}, "
                             f"{p.offload.value} (~{p.speed:.1f}x)")
            except PlanDoesNotFit:
                cells.append("does not fit")
        rows.append(f"| {m.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def probe_machine() -> Machine:
    """This machine without importing torch: ``nvidia-smi`` for the first GPU's free memory and compute
    capability (when it is installed), the OS for system memory. For quick listings; loading uses
    ``this_machine``."""
    import os
    import shutil
    import subprocess

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):
        ram = 16.0
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=memory.free,compute_cap", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5, check=True).stdout.splitlines()[0]
            free_mib, cap = (x.strip() for x in out.split(","))
            major, minor = (int(x) for x in cap.split("."))
            return Machine(float(free_mib) / 1024, ram, GpuGeneration.from_capability(major, minor))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return Machine(None, ram, GpuGeneration.CPU)


def this_machine() -> Machine:
    """Query the hardware: free memory on the first CUDA device, system memory, GPU generation."""
    import os

    import torch

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):
        ram = 16.0
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        major, minor = torch.cuda.get_device_capability(0)
        return Machine(free / GiB, ram, GpuGeneration.from_capability(major, minor))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Machine(ram * 0.6, ram, GpuGeneration.APPLE)  # unified memory: the GPU shares system memory
    return Machine(None, ram, GpuGeneration.CPU)
