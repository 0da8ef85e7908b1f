#!/usr/bin/env python
"""What signing outputs with content credentials costs. Prints figures; not a test.

For each format (PNG, JPEG, WebP) and size, a photo-like picture is written the way outputs are (recipe and
XMP embedded, ``save_image_with_recipe``), then signed with a C2PA manifest naming one input image as its
parent (``sign_output``), then read back and validated (``inspect_provenance``). Each phase is timed
(median of ``--repeats``), interleaved per repeat, and the signing time is given as a ratio of the plain
save it follows. Sizes grow by the manifest's bytes only: the pixels are untouched.

A second row signs a tool output whose parent is an already-signed output (the chain case: the parent's
manifest is read, validated and embedded as an ingredient).

Usage:
    .venv/bin/python benchmarks/content_credentials.py [--repeats 15] [--sizes 512,1024] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kontext_studio.core.provenance import (
    ContentClaim,
    ContentCredentials,
    CredentialConfig,
    sign_output,
)
from kontext_studio.core.provenance.inspect import inspect_provenance
from kontext_studio.core.recipe import save_image_with_recipe

SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def photo(side: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photograph, not like a flat test card."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([x * 255 / side, y * 255 / side, (x + y) * 127 / side], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8"), "RGB")


def ms(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kontext-c2pa-bench-"))
    creds = ContentCredentials(CredentialConfig(folder=tmp / "credentials"))
    t = time.perf_counter()
    creds.identity()
    first_start_ms = (time.perf_counter() - t) * 1000
    recipe = {"instruction": "put it on a beach at sunset", "seed": 7, "tier": "dev",
              "model": {"source": "black-forest-labs/FLUX.1-Kontext-dev", "kind": "hub"}}
    claim = ContentClaim(action="c2pa.edited", model="black-forest-labs/FLUX.1-Kontext-dev", ai=True,
                         description=recipe["instruction"])
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        source = io.BytesIO()
        photo(side, 1).save(source, format="JPEG", quality=92)
        img = photo(side)
        for fmt in ("png", "jpeg", "webp"):
            path = tmp / f"out-{side}{SUFFIX[fmt]}"
            save_ms, sign_ms, read_ms = [], [], []
            signed = None
            for _ in range(args.repeats):  # interleaved: save, sign, read on the same machine state
                a, _ = ms(lambda p=path, im=img: save_image_with_recipe(im, p, recipe), 1)
                data = path.read_bytes()
                b, signed = ms(lambda d=data, f=fmt, src=source.getvalue(): sign_output(d, f, claim, [src], creds), 1)
                c, report = ms(lambda s=signed: inspect_provenance(s.data, creds), 1)
                assert report.credentials == "trusted", report.summary
                save_ms.append(a)
                sign_ms.append(b)
                read_ms.append(c)
            assert signed is not None
            # The chain: a tool output whose parent is this signed output.
            tool_img = io.BytesIO()
            Image.open(io.BytesIO(signed.data)).resize((side // 2, side // 2)).save(tool_img, format=PIL_FORMAT[fmt])
            chain_ms, _ = ms(lambda t=tool_img.getvalue(), f=fmt, s=signed: sign_output(
                t, f, ContentClaim(action="c2pa.resized", ai=False, tool="resize"), [s.data], creds), args.repeats)
            rows.append({"format": fmt, "size": f"{side}x{side}", "save_ms": statistics.median(save_ms),
                         "sign_ms": statistics.median(sign_ms), "verify_ms": statistics.median(read_ms),
                         "sign_vs_save": statistics.median(sign_ms) / statistics.median(save_ms),
                         "chain_sign_ms": chain_ms, "bytes_plain": len(data),
                         "bytes_added": len(signed.data) - len(data)})
    if args.json:
        print(json.dumps({"first_start_ms": first_start_ms, "rows": rows}, indent=2))
        return
    print(f"first start (local CA + signing certificate): {first_start_ms:.1f} ms")
    print(f"{'format':6} {'size':>9} {'save ms':>8} {'sign ms':>8} {'sign/save':>9} {'verify ms':>9} "
          f"{'chain sign ms':>13} {'+bytes':>7}")
    for r in rows:
        print(f"{r['format']:6} {r['size']:>9} {r['save_ms']:8.1f} {r['sign_ms']:8.1f} {r['sign_vs_save']:9.2f} "
              f"{r['verify_ms']:9.1f} {r['chain_sign_ms']:13.1f} {r['bytes_added']:7d}")


if __name__ == "__main__":
    main()
