"""Flow-matching LoRA training of the FLUX.1 Kontext transformer on before/after pairs.

Each step does what the reference Kontext trainers (diffusers' script, ai-toolkit, musubi-tuner) do: the
target's latents are noised to a level ``sigma`` drawn from a logit-normal (shifted by the resolution's mu
as at inference), the source's clean latents are appended as tokens with position index 1 exactly as the
pipeline lays out a reference, and the adapter learns to predict ``noise - target`` on the target tokens
(mean squared error). Only the LoRA weights train; the VAE and text encoders run once per picture and
instruction, through the on-disk cache.

Everything random in a step (which pairs, the noise, the noise level) comes from a generator seeded by
``(seed, step)``, so a run resumed from a checkpoint continues the very same loss curve.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from kontext_studio.core.contact_sheet import contact_sheet
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.core.lora import save_lora
from kontext_studio.training.buckets import bucket_for, fit_to_bucket
from kontext_studio.training.cache import EncodeCache
from kontext_studio.training.config import TrainConfig
from kontext_studio.training.dataset import DatasetReport, PairStats

ADAPTER = "kontext_lora"
LORA_FILE = "lora.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
CHECKPOINTS = "checkpoints"
VALIDATION_GUIDANCE = 2.5  # Kontext [dev]'s inference default: validation edits look like real ones
_STEP_SEED = 1_000_003


class TrainingError(KontextError):
    """Training cannot start or continue (incompatible checkpoint, nothing to train on)."""

    code = "training_error"
    exit_code = 2


@dataclass
class StepInfo:
    """Reported after every optimiser step."""

    step: int
    total: int
    loss: float
    lr: float
    seconds: float  # wall time of this step


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        status: ``completed``, ``interrupted`` (Ctrl-C) or ``canceled`` (``should_stop``).
        step: the last completed step.
        lora_path: the diffusers-format adapter (only when completed).
        kohya_path: the kohya / ComfyUI export, when asked for.
        checkpoint: the last checkpoint folder (resume from it).
        losses: the loss of every step since step 1 (including steps before a resume).
        validations: one entry per validation round (``step``, mean ``latent_distance``,
            ``pixel_distance``, ``identity`` and the contact sheet path).
        data_hash: the dataset's content hash.
        seconds: wall time of this call.
    """

    status: str
    step: int
    lora_path: Path | None
    kohya_path: Path | None
    checkpoint: Path | None
    losses: list[float]
    validations: list[dict[str, Any]]
    data_hash: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "step": self.step, "lora": self.lora_path and str(self.lora_path),
                "kohya": self.kohya_path and str(self.kohya_path),
                "checkpoint": self.checkpoint and str(self.checkpoint),
                "final_loss": self.losses[-1] if self.losses else None, "losses": self.losses,
                "validations": self.validations, "data_hash": self.data_hash, "seconds": round(self.seconds, 3),
                **self.extra}


def split_holdout(pairs: list[PairStats], n: int, seed: int) -> tuple[list[PairStats], list[PairStats]]:
    """Hold ``n`` pairs back for validation (a seeded choice, stable for the same data and seed).

    At least one pair always stays in training: with fewer than ``n + 1`` pairs nothing is held back.
    """
    ordered = sorted(pairs, key=lambda s: (s.target_sha256, s.source_sha256, s.pair.name))
    if n <= 0 or len(ordered) <= n:
        return ordered, []
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n])
    return [p for i, p in enumerate(ordered) if i not in held], [p for i, p in enumerate(ordered) if i in held]


def sample_sigmas(batch: int, scheme: str, generator: torch.Generator, mu: float | None) -> torch.Tensor:
    """Noise levels in (0, 1) for a batch: logit-normal or uniform, then FLUX's time shift by ``mu``.

    Args:
        batch: how many.
        scheme: ``logit_normal`` or ``uniform``.
        generator: the step's generator.
        mu: the resolution-dependent shift (``None``: no shift).

    Returns:
        float32 tensor of shape (batch,).
    """
    if scheme == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        u = torch.rand(batch, generator=generator)
    u = u.clamp(1e-4, 1 - 1e-4)
    if mu is None:
        return u
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


def flux_mu(image_tokens: int, scheduler_config: dict[str, Any]) -> float:
    """The time-shift mu the pipeline uses at inference for ``image_tokens`` (linear in the token count)."""
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return float(image_tokens * m + base_shift - m * base_len)


