#!/usr/bin/env python
"""Every local model family: engine overhead against its stock diffusers pipeline, and model switch time.
Prints figures; not a test. CPU, tiny random-weight models of each family, nothing downloaded.

1. Overhead per family (kontext, klein, flux2, qwen): the same edit (same 128x128 image, which is a
   preferred size of the tiny models, same seed and steps) through the family's stock pipeline and through
   ``Editor.edit``, interleaved; median wall time and process CPU time per edit. The engine runs with its
   prompt and reference caches cleared before every call (the same work as stock). Pixel equality with
   stock is checked on every run.
2. Model switch: a warm pool of one model alternating Kontext and klein (every edit loads its model: the
   switch cost) against a pool of two (both stay warm), median seconds per edit.

Usage:
    .venv/bin/python benchmarks/models.py [--steps 4] [--repeats 7] [--families kontext,klein,flux2,qwen] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

PROMPT = "put it on a beach at sunset"
KEYS = {"kontext": "dev", "klein": "klein-4b", "flux2": "flux2-dev", "qwen": "qwen-edit"}
_human = True


def say(line: str = "") -> None:
    if _human:
        print(line, flush=True)


def timed(fn: Any) -> tuple[float, float, Any]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def stock_call(family: str, pipe: Any, image: Any, steps: int, seed: int, guidance: float) -> Any:
    import torch

    from kontext_studio.core.backends.diffusers_qwen import NEGATIVE_PROMPT, stock_sizes

    args: dict[str, Any] = {"prompt": PROMPT, "height": 128, "width": 128, "num_inference_steps": steps,
                            "generator": torch.Generator().manual_seed(seed)}
    context: Any = contextlib.nullcontext()
    if family == "kontext":
        args.update(image=image, max_area=128 * 128, _auto_resize=False, guidance_scale=guidance)
    elif family == "qwen":
        args.update(image=[image], negative_prompt=NEGATIVE_PROMPT, true_cfg_scale=guidance)
        context = stock_sizes(128)
    else:
        args.update(image=[image], guidance_scale=guidance)
    with context:
        return pipe(**args).images[0]


def load_stock(family: str, folder: Path) -> Any:
    import diffusers

    from kontext_studio.core.backends.qwen_processor import load_processor
    from kontext_studio.core.catalogue import get_model

    cls = getattr(diffusers, get_model(KEYS[family]).pipeline or "")
    extra = {}
    if family == "qwen" and (processor := load_processor(folder)) is not None:
        extra = {"processor": processor}
    pipe = cls.from_pretrained(folder, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clear_caches(backend: Any) -> None:
    for name in ("_prompts", "_references"):
        if hasattr(backend, name):
            getattr(backend, name).clear()
    pipe = getattr(backend, "pipe", None)
    if hasattr(pipe, "clear_caches"):
        pipe.clear_caches()


def overhead(family: str, folder: Path, steps: int, repeats: int) -> dict[str, Any]:
    import numpy as np
    from tests.conftest import noise_image

    from kontext_studio.bootstrap import build_editor
    from kontext_studio.core.types import EditRequest, Reference
    from kontext_studio.settings import Settings

    key = KEYS[family]
    settings = (Settings(model=str(folder), allow_download=False) if family == "kontext" else
                Settings(allow_download=False, weights=((key, str(folder)),)))
    editor = build_editor(settings)
    editor.fidelity = None
    backend = editor.backend_for(key)
    image = noise_image(128, 128, seed=1)
    request = EditRequest([Reference(image)], PROMPT, model=key, seed=3, steps=steps, geometry="native",
                          pixel_lock="off", check_references=False)
    stock = load_stock(family, folder)
    guidance = float(request.entry().guidance or 1.0)
    editor.edit(request)  # warm both (first calls allocate)
    stock_call(family, stock, image, steps, 3, guidance)
    rows: dict[str, list[float]] = {"stock_wall": [], "stock_cpu": [], "engine_wall": [], "engine_cpu": []}
    identical = True
    for _ in range(repeats):
        w, c, expected = timed(lambda: stock_call(family, stock, image, steps, 3, guidance))
        rows["stock_wall"].append(w)
        rows["stock_cpu"].append(c)
        clear_caches(backend)
        w, c, ours = timed(lambda: editor.edit(request))
        rows["engine_wall"].append(w)
        rows["engine_cpu"].append(c)
        identical &= bool(np.array_equal(np.asarray(expected), np.asarray(ours.image)))
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"family": family, "model": key, "steps": steps, "repeats": repeats,
            **{k: round(v, 4) for k, v in med.items()},
            "overhead_wall": round(med["engine_wall"] / med["stock_wall"] - 1, 4),
            "overhead_cpu": round(med["engine_cpu"] / med["stock_cpu"] - 1, 4),
            "fastest_overhead": round(min(rows["engine_wall"]) / min(rows["stock_wall"]) - 1, 4),
            "identical_pixels": identical}


def switching(folders: dict[str, Path], steps: int, repeats: int) -> dict[str, Any]:
    from tests.conftest import noise_image

    from kontext_studio.bootstrap import build_editor
    from kontext_studio.core.types import EditRequest, Reference
    from kontext_studio.settings import Settings

    image = noise_image(128, 128, seed=1)
    out: dict[str, Any] = {}
    for warm in (1, 2):
        settings = Settings(model=str(folders["kontext"]), allow_download=False, warm_models=warm,
                            weights=(("klein-4b", str(folders["klein"])),))
        editor = build_editor(settings)
        editor.fidelity = None
        times: list[float] = []
        for i in range(2 * repeats + 2):
            key = "dev" if i % 2 == 0 else "klein-4b"
            req = EditRequest([Reference(image)], PROMPT, model=key, seed=3, steps=steps, pixel_lock="off",
                              check_references=False)
            w, _c, _ = timed(lambda req=req, editor=editor: editor.edit(req))
            if i >= 2:  # the first of each model loads it in both setups
                times.append(w)
        out[f"warm_{warm}"] = {"median_s_per_edit": round(statistics.median(times), 4),
                               "evictions": editor.warm.evictions}
    out["switch_cost_s"] = round(out["warm_1"]["median_s_per_edit"] - out["warm_2"]["median_s_per_edit"], 4)
    return out


def main() -> None:
    global _human
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--families", default="kontext,klein,flux2,qwen")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _human = not args.json
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from kontext_studio.bootstrap import quiet_third_party_logs
    from kontext_studio.testing.tiny_model import build_tiny_model

    torch.set_num_threads(args.threads)
    quiet_third_party_logs()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    report: dict[str, Any] = {"device": "cpu", "threads": args.threads, "families": []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {f: build_tiny_model(Path(tmp) / f, family=f) for f in {*families, "kontext", "klein"}}
        say(f"engine vs stock pipeline, tiny models, {args.steps} steps, median of {args.repeats} interleaved runs")
        say(f"{'family':8} {'stock s':>8} {'engine s':>9} {'overhead':>9} {'cpu ovh':>8} {'fastest':>8} identical")
        for family in families:
            row = overhead(family, folders[family], args.steps, args.repeats)
            report["families"].append(row)
            say(f"{family:8} {row['stock_wall']:8.3f} {row['engine_wall']:9.3f} {row['overhead_wall']:+9.1%} "
                f"{row['overhead_cpu']:+8.1%} {row['fastest_overhead']:+8.1%} {row['identical_pixels']}")
        report["switching"] = switching(folders, args.steps, max(2, args.repeats // 2))
        sw = report["switching"]
        say(f"\nalternating dev and klein-4b: one warm model {sw['warm_1']['median_s_per_edit']:.3f} s/edit "
            f"({sw['warm_1']['evictions']} evictions), two warm {sw['warm_2']['median_s_per_edit']:.3f} s/edit "
            f"({sw['warm_2']['evictions']} evictions): a switch costs {sw['switch_cost_s']:.3f} s on the tiny models")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
