"""Free editing tools on this machine's CPU: seconds per megapixel and peak memory, one process per tool.

Every tool runs on a real photograph (scikit-image's astronaut, resized to the size in the table), first cold
(model load included), then warm ``--repeat`` times; the warm median is reported per input megapixel. Memory
is the process's peak resident set above what it held after importing the tools and decoding the photo
(models and buffers the tool allocated). A Lanczos resize of the same picture is the reference row, so the
"x resize" column compares each tool with the cheapest thing a picture editor does.

    python benchmarks/tools.py                 # every tool, markdown table
    python benchmarks/tools.py --only upscale  # one tool (its variants)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# (label, tool, params, input side in px, number of inputs, mask?)
CASES: list[tuple[str, str, dict[str, object], int, int, bool]] = [
    ("reference: Lanczos resize 50%", "resize", {"percent": 50}, 1024, 1, False),
    ("remove-background (best)", "remove-background", {}, 1024, 1, False),
    ("remove-background (fast)", "remove-background", {"model": "fast"}, 1024, 1, False),
    ("replace-background (blur)", "replace-background", {"background": "blur"}, 1024, 1, False),
    ("portrait-blur", "portrait-blur", {}, 1024, 1, False),
    ("upscale x4 quality (Real-ESRGAN)", "upscale", {"scale": 4, "mode": "quality"}, 128, 1, False),
    ("upscale x2 fast (animevideov3)", "upscale", {"scale": 2, "mode": "fast"}, 256, 1, False),
    ("upscale x4 photo (Lanczos)", "upscale", {"scale": 4, "mode": "photo"}, 512, 1, False),
    ("denoise (nlmeans, auto)", "denoise", {}, 1024, 1, False),
    ("denoise (tv)", "denoise", {"method": "tv", "strength": 15}, 1024, 1, False),
    ("sharpen (unsharp)", "sharpen", {}, 1024, 1, False),
    ("sharpen (deblur, Wiener)", "sharpen", {"method": "deblur"}, 1024, 1, False),
    ("auto-enhance", "auto-enhance", {}, 1024, 1, False),
    ("erase (PatchMatch, 3% mask)", "erase", {}, 1024, 1, True),
    ("erase (fast, 3% mask)", "erase", {"method": "fast"}, 1024, 1, True),
    ("crop (smart, faces)", "crop", {"aspect": "4:5"}, 1024, 1, False),
    ("rotate (straighten)", "rotate", {"straighten": True}, 1024, 1, False),
    ("resize (to 2000 px)", "resize", {"width": 2000}, 1024, 1, False),
    ("convert (AVIF q80)", "convert", {"format": "avif", "quality": 80}, 1024, 1, False),
    ("convert (WebP q90)", "convert", {"format": "webp"}, 1024, 1, False),
    ("compress (JPEG to 100 KB)", "compress", {"target_kb": 100}, 1024, 1, False),
    ("strip-metadata", "strip-metadata", {}, 1024, 1, False),
    ("color-adjust", "color-adjust", {"temperature": 30, "saturation": 20}, 1024, 1, False),
    ("add-text (tiled watermark)", "add-text", {"text": "(c) Studio", "position": "tiled"}, 1024, 1, False),
    ("collage (4 photos)", "collage", {}, 512, 4, False),
    ("headshot", "headshot", {}, 1024, 1, False),
    ("info (with faces)", "info", {}, 1024, 1, False),
    ("inspect", "inspect", {}, 1024, 1, False),
]

CHILD = r"""
import io, json, resource, statistics, sys, time
from PIL import Image
from skimage import data
from kontext_studio.tools import run_tool
tool, params, side, count, with_mask, repeat = json.loads(sys.argv[1])
img = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
buf = io.BytesIO(); img.save(buf, "JPEG", quality=92); src = buf.getvalue()
mask = None
if with_mask:
    mask = Image.new("L", img.size, 0); s = side // 6
    mask.paste(255, (side // 2, side // 8, side // 2 + s, side // 8 + s))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); run_tool(tool, [src] * count, params, mask=mask); cold = time.perf_counter() - t
warm = []
for _ in range(repeat):
    t = time.perf_counter(); run_tool(tool, [src] * count, params, mask=mask); warm.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"cold": cold, "warm": statistics.median(warm), "mp": side * side * count / 1e6,
                  "peak_mb": (peak - base) / 1024}))
"""


def run_case(tool: str, params: dict[str, object], side: int, count: int, mask: bool, repeat: int) -> dict[str, float]:
    arg = json.dumps([tool, params, side, count, mask, repeat])
    done = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2, help="warm runs per tool (median reported)")
    ap.add_argument("--only", help="run only the cases whose tool name contains this")
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c[1] or (c[1] == "resize" and "reference" in c[0])]
    print(f"CPU cores: {os.cpu_count()}; photo: scikit-image astronaut; {args.repeat} warm runs each\n")
    print("| tool | input | cold s | warm s | s / MP | x resize | peak MB above baseline |")
    print("|---|---|---|---|---|---|---|")
    reference: float | None = None
    started = time.perf_counter()
    for label, tool, params, side, count, mask in cases:
        try:
            r = run_case(tool, params, side, count, mask, args.repeat)
        except RuntimeError as exc:
            print(f"| {label} | {side}x{side} | failed: {exc} | | | | |")
            continue
        per_mp = r["warm"] / r["mp"]
        if reference is None:
            reference = per_mp
        ratio = per_mp / reference if reference else float("nan")
        size = f"{count}x {side}x{side}" if count > 1 else f"{side}x{side}"
        print(f"| {label} | {size} ({r['mp']:.2f} MP) | {r['cold']:.2f} | {r['warm']:.3f} | {per_mp:.3f} | "
              f"{ratio:.0f} | {r['peak_mb']:.0f} |", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