def _pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _ids(h: int, w: int, index: int) -> torch.Tensor:
    """Position ids (h/2 * w/2, 3) of packed latents: (index, row, col), as the pipeline makes them."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class LoraTrainer:
    """Trains one LoRA on a pipeline's transformer.

    Args:
        pipe: a ``FluxKontextPipeline`` on its device (the adapter is added to its transformer).
        config: the hyper-parameters.
        output_dir: receives ``lora.safetensors``, ``checkpoints/``, ``metrics.csv``, ``validation/``.
        base_model: what the pipeline was loaded from (recorded in the recipe).
        cache_dir: the latent / embedding cache (``None``: ``output_dir/cache``).
        on_step: called after every step.
        on_event: called with one-line messages (encoding, validation, checkpoints).
        should_stop: polled every step; when it returns True a checkpoint is written and the run ends
            with status ``canceled``.
        export_kohya: also write the kohya / ComfyUI key layout next to the diffusers file.
    """

    def __init__(self, pipe: Any, config: TrainConfig, output_dir: str | Path, *, base_model: str,
                 cache_dir: str | Path | None = None, on_step: Callable[[StepInfo], None] | None = None,
                 on_event: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 export_kohya: bool = False):
        self.pipe = pipe
        self.config = config.validate()
        self.out = Path(output_dir)
        self.base_model = base_model
        self.cache = EncodeCache(pipe, cache_dir if cache_dir is not None else self.out / "cache")
        self.on_step = on_step or (lambda _info: None)
        self.on_event = on_event or (lambda _msg: None)
        self.should_stop = should_stop or (lambda: False)
        self.export_kohya = export_kohya
        self.transformer = pipe.transformer
        # Where the transformer trains: diffusers' pipeline device prefers the accelerator, so a pipeline
        # loaded for fp8 storage (transformer still on the CPU, see load_pipeline) trains on the GPU.
        pipe_device = getattr(pipe, "device", None)
        self.device = torch.device(pipe_device) if pipe_device is not None else self.transformer.device
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.losses: list[float] = []
        self.validations: list[dict[str, Any]] = []
        self._tb: Any = None

    # -- set-up -----------------------------------------------------------------------------------
    def _add_adapter(self) -> list[torch.nn.Parameter]:
        from peft import LoraConfig

        from kontext_studio.training.base_precision import layerwise_casting_active, store_base_in_fp8

        cfg = self.config
        t = self.transformer
        if layerwise_casting_active(t):
            # The casting cannot be undone, and peft would create a new adapter in the base layer's
            # float8 dtype (rounding its initialisation): a run needs a freshly loaded transformer.
            raise TrainingError("this transformer already stores its base weights in fp8 (an earlier run); "
                                "load the pipeline again for a new run")
        compute_dtype = t.dtype
        if ADAPTER in getattr(t, "peft_config", {}):
            t.delete_adapters(ADAPTER)
        t.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            t.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                                     init_lora_weights=True), adapter_name=ADAPTER)
        t.set_adapter(ADAPTER)
        params = [p for n, p in t.named_parameters() if "lora_" in n and ADAPTER in n]
        if not params:
            raise InvalidRequest(f"target_modules {cfg.target_modules} match no module of this transformer",
                                 field="target_modules")
        for p in params:
            p.data = p.data.float()  # trainable weights stay in float32 even when the base runs in bf16
            p.requires_grad_(True)
        if cfg.base_precision == "fp8":
            # After the adapter exists and is float32: the hooks skip it by name, and diffusers then stops
            # peft from casting activations to the (float8) base dtype on their way into the adapter.
            try:
                stored = store_base_in_fp8(t, compute_dtype)
            except ValueError as exc:
                raise TrainingError(f"base_precision fp8: {exc}") from None
            self.on_event(f"base weights stored in fp8: {stored:,} parameters, upcast to "
                          f"{str(compute_dtype).removeprefix('torch.')} per layer")
        if t.device != self.device:
            self._move_transformer(t)
            params = [p for n, p in t.named_parameters() if "lora_" in n and ADAPTER in n]
        if cfg.gradient_checkpointing:
            t.enable_gradient_checkpointing()
        return params

    def _move_transformer(self, t: Any) -> None:
        """Bring the (now float8) transformer to the training device, making room for it first.

        The text encoders are done once the cache holds every instruction's embeddings (validation
        edits reuse them), and T5-XXL alone is about 9 GB: they go back to the CPU before the
        transformer arrives, so the two are never resident together.
        """
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(self.pipe, name, None)
            if isinstance(encoder, torch.nn.Module) and encoder.device == self.device:
                encoder.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        t.to(self.device)  # float8 parameters keep their dtype; the casting hooks move with the modules
        self.on_event(f"transformer moved to {self.device}")

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise InvalidRequest("optimizer adamw8bit needs bitsandbytes (pip install "
                                     "'kontext-studio[train]' on a CUDA machine); use adamw",
                                     field="optimizer") from None
            if self.device.type != "cuda":
                raise InvalidRequest("optimizer adamw8bit runs on CUDA only; use adamw", field="optimizer")
            opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=cfg.learning_rate,
                                                             weight_decay=cfg.weight_decay)
            return opt
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def _lr(self, step: int) -> float:
        warm = self.config.warmup_steps
        return self.config.learning_rate * (min(1.0, step / warm) if warm else 1.0)

    # -- data -------------------------------------------------------------------------------------
    def _encode(self, pairs: list[PairStats]) -> list[dict[str, Any]]:
        items = []
        res = self.config.resolution
        for i, s in enumerate(pairs):
            bucket = bucket_for(s.target_size, res)
            items.append({
                "name": s.pair.name, "bucket": bucket, "stats": s,
                "target": self.cache.latents(s.pair.target, s.target_sha256, bucket),
                "source": self.cache.latents(s.pair.source, s.source_sha256, bucket),
                "prompt": self.cache.prompt(s.instruction, self.config.max_sequence_length),
            })
            self.on_event(f"encoded {i + 1}/{len(pairs)}")
        return items

    def _batch(self, items: list[dict[str, Any]], generator: torch.Generator) -> list[dict[str, Any]]:
        first = items[int(torch.randint(len(items), (1,), generator=generator))]
        same = [it for it in items if it["bucket"] == first["bucket"]]
        rest = torch.randint(len(same), (self.config.batch_size - 1,), generator=generator).tolist()
        return [first] + [same[i] for i in rest]

    # -- one step ---------------------------------------------------------------------------------
    def loss_for(self, batch: list[dict[str, Any]], generator: torch.Generator) -> torch.Tensor:
        """The flow-matching loss of one batch (the transformer's adapter state decides what is trained).

        Args:
            batch: encoded items of one bucket.
            generator: supplies the noise and the noise levels.

        Returns:
            A scalar tensor.
        """
        cfg = self.config
        t = self.transformer
        x0 = torch.cat([it["target"] for it in batch])
        cond = torch.cat([it["source"] for it in batch])
        embeds = torch.cat([it["prompt"][0] for it in batch])
        pooled = torch.cat([it["prompt"][1] for it in batch])
        text_ids = batch[0]["prompt"][2]
        b, _c, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=generator)
        mu = flux_mu((h // 2) * (w // 2), dict(self.pipe.scheduler.config)) if cfg.flux_shift else None
        sigmas = sample_sigmas(b, cfg.timestep_sampling, generator, mu)
        s = sigmas.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        target = _pack(noise - x0)
        tokens = torch.cat([_pack(noisy), _pack(cond)], dim=1)
        img_ids = torch.cat([_ids(h, w, 0), _ids(h, w, 1)])  # the source at index 1, as at inference
        dtype = self.autocast_dtype or t.dtype
        dev = self.device
        guidance = torch.full((b,), cfg.guidance, device=dev) if t.config.guidance_embeds else None
        ctx = torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
        with ctx:
            pred = t(hidden_states=tokens.to(dev, dtype), timestep=sigmas.to(dev, dtype),
                     guidance=guidance, pooled_projections=pooled.to(dev, dtype),
                     encoder_hidden_states=embeds.to(dev, dtype), txt_ids=text_ids.to(dev),
                     img_ids=img_ids.to(dev), return_dict=False)[0]
        pred = pred[:, : target.shape[1]]
        return torch.nn.functional.mse_loss(pred.float(), target.to(dev).float())

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, items: list[dict[str, Any]], step: int, adapter: bool = True) -> dict[str, Any]:
        """Edit each held-out source and compare with its target.

        Args:
            items: encoded held-out pairs.
            step: for the file name and the log.
            adapter: False runs the base model (the adapter switched off), for comparison.

        Returns:
            ``step``, mean ``latent_distance`` (RMS between the edit's latents and the target's),
            ``pixel_distance`` (mean absolute difference to the target picture, 0-1), ``identity`` (the
            analysis package's identity score of the edit against the target: face similarity when the
            target shows a face, else feature consistency; None without the analysis extra),
            per-pair values and the contact sheet path.
        """
        import numpy as np

        t = self.transformer
        was_training = t.training
        t.eval()
        if not adapter:
            t.disable_adapters()
        self.pipe.set_progress_bar_config(disable=True)
        rows, images, labels = [], [], []
        try:
            for it in items:
                w, h = it["bucket"]
                embeds, pooled, _ids = it["prompt"]
                with Image.open(it["stats"].pair.source) as img:
                    src = fit_to_bucket(img, (w, h))
                with Image.open(it["stats"].pair.target) as img:
                    tgt = fit_to_bucket(img, (w, h))
                dtype = self.autocast_dtype or t.dtype
                latents = self.pipe(image=src, prompt_embeds=embeds.to(self.device, dtype),
                                    pooled_prompt_embeds=pooled.to(self.device, dtype), height=h, width=w,
                                    max_area=w * h, _auto_resize=False, guidance_scale=VALIDATION_GUIDANCE,
                                    num_inference_steps=self.config.validation_steps,
                                    generator=torch.Generator().manual_seed(self.config.seed),
                                    output_type="latent").images
                latent_d = float((latents.float().cpu() - _pack(it["target"])).pow(2).mean().sqrt())
                out = self._decode(latents, h, w)
                pixel_d = float(np.abs(np.asarray(out, np.float32) - np.asarray(tgt, np.float32)).mean() / 255)
                rows.append({"pair": it["name"], "latent_distance": latent_d, "pixel_distance": pixel_d,
                             **_identity(tgt, out)})
                images += [src, out, tgt]
                labels += [f"{it['name']} source", f"step {step} edit", f"{it['name']} target"]
        finally:
            if not adapter:
                t.enable_adapters()
            t.train(was_training)
        sheet_path = self.out / "validation" / (f"step-{step:06d}.png" if adapter else f"base-{step:06d}.png")
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(images, labels, columns=3, cell=160).save(sheet_path)
        cons = [r["identity"] for r in rows if r["identity"] is not None]
        return {"step": step, "adapter": adapter,
                "latent_distance": sum(r["latent_distance"] for r in rows) / len(rows),
                "pixel_distance": sum(r["pixel_distance"] for r in rows) / len(rows),
                "identity": sum(cons) / len(cons) if cons else None, "pairs": rows, "sheet": str(sheet_path)}

    def _decode(self, latents: torch.Tensor, h: int, w: int) -> Image.Image:
        pipe = self.pipe
        lat = pipe._unpack_latents(latents, h, w, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        images: list[Image.Image] = pipe.image_processor.postprocess(decoded, output_type="pil")
        return images[0]

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_checkpoint(self, step: int, optimizer: torch.optim.Optimizer, data_hash: str) -> Path:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = self.out / CHECKPOINTS / f"step-{step:06d}"
        tmp = folder.with_name(folder.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                  str(tmp / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({
            "step": step, "data_hash": data_hash, "config": self.config.as_dict(), "losses": self.losses,
            "validations": self.validations, "base_model": self.base_model}, indent=1))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.replace(folder)  # a run killed while writing leaves a .partial folder, never a broken checkpoint
        self.on_event(f"checkpoint {folder}")
        return folder

    def _load_checkpoint(self, where: Path, optimizer: torch.optim.Optimizer, data_hash: str) -> int:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = latest_checkpoint(where)
        state = json.loads((folder / "state.json").read_text())
        old = state["config"]
        for key in ("rank", "alpha", "target_modules", "resolution", "seed", "batch_size"):
            if old.get(key) != getattr(self.config, key):
                raise TrainingError(f"resume: the checkpoint {folder} was trained with {key}={old.get(key)!r}, "
                                    f"this run asks for {getattr(self.config, key)!r}; use the same value",
                                    )
        if state["data_hash"] != data_hash:
            raise TrainingError(f"resume: the checkpoint {folder} was trained on other data (hash "
                                f"{state['data_hash'][:12]}, this dataset {data_hash[:12]}); resume on the same "
                                "pairs or start a new run")
        weights = {k: v.to(self.device) for k, v in load_file(str(folder / "adapter.safetensors")).items()}
        set_peft_model_state_dict(self.transformer, weights, adapter_name=ADAPTER)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location=self.device))
        self.losses = list(state["losses"])
        self.validations = list(state.get("validations", []))
        self.on_event(f"resumed from {folder} at step {state['step']}")
        return int(state["step"])

    # -- logs -------------------------------------------------------------------------------------
    def _log(self, name: str, row: dict[str, Any]) -> None:
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional (the train extra); the CSV is always written
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.out / "tensorboard"))
        return self._tb or None

    def _record_validation(self, v: dict[str, Any]) -> None:
        self.validations.append({k: v[k] for k in ("step", "adapter", "latent_distance", "pixel_distance",
                                                    "identity", "sheet")})
        for r in v["pairs"]:
            self._log("validation.csv", {"step": v["step"], "adapter": v["adapter"], **r})
        if tb := self._tensorboard():
            for k in ("latent_distance", "pixel_distance", "identity"):
                if v[k] is not None:
                    tb.add_scalar(f"validation/{k}", v[k], v["step"])
        self.on_event(f"validation at step {v['step']}: distance to target {v['latent_distance']:.4f} (latents), "
                      f"{v['pixel_distance']:.4f} (pixels); sheet {v['sheet']}")

    # -- the run ----------------------------------------------------------------------------------
    def train(self, report: DatasetReport, resume: str | Path | None = None) -> TrainResult:
        """Train on the usable pairs of a checked dataset.

        Args:
            report: from ``check_dataset`` (its errors must be fixed or the pairs left out).
            resume: a checkpoint folder, or an output folder whose latest checkpoint is used.

        Returns:
            The result; on Ctrl-C a checkpoint is written and the status is ``interrupted``.

        Raises:
            TrainingError: no usable pairs, or a checkpoint that does not match this run.
        """
        started = time.perf_counter()
        cfg = self.config
        if not report.usable:
            raise TrainingError("the dataset has no usable pairs; run `kontext train-lora check` and fix the report")
        data_hash = report.data_hash()
        self.out.mkdir(parents=True, exist_ok=True)
        train_pairs, held = split_holdout(report.usable, cfg.validation_pairs, cfg.seed)
        self.on_event(f"{len(train_pairs)} training pair(s), {len(held)} held back for validation")
        items = self._encode(train_pairs)
        val_items = self._encode(held) if held else []
        params = self._add_adapter()
        optimizer = self._optimizer(params)
        step = self._load_checkpoint(Path(resume), optimizer, data_hash) if resume else 0
        t = self.transformer
        t.train()
        checkpoint: Path | None = None
        status = "completed"
        if val_items and cfg.validate_every and step == 0:
            self._record_validation(self.validate(val_items, 0))
        try:
            while step < cfg.steps:
                if self.should_stop():
                    status = "canceled"
                    break
                tick = time.perf_counter()
                gen = torch.Generator().manual_seed(cfg.seed * _STEP_SEED + step + 1)
                lr = self._lr(step + 1)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = self.loss_for(self._batch(items, gen), gen)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(f"the loss became {value} at step {step}; lower the learning rate "
                                        f"({cfg.learning_rate})")
                self.losses.append(value)
                seconds = time.perf_counter() - tick
                self._log("metrics.csv", {"step": step, "loss": value, "lr": lr, "seconds": round(seconds, 4)})
                if tb := self._tensorboard():
                    tb.add_scalar("train/loss", value, step)
                self.on_step(StepInfo(step, cfg.steps, value, lr, seconds))
                if val_items and cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.steps):
                    self._record_validation(self.validate(val_items, step))
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    checkpoint = self._save_checkpoint(step, optimizer, data_hash)
        except KeyboardInterrupt:
            status = "interrupted"
            optimizer.zero_grad(set_to_none=True)  # the interrupted step's half-made gradients are dropped
        checkpoint = self._save_checkpoint(step, optimizer, data_hash) if step else checkpoint
        lora_path = kohya_path = None
        if status == "completed":
            lora_path = save_lora(t, self.out / LORA_FILE, adapter_name=ADAPTER,
                                  extra_metadata=self.recipe(report, step))
            if self.export_kohya:
                from kontext_studio.training.export import export_kohya

                kohya_path = export_kohya(lora_path, self.out / KOHYA_FILE)
        if self._tb:
            self._tb.close()
        self.on_event(f"{status} at step {step}")
        return TrainResult(status, step, lora_path, kohya_path, checkpoint, list(self.losses),
                           list(self.validations), data_hash, time.perf_counter() - started,
                           {"cache": {"hits": self.cache.hits, "misses": self.cache.misses}})

    def recipe(self, report: DatasetReport, step: int) -> dict[str, Any]:
        """The training recipe stored in the adapter's metadata: data, hyper-parameters, base model."""
        import diffusers
        import peft

        return {"kind": "kontext-lora", "base_model": self.base_model, "data_hash": report.data_hash(),
                "pairs": len(report.usable), "steps_done": step,
                # "control-folder", not the trainer's name: LoRA loaders read that name as the file's origin
                "dataset_layout": "control-folder" if report.layout == "ai-toolkit" else report.layout,
                "final_loss": self.losses[-1] if self.losses else None, "config": self.config.as_dict(),
                "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                             "peft": peft.__version__}}


def latest_checkpoint(where: str | Path) -> Path:
    """The checkpoint folder ``where`` names, or the newest one inside ``where/checkpoints``.

    Raises:
        TrainingError: none found.
    """
    p = Path(where)
    if (p / "state.json").is_file():
        return p
    found = sorted((p / CHECKPOINTS).glob("step-*[0-9]")) if (p / CHECKPOINTS).is_dir() else []
    found = [f for f in found if (f / "state.json").is_file()]
    if not found:
        raise TrainingError(f"resume: no checkpoint in {p} (expected {p}/{CHECKPOINTS}/step-NNNNNN/state.json)")
    return found[-1]


def _identity(target: Image.Image, output: Image.Image) -> dict[str, Any]:
    """The analysis package's identity score of an edit against its target (face, else features)."""
    try:
        from kontext_studio.analysis.identity import compare_identity
    except ImportError:  # the analysis extra (dlib, OpenCV) is optional
        return {"identity": None, "identity_method": None}
    report = compare_identity(target, output)
    return {"identity": report.similarity, "identity_method": report.method}


def load_pipeline(model: str | None, base: str | None = None, device: str = "auto", dtype: str = "auto",
                  token: str | None = None, allow_download: bool = False,
                  base_precision: str = "model") -> tuple[Any, str, int]:
    """Load a Kontext pipeline for training.

    Args:
        model: hub repo id, diffusers folder or single-file checkpoint (as ``kontext edit --model``).
        base: for a single file, where the other parts come from.
        device, dtype: ``auto`` or explicit.
        token, allow_download: for the hub.
        base_precision: the run's ``TrainConfig.base_precision``. With ``fp8`` on an accelerator the
            transformer stays on the CPU (in ``dtype``) and only the VAE and text encoders go to the
            device: the trainer stores it in float8 before moving it, so its 22 GiB bf16 copy never has
            to fit on the card, and the text encoders leave the card before it arrives.

    Returns:
        (pipeline on its device, the model's description for the recipe, its working resolution).

    Raises:
        WeightsNotFound: with instructions for getting the weights.
    """
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel

    from kontext_studio.core.device import pick_device, pick_dtype_name
    from kontext_studio.core.errors import WeightsNotFound
    from kontext_studio.core.weights import ModelSource, locate

    source = ModelSource.parse(model, base=base)
    status = locate(source, token, download=allow_download)
    if not status.found or status.path is None:
        raise WeightsNotFound(status.message)
    dev = pick_device(device)
    torch_dtype = getattr(torch, pick_dtype_name(dev, dtype))
    if source.kind == "single_file":
        base_status = locate(ModelSource.parse(source.base), token, download=allow_download)
        if base_status.path is None:
            raise WeightsNotFound(base_status.message)
        transformer = FluxTransformer2DModel.from_single_file(status.path, config=base_status.path,
                                                              subfolder="transformer", dtype=torch_dtype)
        pipe = FluxKontextPipeline.from_pretrained(base_status.path, transformer=transformer, dtype=torch_dtype)
    else:
        pipe = FluxKontextPipeline.from_pretrained(status.path, dtype=torch_dtype)
    if base_precision == "fp8" and torch.device(dev).type != "cpu":
        for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            part.to(dev)
    else:
        pipe.to(dev)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.text_encoder_2.requires_grad_(False)
    return pipe, source.describe(), status.resolution
