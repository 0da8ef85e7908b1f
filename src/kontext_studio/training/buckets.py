"""Aspect-ratio buckets: each pair trains at the preferred Kontext size closest to its shape.

The preferred sizes are the ~1 MP list the model was trained on, scaled to the chosen training size
(``resolution`` 512 gives about 0.25 MP sizes, multiples of 16). A pair is resized to cover its bucket and
centre-cropped, so nothing is stretched; source and target get exactly the same resize and crop.
"""

from __future__ import annotations

from collections import defaultdict

from PIL import Image

from kontext_studio.core.resolution import nearest_preferred


def bucket_for(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The (width, height) a picture of ``size`` trains at.

    Args:
        size: (width, height) of the picture.
        resolution: the training size (side of the square bucket: 512, 768, 1024; 128 for the tiny model).

    Returns:
        A preferred size for that resolution, multiples of 16.
    """
    w, h = size
    return nearest_preferred(w / h, resolution)


def group(sizes: list[tuple[int, int]], resolution: int) -> dict[tuple[int, int], list[int]]:
    """Indices of ``sizes`` grouped by bucket (a batch is always drawn from one bucket)."""
    out: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(sizes):
        out[bucket_for(s, resolution)].append(i)
    return dict(out)


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize ``image`` to cover ``bucket`` (aspect kept) and cut the centre out: no stretching.

    Args:
        image: the picture.
        bucket: (width, height) to produce.

    Returns:
        An RGB picture of exactly ``bucket``.
    """
    bw, bh = bucket
    img = image.convert("RGB")
    scale = max(bw / img.width, bh / img.height)
    w, h = max(bw, round(img.width * scale)), max(bh, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - bw) // 2, (h - bh) // 2
    return img.crop((left, top, left + bw, top + bh))
