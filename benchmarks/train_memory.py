"""Memory plan for Kontext [dev] LoRA training: peak VRAM and seconds per step of the full-size model.

With CUDA: builds the full-size FLUX.1 Kontext transformer with random bf16 weights directly on the GPU
(no download; time and memory do not depend on weight values), adds a rank-16 LoRA on the default
targets and times real training steps of ``LoraTrainer`` (the same loss code as a run) at 512 and 768 px:
with and without gradient checkpointing on a bf16 base, and with checkpointing on an fp8 base (the
trainer's ``base_precision="fp8"``, the same ``_add_adapter`` call as a run). It reports peak
``torch.cuda.max_memory_allocated`` from the first step on (the bf16 copy the fp8 rows are built from is
freed before) and median s/step. Building needs a card that holds the bf16 transformer (22 GiB); the
fp8 rows' peak says whether a 24 GB card would do. Latents and text embeddings are random tensors of the
right shapes (they come from the cache in a run, so the VAE and text encoders are not resident).

Without CUDA it prints the analytic estimate (``kontext_studio.training.memory``) for the same grid and
says that measured figures need a GPU.

    .venv/bin/python benchmarks/train_memory.py [--resolutions 512 768] [--rank 16] [--steps 6] [--json]
    .venv/bin/python benchmarks/train_memory.py --smoke --resolutions 128 --steps 2   # check the measuring path
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any

GiB = 1024**3


def estimate_rows(resolutions: list[int], rank: int) -> list[dict[str, Any]]:
    from kontext_studio.training.config import DEFAULT_TARGET_MODULES
    from kontext_studio.training.memory import build_meta_transformer, estimate

    t = build_meta_transformer()
    rows = []
    for res in resolutions:
        for gc, base in GRID:
            e = estimate(t, res, rank, list(DEFAULT_TARGET_MODULES), gradient_checkpointing=gc,
                         base_precision=base).as_dict()
            rows.append({"resolution": res, "checkpointing": gc, "base": base, **{
                k: e[k] for k in ("base_params", "base_fp8_params", "lora_params", "tokens", "base_weights_gib",
                                  "upcast_weights_gib", "lora_weights_and_grads_gib", "optimizer_states_gib",
                                  "activations_gib", "workspace_gib", "total_gib")}})
    return rows


# (gradient checkpointing, base precision) per resolution; fp8 storage only runs with checkpointing (the
# trainer refuses it otherwise: without recomputation every upcast weight is kept for the backward pass).
GRID = ((False, "bf16"), (True, "bf16"), (True, "fp8"))


# --smoke: the same code path on a shrunken transformer (CPU when there is no GPU), to check the script.
SMOKE = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
         "joint_attention_dim": 4096, "pooled_projection_dim": 768, "in_channels": 64, "guidance_embeds": True,
         "axes_dims_rope": [4, 4, 8]}


def measure(resolution: int, rank: int, checkpointing: bool, steps: int, smoke: bool = False,
            base: str = "bf16") -> dict[str, Any]:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from kontext_studio.training.config import TrainConfig
    from kontext_studio.training.memory import FULL_SIZE
    from kontext_studio.training.trainer import LoraTrainer

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.empty_cache()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**(SMOKE if smoke else FULL_SIZE))
    finally:
        torch.set_default_dtype(previous)
    tiny_vae = torch.nn.Linear(1, 1)  # only fingerprinted by the cache; nothing is encoded here
    pipe = SimpleNamespace(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096), vae=tiny_vae, text_encoder=tiny_vae, text_encoder_2=tiny_vae)
    cfg = TrainConfig(steps=steps, rank=rank, resolution=resolution, gradient_checkpointing=checkpointing,
                      base_precision="fp8" if base == "fp8" else "model", validate_every=0, checkpoint_every=0)
    trainer = LoraTrainer(pipe, cfg, "/tmp/kontext-train-memory", base_model="random full-size", cache_dir=None)
    params = trainer._add_adapter()  # with fp8: the trainer's own casting, as in a run
    optimizer = trainer._optimizer(params)
    weights = sum(p.numel() * p.element_size() for p in transformer.parameters())
    side = resolution // 8
    item = {"target": torch.randn(1, 16, side, side), "source": torch.randn(1, 16, side, side),
            "prompt": (torch.randn(1, 512, 4096), torch.randn(1, 768), torch.zeros(512, 3)),
            "bucket": (resolution, resolution), "name": "random"}
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for step in range(steps):
            gen = torch.Generator().manual_seed(step)
            t0 = time.perf_counter()
            loss = trainer.loss_for([item], gen)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        result = {"resolution": resolution, "rank": rank, "checkpointing": checkpointing, "base": base,
                  "weights_gib": round(weights / GiB, 2), "peak_gib": round(peak / GiB, 2),
                  "s_per_step": round(statistics.median(times[1:] or times), 3), "fits_24gb": peak < 24e9,
                  "oom": False}
    except torch.OutOfMemoryError:
        result = {"resolution": resolution, "rank": rank, "checkpointing": checkpointing, "base": base,
                  "weights_gib": round(weights / GiB, 2), "peak_gib": None, "s_per_step": None,
                  "fits_24gb": False, "oom": True}
    del trainer, optimizer, params, transformer, pipe
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="run the measuring code on a shrunken model")
    args = parser.parse_args()
    import torch

    report: dict[str, Any] = {"estimate": estimate_rows(args.resolutions, args.rank)}
    if torch.cuda.is_available() or args.smoke:
        report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        if args.smoke:
            report["device"] += " (smoke: shrunken model, figures mean nothing)"
        report["measured"] = [measure(r, args.rank, gc, args.steps, args.smoke, base) for r in args.resolutions
                              for gc, base in GRID]
    else:
        report["measured"] = None
        report["note"] = ("no CUDA device: these are analytic estimates; run this script on a GPU for measured "
                          "peak VRAM and s/step")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Estimate (rank {args.rank}, default targets, batch 1, target + source + 512 text tokens):")
    print(f"{'px':>5} {'ckpt':>5} {'base':>6} {'weights':>8} {'upcast':>7} {'lora+grad':>9} {'adamw':>6} "
          f"{'activ.':>7} {'total GiB':>9}  24 GB?")
    for r in report["estimate"]:
        print(f"{r['resolution']:>5} {('yes' if r['checkpointing'] else 'no'):>5} {r['base']:>6} "
              f"{r['base_weights_gib']:>8.2f} {r['upcast_weights_gib']:>7.2f} {r['lora_weights_and_grads_gib']:>9.2f} "
              f"{r['optimizer_states_gib']:>6.2f} {r['activations_gib']:>7.2f} {r['total_gib']:>9.2f}  "
              f"{'fits' if r['total_gib'] * GiB < 24e9 else 'no'}")
    first = report["estimate"][0]
    fp8 = next((r for r in report["estimate"] if r["base"] == "fp8"), None)
    print(f"transformer parameters {first['base_params'] / 1e9:.2f} B"
          + (f" ({fp8['base_fp8_params'] / 1e9:.2f} B stored in fp8 with --base-precision fp8)" if fp8 else "")
          + f", LoRA rank {args.rank} parameters {first['lora_params'] / 1e6:.1f} M")
    if report["measured"] is None:
        print(report["note"])
        return 0
    print(f"Measured on {report['device']} (random weights, {args.steps} steps, median s/step):")
    for m in report["measured"]:
        state = "OOM" if m["oom"] else (f"peak {m['peak_gib']:.2f} GiB ({'fits' if m['fits_24gb'] else 'not'} "
                                         f"24 GB), {m['s_per_step']:.3f} s/step")
        print(f"  {m['resolution']} px, {m['base']} base ({m['weights_gib']:.2f} GiB), checkpointing "
              f"{'on ' if m['checkpointing'] else 'off'}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
