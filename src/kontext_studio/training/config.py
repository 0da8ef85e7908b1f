"""The training recipe: every hyper-parameter of a run, validated at the boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kontext_studio.core.errors import InvalidRequest

# The transformer's attention and feed-forward projections in both block kinds: the set the reference
# Kontext trainers (diffusers' script, ai-toolkit) adapt by default. Names are matched as suffixes.
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",
)  # fmt: skip
TIMESTEP_SAMPLING = ("logit_normal", "uniform")
OPTIMIZERS = ("adamw", "adamw8bit")
PRECISIONS = ("auto", "bf16", "fp32")
BASE_PRECISIONS = ("model", "fp8")


@dataclass
class TrainConfig:
    """Hyper-parameters of one LoRA training run (stored in the adapter's metadata).

    Attributes:
        steps: optimiser steps.
        rank, alpha: LoRA rank and alpha (``None``: alpha = rank, i.e. scale 1).
        target_modules: module-name suffixes that get an adapter.
        learning_rate, weight_decay, warmup_steps, max_grad_norm: AdamW and its schedule (constant after
            a linear warm-up).
        batch_size: pairs per step (always from one bucket).
        resolution: training size (side of the square bucket): 512 fits 24 GB with ``base_precision`` fp8
            and gradient checkpointing (estimated), 768/1024 need more.
        seed: seeds the adapter's initialisation, the batch order, the noise and the timesteps; a resumed
            run continues the exact same sequence.
        guidance: the guidance-embedding value fed during training (FLUX [dev] is guidance-distilled).
        timestep_sampling: ``logit_normal`` (default of the reference trainers) or ``uniform``.
        flux_shift: shift the sampled noise levels by the resolution-dependent mu, as inference does.
        gradient_checkpointing: recompute block activations in the backward pass (less memory, ~30 % slower).
        optimizer: ``adamw`` or ``adamw8bit`` (bitsandbytes, CUDA only).
        precision: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``bf16`` or ``fp32``.
        base_precision: how the frozen base transformer is stored: ``model`` (as loaded, bf16 on CUDA) or
            ``fp8`` (its block Linear weights in float8, upcast one layer at a time for compute; norms,
            embedders and the LoRA keep their precision). ``fp8`` needs ``gradient_checkpointing``; it is
            what brings 512 px rank-16 training of the full model under 24 GB (an estimate until
            measured, see docs/training.md). The saved adapter is float32 either way.
        checkpoint_every, validate_every: every N steps (0: never; a final checkpoint is always written).
        validation_pairs: pairs held back from training for validation edits.
        validation_steps: denoising steps of a validation edit.
        max_sequence_length: T5 tokens per instruction.
        default_instruction: used for pairs without a caption.
    """

    steps: int = 1000
    rank: int = 16
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    guidance: float = 1.0
    timestep_sampling: str = "logit_normal"
    flux_shift: bool = True
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    precision: str = "auto"
    base_precision: str = "model"
    checkpoint_every: int = 250
    validate_every: int = 250
    validation_pairs: int = 2
    validation_steps: int = 20
    max_sequence_length: int = 512
    default_instruction: str | None = None

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def validate(self) -> TrainConfig:
        """Check every field; returns self.

        Raises:
            InvalidRequest: naming the field, the value and what is accepted.
        """
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise InvalidRequest(f"{name} must be {what}; got {getattr(self, name)!r}", field=name)

        need(self.steps >= 1, "steps", "at least 1")
        need(1 <= self.rank <= 256, "rank", "between 1 and 256 (4-32 is typical)")
        need(self.alpha is None or self.alpha > 0, "alpha", "positive")
        need(bool(self.target_modules) and all(isinstance(t, str) and t for t in self.target_modules),
             "target_modules", "a non-empty list of module names")
        need(0 < self.learning_rate <= 1, "learning_rate", "in (0, 1] (1e-4 is typical)")
        need(self.weight_decay >= 0, "weight_decay", "0 or more")
        need(self.warmup_steps >= 0, "warmup_steps", "0 or more")
        need(self.max_grad_norm >= 0, "max_grad_norm", "0 (no clipping) or more")
        need(1 <= self.batch_size <= 64, "batch_size", "between 1 and 64")
        need(self.resolution % 16 == 0 and 64 <= self.resolution <= 2048, "resolution",
             "a multiple of 16 between 64 and 2048 (512, 768 or 1024)")
        need(self.timestep_sampling in TIMESTEP_SAMPLING, "timestep_sampling", f"one of {TIMESTEP_SAMPLING}")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
        need(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        need(self.base_precision in BASE_PRECISIONS, "base_precision", f"one of {BASE_PRECISIONS}")
        # Autograd keeps each layer's upcast weight for the backward pass: without recomputation every
        # layer's full-precision copy is alive at the peak, which costs more than a bf16 base.
        need(self.base_precision != "fp8" or self.gradient_checkpointing, "base_precision",
             "'model' unless gradient_checkpointing is on (fp8 storage saves memory only with it)")
        need(self.checkpoint_every >= 0, "checkpoint_every", "0 (only at the end) or more")
        need(self.validate_every >= 0, "validate_every", "0 (never) or more")
        need(self.validation_pairs >= 0, "validation_pairs", "0 or more")
        need(1 <= self.validation_steps <= 100, "validation_steps", "between 1 and 100")
        need(1 <= self.max_sequence_length <= 512, "max_sequence_length", "between 1 and 512")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a JSON object, refusing unknown keys (a typo must not silently train with a default).

        Raises:
            InvalidRequest: an unknown key or a value of the wrong type.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"config: unknown field(s) {', '.join(unknown)}; accepted: "
                                 f"{', '.join(sorted(known))}", field="config")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise InvalidRequest(f"config: {exc}", field="config") from None
