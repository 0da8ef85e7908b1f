"""The first edit after a start, with and without the persisted compile cache (tiny models, on the CPU).

The ``lossless`` and ``fast`` profiles compile the transformer's repeated blocks. The composition root points
torch.compile's caches at ``KONTEXT_HOME/cache/torch_compile`` (``bootstrap.compile_cache_dir``) and keeps
compiled graphs there (``acceleration.keep_compiled_graphs``), so a restarted server does not compile again.
This script starts a fresh Python process twice on the same empty home folder — the first compiles into the
cache, the second reads it — and prints, for each start: the first stock edit, the first compiled edit
(compilation included) and the next compiled edit.

    PYTHONPATH=src:. .venv/bin/python benchmarks/compile_cache.py [--families klein,kontext] [--steps 4]

Compilation is a GPU speed-up: on the CPU the figures show what the cache saves at start, not a speed-up of
the edit itself (``benchmarks/gpu_speed.py`` times that on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(family: str, steps: int, home: str) -> dict[str, float]:
    """One start: point the caches at ``home`` before torch loads, then time three edits."""
    from kontext_studio.bootstrap import compile_cache_dir, quiet_third_party_logs

    compile_cache_dir(Path(home))
    quiet_third_party_logs()
    import torch
    from benchmarks.quant_quality import families
    from tests.conftest import noise_image

    from kontext_studio.core.acceleration import LOSSLESS, Accelerator, keep_compiled_graphs

    keep_compiled_graphs()
    torch.set_num_threads(1)
    fam = families(narrow=True)[family]
    pipe = fam.build()
    image = noise_image(128, 128, seed=5)

    def timed() -> float:
        t = time.perf_counter()
        fam.run(pipe, image, steps)
        return time.perf_counter() - t

    stock_first = timed()
    Accelerator(pipe.transformer, "cpu", compile_on_cpu=True).use(LOSSLESS)
    compiled_first = timed()
    compiled_next = timed()
    return {"stock_first_s": stock_first, "compiled_first_s": compiled_first, "compiled_next_s": compiled_next}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="klein,kontext")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--home", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.home)))
        return 0
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root), env.get("PYTHONPATH", "")])
    results = []
    for family in [f for f in args.families.split(",") if f]:
        with tempfile.TemporaryDirectory() as home:
            runs = []
            for label in ("empty cache", "cache from the first start"):
                out = subprocess.run([sys.executable, __file__, "--child", family, "--home", home,
                                      "--steps", str(args.steps)], env=env, capture_output=True, text=True,
                                     check=True)
                runs.append({"start": label, **json.loads(out.stdout.strip().splitlines()[-1])})
            cached = sum(1 for _ in (Path(home) / "cache" / "torch_compile").rglob("*") if _.is_file())
        results.append({"family": family, "steps": args.steps, "runs": runs, "cache_files": cached})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"== {r['family']} ({r['steps']} steps, tiny model, CPU; {r['cache_files']} files in the cache)")
        print(f"  {'start':<28} {'stock 1st':>10} {'compiled 1st':>13} {'compiled 2nd':>13}")
        for run in r["runs"]:
            print(f"  {run['start']:<28} {run['stock_first_s']:>9.2f}s {run['compiled_first_s']:>12.2f}s "
                  f"{run['compiled_next_s']:>12.2f}s")
        cold, warm = (run["compiled_first_s"] for run in r["runs"])
        print(f"  first compiled edit after a restart: {warm:.2f} s instead of {cold:.2f} s ({cold / warm:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
