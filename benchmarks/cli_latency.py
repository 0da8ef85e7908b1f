"""How long ``kontext`` takes from invocation to its answer, this checkout against an earlier commit.

Three figures, each the median wall time of fresh processes (runs of the two versions interleaved, so a
busy machine slows both alike), with the CPU seconds each process used beside it (a machine shared with other
work inflates wall time, not CPU time; the load average is printed):

  (a) the error for a missing input file   kontext edit missing.jpg "make it snowy" -o out.png
  (b) the help                             kontext --help
  (c) a finished 4-step edit on the tiny random-weight model (built here with ``kontext build-tiny-model``)

"before" runs the package source of ``--before-commit`` (checked out into a temporary git worktree);
"after" runs this checkout's ``src``. Both use the same interpreter, libraries, model and picture, and
caches are warmed by one unmeasured edit per version first. Nothing is downloaded.

    .venv/bin/python benchmarks/cli_latency.py                 # 5 runs of (a) and (b), 3 of (c)
    .venv/bin/python benchmarks/cli_latency.py --repeats 3 --edit-repeats 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_FAST_S = 1.5  # (a) and (b)
TARGET_EDIT_RATIO = 0.5  # (c) after / before


def run(src: Path, args: list[str], env: dict[str, str]) -> tuple[float, int, str, float]:
    """Wall time of one ``python -m kontext_studio.cli.main ARGS`` with ``src`` first on the path, its exit
    code, its stderr and the CPU seconds it used (user + system: what a busy machine does not inflate)."""
    full_env = {**env, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kontext_studio.cli.main", *args], capture_output=True, text=True,
                          env=full_env, timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, done.returncode, done.stderr, cpu


def checkout(commit: str, where: Path) -> Path:
    """A detached worktree of ``commit``; returns its ``src`` folder."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), commit], check=True,
                   capture_output=True)
    return where / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-commit", default="b89a521", help="commit measured as 'before' (default b89a521)")
    parser.add_argument("--before-src", type=Path, help="use this package source as 'before' instead of a checkout")
    parser.add_argument("--repeats", type=int, default=5, help="runs of (a) and (b) per version")
    parser.add_argument("--edit-repeats", type=int, default=3, help="runs of (c) per version")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    opts = parser.parse_args()

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="kontext-cli-latency-") as tmp_name:
        tmp = Path(tmp_name)
        after_src = ROOT / "src"
        before_src = opts.before_src or checkout(opts.before_commit, tmp / "before")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "KONTEXT_HOME": str(tmp / "home"), "COLUMNS": "100"}
        env.pop("KONTEXT_MODEL", None)
        model = tmp / "tiny-model"
        _, code, err, _ = run(after_src, ["build-tiny-model", str(model)], env)
        if code != 0:
            raise SystemExit(f"build-tiny-model failed:\n{err}")
        photo = tmp / "photo.png"
        Image.radial_gradient("L").convert("RGB").resize((640, 480)).save(photo)
        cases = {
            "a_missing_file": ["edit", str(tmp / "missing.jpg"), "make it snowy", "-o", str(tmp / "a.png")],
            "b_help": ["--help"],
            "c_edit_4_steps": ["edit", str(photo), "put it on a beach at sunset", "-o", str(tmp / "c.png"),
                               "--model", str(model), "--steps", str(opts.steps), "--seed", "7"],
        }
        expected = {"a_missing_file": 2, "b_help": 0, "c_edit_4_steps": 0}
        versions = {"before": before_src, "after": after_src}
        for src in versions.values():  # warm the file cache and the weights fingerprint cache alike
            run(src, cases["c_edit_4_steps"], env)
        times: dict[str, dict[str, list[float]]] = {c: {v: [] for v in versions} for c in cases}
        cpu: dict[str, dict[str, list[float]]] = {c: {v: [] for v in versions} for c in cases}
        load_before = os.getloadavg()[0]
        for case, args in cases.items():
            repeats = opts.edit_repeats if case.startswith("c_") else opts.repeats
            for _ in range(repeats):
                for version, src in versions.items():
                    seconds, code, err, used = run(src, args, env)
                    if code != expected[case]:
                        raise SystemExit(f"{version} {case} exited {code}, expected {expected[case]}:\n{err}")
                    times[case][version].append(seconds)
                    cpu[case][version].append(used)
        load_after = os.getloadavg()[0]
        if opts.before_src is None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "before")],
                           capture_output=True)

    report: dict[str, dict[str, Any]] = {
        case: {v: round(statistics.median(t), 3) for v, t in by.items()} | {
            "runs": len(by["after"]),
            "ratio": round(statistics.median(by["after"]) / statistics.median(by["before"]), 3),
            "cpu_before": round(statistics.median(cpu[case]["before"]), 3),
            "cpu_after": round(statistics.median(cpu[case]["after"]), 3)}
        for case, by in times.items()}
    report["machine"] = {"cpus": os.cpu_count(), "load_average_1min": [round(load_before, 2), round(load_after, 2)]}
    report["targets"] = {
        "a_under_1.5_s": report["a_missing_file"]["after"] < TARGET_FAST_S,
        "b_under_1.5_s": report["b_help"]["after"] < TARGET_FAST_S,
        "c_under_half": report["c_edit_4_steps"]["ratio"] < TARGET_EDIT_RATIO,
    }
    if opts.json:
        print(json.dumps(report, indent=2))
        return
    before_label = str(opts.before_src) if opts.before_src else opts.before_commit
    print(f"kontext CLI latency, median seconds (before = {before_label}, after = this checkout); "
          f"{report['machine']['cpus']} CPUs, 1-min load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'case':<34}{'before':>9}{'after':>9}{'after/before':>14}{'cpu before':>12}{'cpu after':>11}  runs")
    names = {"a_missing_file": "(a) error for a missing file", "b_help": "(b) kontext --help",
             "c_edit_4_steps": f"(c) {opts.steps}-step edit, tiny model"}
    for case, name in names.items():
        r = report[case]
        print(f"{name:<34}{r['before']:>9.2f}{r['after']:>9.2f}{r['ratio']:>14.2f}{r['cpu_before']:>12.2f}"
              f"{r['cpu_after']:>11.2f}  {r['runs']}")
    t = report["targets"]
    print(f"targets: (a) < {TARGET_FAST_S} s {'met' if t['a_under_1.5_s'] else 'MISSED'}; "
          f"(b) < {TARGET_FAST_S} s {'met' if t['b_under_1.5_s'] else 'MISSED'}; "
          f"(c) < half of before {'met' if t['c_under_half'] else 'MISSED'}")


if __name__ == "__main__":
    main()
