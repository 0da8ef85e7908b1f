"""Synthetic before/after datasets with a rule that can be learned: for tests, benchmarks and dry runs.

Each source is a random arrangement of coloured shapes on a gradient; its target applies one fixed rule
(invert the colours, swap red and blue, or mirror left-right). A trainer that works lowers the loss on
these and moves held-out edits toward their targets; one that does not, does not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

RULES: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "invert": ("invert the colours", ImageOps.invert),
    "swap": ("swap the red and blue channels", lambda im: Image.merge("RGB", im.split()[::-1])),
    "mirror": ("mirror the picture left to right", ImageOps.mirror),
}


def shapes_picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A deterministic picture: a two-colour gradient with 3-6 filled rectangles and ellipses."""
    rng = random.Random(seed)
    w, h = size
    a = [rng.randrange(256) for _ in range(3)]
    b = [rng.randrange(256) for _ in range(3)]
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        f = y / max(1, h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(round(a[i] * (1 - f) + b[i] * f) for i in range(3)))
    for _ in range(rng.randint(3, 6)):
        x0, y0 = rng.randrange(w * 3 // 4), rng.randrange(h * 3 // 4)
        x1, y1 = x0 + rng.randint(w // 8, w // 2), y0 + rng.randint(h // 8, h // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=colour)
    return img


def make_pairs(folder: str | Path, count: int, rule: str = "invert", size: tuple[int, int] = (128, 128),
               seed: int = 0, layout: str = "ai-toolkit") -> Path:
    """Write ``count`` before/after pairs following ``rule``.

    Args:
        folder: created if missing.
        count: number of pairs.
        rule: a key of ``RULES``.
        size: (width, height) of every picture.
        seed: picture seed (pair i uses seed + i).
        layout: ``ai-toolkit`` (targets + .txt in ``folder``, sources in ``folder/control``) or ``manifest``
            (``before/``, ``after/`` and ``manifest.jsonl``).

    Returns:
        The dataset path to give the trainer (the folder).
    """
    instruction, transform = RULES[rule]
    root = Path(folder)
    if layout == "ai-toolkit":
        src_dir, tgt_dir = root / "control", root
    else:
        src_dir, tgt_dir = root / "before", root / "after"
    src_dir.mkdir(parents=True, exist_ok=True)
    tgt_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"pair{i:03d}.png"
        src = shapes_picture(size, seed + i)
        src.save(src_dir / name)
        transform(src).save(tgt_dir / name)
        if layout == "ai-toolkit":
            (tgt_dir / name).with_suffix(".txt").write_text(instruction)
        else:
            rows.append({"source": f"before/{name}", "target": f"after/{name}", "instruction": instruction})
    if rows:
        (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
