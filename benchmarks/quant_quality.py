"""Quantized weights and acceleration on the CPU with the tiny models: distance to full precision per format.

For each family whose tiny test pipeline is available, the same edit (image, prompt, seed, steps) runs with the
transformer at full precision (float32 on the CPU) and then in each weight format: fp8 e4m3 storage, torchao
int8 weight-only (when torchao is installed), and GGUF Q8_0, Q6_K, Q5_K, Q4_K written by ``kontext quantize``'s
code and read back through diffusers' GGUF loader. It prints, per format: PSNR of the decoded image against
full precision, the mean absolute difference of the final latents, and the bytes of the transformer's linear
weights against the same weights in bf16 (Q8_0 is 34 bytes per 32 values: 0.53x). It also runs the ``lossless``
profile with regional compilation forced on the CPU (stated tolerance: latents within 1e-4) and the ``fast``
profile's step cache, counting the linear-layer calls inside the repeated blocks that it skipped.

The tiny models are 32 wide, too narrow for K-quant blocks (256 values per row); by default their transformers
are widened to 256 (4 heads of 64) so that Q6_K/Q5_K/Q4_K are really used (``--narrow`` keeps the stock tiny
width, where most K-quant tensors fall back to Q8_0/Q5_1/Q5_0 as llama.cpp does). Random weights: the images are
noise, so the figures measure the numerical distance each format adds, not visual quality on real weights.

    .venv/bin/python benchmarks/quant_quality.py [--steps 8] [--families kontext,klein,flux2,qwen] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("fp8", "int8", "q8_0", "q6_k", "q5_k", "q4_k")
COMPILE_LATENT_TOLERANCE = 1e-4


def say(line: str = "") -> None:
    print(line, flush=True)


@dataclass
class Family:
    name: str
    build: Callable[[], Any]  # → pipeline (eval mode)
    run: Callable[[Any, Any, int], Any]  # (pipe, image, steps) → latents


def _eval(pipe: Any) -> Any:
    for part in pipe.components.values():
        if hasattr(part, "eval"):
            part.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def widen(transformer: Any, seed: int = 0) -> Any:
    """The same transformer class and config at 256 wide (4 heads of 64), seeded random weights."""
    import torch

    cfg = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    axes = list(cfg.get("axes_dims_rope") or [])
    cfg["attention_head_dim"], cfg["num_attention_heads"] = 64, 4
    if axes:
        base = [64 // len(axes) // 2 * 2] * len(axes)
        base[-1] += 64 - sum(base)
        cfg["axes_dims_rope"] = base
    torch.manual_seed(seed)
    return type(transformer).from_config(cfg).eval()


def families(narrow: bool) -> dict[str, Family]:
    """The tiny pipelines of every family this checkout has."""
    import torch

    def generator() -> Any:
        return torch.Generator().manual_seed(3)

    def kontext() -> Any:
        from diffusers import FluxKontextPipeline

        from kontext_studio.testing.tiny_model import tiny_components

        parts = tiny_components(seed=0)
        if not narrow:
            parts["transformer"] = widen(parts["transformer"])
        return _eval(FluxKontextPipeline(**parts))

    def run_kontext(pipe: Any, image: Any, steps: int) -> Any:
        # max_area too: without it the stock pipeline scales 128x128 up to its default of 1024x1024.
        return pipe(image=image, prompt="make it snowy", height=128, width=128, max_area=128 * 128,
                    num_inference_steps=steps, generator=generator(), output_type="latent",
                    _auto_resize=False).images

    out = {"kontext": Family("kontext", kontext, run_kontext)}
    try:
        from kontext_studio.testing import tiny_families as tf
    except ImportError:
        return out

    def make(fn_name: str, pipeline: str) -> Callable[[], Any]:
        def build() -> Any:
            import diffusers

            parts = getattr(tf, fn_name)(seed=0)
            if not narrow:
                parts["transformer"] = widen(parts["transformer"])
            return _eval(getattr(diffusers, pipeline)(**parts))
        return build

    def run_native(pipe: Any, image: Any, steps: int) -> Any:
        return pipe(image=[image], prompt="make it snowy", height=128, width=128, num_inference_steps=steps,
                    generator=generator(), output_type="latent").images

    for name, fn_name, pipeline in (("klein", "klein_components", "Flux2KleinPipeline"),
                                    ("flux2", "flux2_components", "Flux2Pipeline"),
                                    ("qwen", "qwen_components", "QwenImageEditPlusPipeline")):
        if hasattr(tf, fn_name):
            out[name] = Family(name, make(fn_name, pipeline), run_native)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def linear_bytes(transformer: Any) -> tuple[int, int]:
    """(bytes of the Linear weights as stored, the same weights in bf16). Weights left unquantized count at
    2 bytes (bf16, as on a GPU), not at the float32 the CPU computes in."""
    import torch

    stored = bf16 = 0
    for mod in transformer.modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        w = mod.weight
        bf16 += int(np.prod(getattr(w, "quant_shape", None) or w.shape)) * 2
        inner = [getattr(w, name) for name in ("qdata", "scale", "int_data", "zero_point")
                 if isinstance(getattr(w, name, None), torch.Tensor)]
        stored += (sum(t.numel() * t.element_size() for t in inner) if inner
                   else w.numel() * min(w.element_size(), 2))
    return stored, bf16


def quantized(transformer: Any, fmt: str, work: Path) -> tuple[Any, dict[str, int]]:
    """A copy of ``transformer`` in ``fmt`` and its tensor-type counts."""
    import torch

    from kontext_studio.core.quantize import (
        QuantFormat,
        apply_precision,
        inspect_gguf,
        load_gguf_transformer,
        write_gguf,
    )

    if fmt in ("fp8", "int8"):
        t = copy.deepcopy(transformer)
        apply_precision(t, fmt)
        return t, {}
    folder = work / "base"
    if not (folder / "transformer" / "config.json").is_file():
        transformer.save_pretrained(folder / "transformer")
    path = write_gguf(transformer, work / f"t-{fmt}.gguf", QuantFormat(fmt))
    t = load_gguf_transformer(type(transformer), path, folder, torch.float32)
    return t, inspect_gguf(path).types


def images_of(pipe: Any, fam: Family, image: Any, steps: int) -> tuple[Any, np.ndarray]:
    """Final latents and the decoded image of one run."""
    import torch

    latents = fam.run(pipe, image, steps)

    call = pipe.__call__
    kwargs: dict[str, Any] = {"prompt": "make it snowy", "height": 128, "width": 128, "num_inference_steps": steps,
                              "generator": torch.Generator().manual_seed(3), "output_type": "np"}
    if fam.name == "kontext":
        kwargs.update(image=image, _auto_resize=False, max_area=128 * 128)
    else:
        kwargs.update(image=[image])
    pixels = call(**kwargs).images[0]
    return latents, (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def count_block_calls(transformer: Any) -> Callable[[], int]:
    """Counts forward calls of the linear layers inside the transformer's repeated blocks: a step cache that
    skips a whole block (MagCache, first-block) or only its attention (TaylorSeer's forecasts) makes fewer."""
    import torch

    counter = {"n": 0}
    names = getattr(transformer, "_repeated_blocks", None) or []
    for mod in transformer.modules():
        if type(mod).__name__ in names:
            for inner in mod.modules():
                if isinstance(inner, torch.nn.Linear):
                    inner.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    return lambda: counter["n"]


def run_family(fam: Family, steps: int, formats: tuple[str, ...], compile_check: bool) -> dict[str, Any]:
    import torch
    from tests.conftest import noise_image

    from kontext_studio.core.acceleration import FAST, LOSSLESS, STOCK, Accelerator, get_profile

    torch.set_num_threads(1)
    pipe = fam.build()
    image = noise_image(128, 128, seed=5)
    original = pipe.transformer
    t = time.perf_counter()
    full_latents, full_pixels = images_of(pipe, fam, image, steps)
    base_s = time.perf_counter() - t
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            if fmt == "int8":
                import importlib.util

                if importlib.util.find_spec("torchao") is None:
                    rows.append({"format": fmt, "skipped": "torchao not installed"})
                    continue
            q, types = quantized(original, fmt, Path(tmp))
            pipe.transformer = q
            try:
                lat, pix = images_of(pipe, fam, image, steps)
            finally:
                pipe.transformer = original
            stored, bf16 = linear_bytes(q)
            rows.append({"format": fmt, "psnr_db": round(psnr(pix, full_pixels), 2),
                         "latent_mad": float((lat.float() - full_latents.float()).abs().mean()),
                         "linear_bytes": stored, "bf16_bytes": bf16, "ratio_to_bf16": round(stored / bf16, 3),
                         "tensor_types": types})
    result: dict[str, Any] = {"family": fam.name, "steps": steps, "full_precision_s": round(base_s, 2),
                              "formats": rows}
    if compile_check:
        acc = Accelerator(pipe.transformer, "cpu", compile_on_cpu=True)
        acc.use(LOSSLESS)
        t = time.perf_counter()
        images_of(pipe, fam, image, steps)  # compiles
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        lat, pix = images_of(pipe, fam, image, steps)
        warm_s = time.perf_counter() - t
        diff = float((lat.float() - full_latents.float()).abs().max())
        result["compile"] = {"first_run_s": round(first_s, 1), "warm_run_s": round(warm_s, 2),
                             "latent_max_abs_diff": diff, "psnr_db": round(psnr(pix, full_pixels), 2),
                             "within_tolerance": diff <= COMPILE_LATENT_TOLERANCE}
        acc.use(STOCK)
    acc = Accelerator(pipe.transformer, "cpu")
    profile = get_profile(FAST.name, fam.name)
    report = acc.use(profile)
    if report.step_cache is None:
        result["step_cache_note"] = (f"none in the fast profile for {fam.name}" if profile.step_cache is None
                                     else "; ".join(report.fallbacks))
        acc.use(STOCK)
    else:
        calls = count_block_calls(pipe.transformer)
        before = calls()
        try:
            with acc.step_cache(report.step_cache, report.step_cache_threshold, steps):
                lat = fam.run(pipe, image, steps)
        except Exception as exc:  # a cache this model cannot take: report it, keep the other figures
            result["step_cache_note"] = f"{report.step_cache} failed: {exc.__class__.__name__}: {exc}"
            acc.use(STOCK)
            return result
        cached_calls = calls() - before
        acc.use(STOCK)
        before = calls()
        fam.run(pipe, image, steps)
        stock_calls = calls() - before
        result["step_cache"] = {"kind": report.step_cache, "threshold": report.step_cache_threshold,
                                "block_calls": cached_calls, "stock_block_calls": stock_calls,
                                "latent_mad": float((lat.float() - full_latents.float()).abs().mean())}
    return result


def print_family(r: dict[str, Any]) -> None:
    say()
    say(f"== {r['family']}: {r['steps']} steps, full precision (float32) run {r['full_precision_s']} s")
    say(f"  {'format':<7} {'PSNR dB':>8} {'latent MAD':>11} {'linear bytes':>13} {'x bf16':>7}  tensor types")
    for row in r["formats"]:
        if "skipped" in row:
            say(f"  {row['format']:<7} skipped: {row['skipped']}")
            continue
        types = ", ".join(f"{k} {v}" for k, v in sorted(row["tensor_types"].items()))
        say(f"  {row['format']:<7} {row['psnr_db']:>8.2f} {row['latent_mad']:>11.5f} {row['linear_bytes']:>13,} "
            f"{row['ratio_to_bf16']:>7.3f}  {types}")
    if "compile" in r:
        c = r["compile"]
        say(f"  compile (lossless profile, forced on CPU): max |latent diff| {c['latent_max_abs_diff']:.2e} "
            f"({'within' if c['within_tolerance'] else 'OUTSIDE'} {COMPILE_LATENT_TOLERANCE:g}), PSNR "
            f"{c['psnr_db']} dB; first run {c['first_run_s']} s (compiling), then {c['warm_run_s']} s")
    if "step_cache" in r:
        s = r["step_cache"]
        say(f"  step cache {s['kind']} (threshold {s['threshold']}): {s['block_calls']} linear-layer calls in the "
            f"blocks vs {s['stock_block_calls']} stock; latent MAD {s['latent_mad']:.5f} (random weights: the "
            "mechanism, not a quality claim)")
    if "step_cache_note" in r:
        say(f"  step cache: {r['step_cache_note']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--families", default="", help="comma-separated subset (default: every one available)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--narrow", action="store_true", help="keep the tiny models' 32-wide transformers")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile check (slow on a CPU)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.conftest's test image
    from kontext_studio.bootstrap import quiet_third_party_logs

    quiet_third_party_logs()
    available = families(args.narrow)
    wanted = [f for f in args.families.split(",") if f] or list(available)
    results = []
    for name in wanted:
        if name not in available:
            say(f"{name}: no tiny pipeline in this checkout; skipped")
            continue
        say(f"running {name} ({args.steps} steps, {'32' if args.narrow else '256'} wide)...")
        result = run_family(available[name], args.steps, tuple(args.formats.split(",")), not args.no_compile)
        results.append(result)
        if not args.json:
            print_family(result)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
