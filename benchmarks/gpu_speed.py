"""Full-size FLUX.1 Kontext [dev] and FLUX.2 [klein] 4B on one GPU, random weights: stock against each profile.

Time per denoising step does not depend on the weight values, so the transformers are built from the
published configurations with random bf16 weights directly on the GPU (no download). For each model and
variant it prints seconds per step (median after warm-up), seconds per 1024² edit (28 steps for Kontext,
4 for klein, plus the VAE encode and decode measured once), peak GPU memory, model FLOP utilisation against
the floor in the performance design note (165 TFLOP per Kontext step at 790 TFLOP/s bf16 on one H200), the
first step after start (compilation included), and the speed-up against stock in the same run.

Variants (``core.acceleration`` profiles and ``core.quantize`` precisions):

* ``stock``: diffusers as shipped, SDPA.
* ``lossless``: attention backend for the GPU (FlashAttention-3 on Hopper when installed), regional
  compilation of the repeated blocks, fused QKV.
* ``fast``: ``lossless`` + torchao fp8 dynamic quantization of the linear layers (Ada/Hopper/Blackwell).
* ``fp8-storage``: stock compute with fp8 e4m3 weight storage (the memory plan for 24 GB cards).
* step cache: the ``fast`` profile's MagCache over a 28-step loop, reporting how many block calls it skipped.
  With random weights this shows the mechanism only, not a speed claim (the activations are not a real
  model's).

Targets for Kontext [dev] at 28 steps with a 1024² reference on an H100/H200: ``lossless`` >= 2x stock,
``fast`` with the step cache >= 3x.

    .venv/bin/python benchmarks/gpu_speed.py [--models kontext-dev,klein-4b] [--steps 6] [--json]
    .venv/bin/python benchmarks/gpu_speed.py --smoke     # shrunken models, on the CPU if there is no GPU

Without a GPU (and without ``--smoke``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEAK_TFLOPS_BF16 = 790.0  # measured on one H200 (performance design note)
TOKENS_1024 = 4096  # 1024² output: (1024 / 16)² packed latent tokens; the reference has as many
TEXT_TOKENS = 512
VARIANTS = ("stock", "lossless", "fast", "fp8-storage")


def say(line: str = "") -> None:
    print(line, flush=True)


@dataclass
class ModelCase:
    """One model: how to build its transformer, its inputs, and its FLOPs per step."""

    name: str
    steps_per_edit: int
    build: Callable[[str, bool], Any]
    inputs: Callable[[Any, str, bool], dict[str, Any]]
    flops: Callable[[bool], float]


def _flux1_flops(smoke: bool) -> float:
    d, blocks = (256, 2) if smoke else (3072, 57)
    n = (64 if smoke else 2 * TOKENS_1024) + (16 if smoke else TEXT_TOKENS)
    return blocks * (24 * d * d * n + 4 * n * n * d)


def _flux2_klein_flops(smoke: bool) -> float:
    # klein 4B: width 3072, 5 double + 20 single blocks, SwiGLU MLP at 3x: 26 d² weights per token per block.
    d, blocks = (256, 2) if smoke else (3072, 25)
    n = (64 if smoke else 2 * TOKENS_1024) + (16 if smoke else TEXT_TOKENS)
    return blocks * (26 * d * d * n + 4 * n * n * d)


def build_kontext(device: str, smoke: bool) -> Any:
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device(device):
        return FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1 if smoke else 19, num_single_layers=1 if smoke else 38,
            attention_head_dim=128 if not smoke else 64, num_attention_heads=4 if smoke else 24,
            joint_attention_dim=64 if smoke else 4096, pooled_projection_dim=64 if smoke else 768,
            guidance_embeds=True, axes_dims_rope=[8, 28, 28] if smoke else [16, 56, 56],
        ).to(torch.bfloat16).eval()


def inputs_kontext(model: Any, device: str, smoke: bool) -> dict[str, Any]:
    import torch

    side = 4 if smoke else 64  # latent tokens per side (1024 / 16)
    n_img, n_txt = side * side, 16 if smoke else TEXT_TOKENS
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = model.config
    rows = torch.arange(side).repeat_interleave(side)
    cols = torch.arange(side).repeat(side)
    target = torch.stack([torch.zeros_like(rows), rows, cols], -1)
    reference = torch.stack([torch.ones_like(rows), rows, cols], -1)
    return {
        "hidden_states": torch.randn(1, 2 * n_img, cfg.in_channels, generator=g).to(device, torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, n_txt, cfg.joint_attention_dim, generator=g).to(device, torch.bfloat16),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=g).to(device, torch.bfloat16),
        "timestep": torch.tensor([0.5], device=device, dtype=torch.bfloat16),
        "guidance": torch.tensor([2.5], device=device, dtype=torch.bfloat16),
        "img_ids": torch.cat([target, reference]).to(device, torch.bfloat16),
        "txt_ids": torch.zeros(n_txt, 3, device=device, dtype=torch.bfloat16),
        "return_dict": False,
    }


def build_klein(device: str, smoke: bool) -> Any:
    import torch
    from diffusers import Flux2Transformer2DModel

    with torch.device(device):
        return Flux2Transformer2DModel(
            patch_size=1, in_channels=128, num_layers=1 if smoke else 5, num_single_layers=1 if smoke else 20,
            attention_head_dim=64 if smoke else 128, num_attention_heads=4 if smoke else 24,
            joint_attention_dim=64 if smoke else 7680, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(16, 16, 16, 16) if smoke else (32, 32, 32, 32), guidance_embeds=False,
        ).to(torch.bfloat16).eval()


def inputs_klein(model: Any, device: str, smoke: bool) -> dict[str, Any]:
    import torch

    side = 4 if smoke else 64
    n_img, n_txt = side * side, 16 if smoke else TEXT_TOKENS
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = model.config
    rows = torch.arange(side).repeat_interleave(side)
    cols = torch.arange(side).repeat(side)
    zeros = torch.zeros_like(rows)
    target = torch.stack([zeros, rows, cols, zeros], -1)
    reference = torch.stack([zeros + 10, rows, cols, zeros], -1)
    text = torch.stack([torch.zeros(n_txt, dtype=torch.long)] * 3 + [torch.arange(n_txt)], -1)
    return {
        "hidden_states": torch.randn(1, 2 * n_img, cfg.in_channels, generator=g).to(device, torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, n_txt, cfg.joint_attention_dim, generator=g).to(device, torch.bfloat16),
        "timestep": torch.tensor([0.5], device=device, dtype=torch.bfloat16),
        "img_ids": torch.cat([target, reference]).unsqueeze(0).to(device),
        "txt_ids": text.unsqueeze(0).to(device),
        "return_dict": False,
    }


CASES = {
    "kontext-dev": ModelCase("kontext-dev", 28, build_kontext, inputs_kontext, _flux1_flops),
    "klein-4b": ModelCase("klein-4b", 4, build_klein, inputs_klein, _flux2_klein_flops),
}


def vae_seconds(device: str, smoke: bool, sync: Callable[[], None]) -> float:
    """One 1024² VAE encode (the reference) and decode (the output) with the full-size FLUX VAE."""
    import torch
    from diffusers import AutoencoderKL

    with torch.device(device):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32) if smoke else (128, 256, 512, 512),
            layers_per_block=1 if smoke else 2, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
            use_post_quant_conv=False).to(torch.bfloat16).eval()
    side = 64 if smoke else 1024
    image = torch.randn(1, 3, side, side, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(2):
            sync()
            t = time.perf_counter()
            latents = vae.encode(image).latent_dist.mode()
            vae.decode(latents)
            sync()
    del vae
    return time.perf_counter() - t


def apply_variant(model: Any, variant: str, device: str, smoke: bool) -> dict[str, Any]:
    from kontext_studio.core.acceleration import FAST, LOSSLESS, STOCK, Accelerator
    from kontext_studio.core.quantize import apply_precision

    if variant == "fp8-storage":
        apply_precision(model, "fp8")
        return {"profile": "stock", "precision": "fp8 storage"}
    profile = {"stock": STOCK, "lossless": LOSSLESS, "fast": FAST}[variant]
    acc = Accelerator(model, device, compile_on_cpu=smoke)
    report = acc.use(profile)
    model._bench_accelerator = acc
    return report.as_dict()


def time_variant(case: ModelCase, variant: str, device: str, smoke: bool, steps: int,
                 sync: Callable[[], None], cuda: bool) -> dict[str, Any]:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = case.build(device, smoke)
    inputs = case.inputs(model, device, smoke)
    report = apply_variant(model, variant, device, smoke)
    with torch.no_grad():
        sync()
        t = time.perf_counter()
        model(**inputs)
        sync()
        first = time.perf_counter() - t
        model(**inputs)
        times = []
        for _ in range(steps):
            sync()
            t = time.perf_counter()
            model(**inputs)
            sync()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    result = {"variant": variant, "s_per_step": statistics.median(times), "first_step_s": first,
              "peak_gib": peak, "report": report}
    if variant == "fast":
        result["step_cache"] = step_cache_mechanism(model, inputs, case)
    del model, inputs
    return result


def step_cache_mechanism(model: Any, inputs: dict[str, Any], case: ModelCase) -> dict[str, Any]:
    """Run ``case.steps_per_edit`` forwards under the fast profile's step cache; count the block calls made."""
    import torch

    from kontext_studio.core.acceleration import get_profile

    family = "kontext" if case.name.startswith("kontext") else "klein"
    profile = get_profile("fast", family)
    if profile.step_cache is None:
        return {"kind": None, "note": f"no step cache for {case.name} ({case.steps_per_edit} steps)"}
    counter = {"n": 0}
    names = model._repeated_blocks
    hooks = [next(iter(m.children())).register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
             for m in model.modules() if type(m).__name__ in names]
    acc = model._bench_accelerator
    steps = case.steps_per_edit
    with torch.no_grad(), acc.step_cache(profile.step_cache, profile.step_cache_threshold, steps):
        for i in range(steps):
            step_inputs = dict(inputs, timestep=torch.tensor([1 - i / steps], device=inputs["timestep"].device,
                                                             dtype=inputs["timestep"].dtype))
            model(**step_inputs)
    for h in hooks:
        h.remove()
    blocks = len([m for m in model.modules() if type(m).__name__ in names])
    return {"kind": profile.step_cache, "threshold": profile.step_cache_threshold, "block_calls": counter["n"],
            "stock_block_calls": blocks * steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after two warm-up steps)")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS_BF16)
    parser.add_argument("--smoke", action="store_true", help="shrunken models: checks the code path (CPU is fine)")
    parser.add_argument("--cache-dir", default=None, help="torch.compile cache folder (run twice: the second "
                        "start reuses it; the first-step column shows the difference)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import torch

    from kontext_studio.bootstrap import compile_cache_dir, quiet_third_party_logs

    quiet_third_party_logs()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        say("gpu_speed.py needs a CUDA GPU (torch.cuda.is_available() is False here); nothing was run. "
            "Use --smoke to check the code path on the CPU with shrunken models.")
        return 0
    if args.cache_dir:
        compile_cache_dir(Path(args.cache_dir))
    device = "cuda" if cuda else "cpu"
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    vae_s = vae_seconds(device, args.smoke, sync)
    results: dict[str, Any] = {"device": gpu, "smoke": args.smoke, "vae_encode_decode_s": vae_s, "models": {}}
    for name in args.models.split(","):
        case = CASES[name]
        flops = case.flops(args.smoke)
        rows = []
        for variant in args.variants.split(","):
            try:
                row = time_variant(case, variant, device, args.smoke, args.steps, sync, cuda)
            except Exception as exc:  # one variant failing (a missing kernel) must not hide the others
                rows.append({"variant": variant, "error": f"{exc.__class__.__name__}: {str(exc)[:200]}"})
                continue
            row["s_per_edit"] = row["s_per_step"] * case.steps_per_edit + vae_s
            row["tflops"] = flops / row["s_per_step"] / 1e12
            row["mfu"] = row["tflops"] / args.peak_tflops
            rows.append(row)
        stock = next((r for r in rows if r["variant"] == "stock" and "error" not in r), None)
        for r in rows:
            if stock and "error" not in r:
                r["speedup"] = stock["s_per_step"] / r["s_per_step"]
        results["models"][name] = {"tflop_per_step": flops / 1e12, "steps_per_edit": case.steps_per_edit,
                                   "floor_s_per_step": flops / (args.peak_tflops * 1e12), "rows": rows}
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    say(f"device: {gpu}; VAE encode+decode at 1024²: {vae_s:.2f} s")
    for name, m in results["models"].items():
        say()
        say(f"== {name}: {m['tflop_per_step']:.1f} TFLOP per step, {m['steps_per_edit']} steps per edit, floor "
            f"{m['floor_s_per_step']:.3f} s/step at {args.peak_tflops:.0f} TFLOP/s")
        say(f"  {'variant':<12} {'s/step':>8} {'s/edit':>8} {'peak GiB':>9} {'MFU':>6} {'x stock':>8} "
            f"{'1st step s':>11}")
        for r in m["rows"]:
            if "error" in r:
                say(f"  {r['variant']:<12} failed: {r['error']}")
                continue
            peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
            say(f"  {r['variant']:<12} {r['s_per_step']:>8.3f} {r['s_per_edit']:>8.2f} {peak:>9} {r['mfu']:>6.1%} "
                f"{r.get('speedup', 0):>8.2f} {r['first_step_s']:>11.2f}")
            notes = (r.get("report") or {}).get("fallbacks") or []
            for n in notes:
                say(f"      note: {n}")
            sc = r.get("step_cache")
            if sc and sc.get("kind"):
                say(f"      step cache {sc['kind']} (threshold {sc['threshold']}): {sc['block_calls']} of "
                    f"{sc['stock_block_calls']} block calls made (random weights: the mechanism, not a speed claim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
