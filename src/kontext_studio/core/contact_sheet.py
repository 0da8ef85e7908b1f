"""Labelled contact sheets for a series of edits."""

from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw, ImageFont

CELL = 320
LABEL_LINES = 3
LINE_HEIGHT = 16
PAD = 8


def contact_sheet(images: list[Image.Image], labels: list[str], columns: int | None = None,
                  cell: int = CELL) -> Image.Image:
    """A grid of thumbnails (aspect kept, centred in square cells) with a wrapped label under each.

    Args:
        images: the pictures, in order.
        labels: one text per picture (e.g. "3 · seed 42 · on a beach at sunset").
        columns: grid width; defaults to about a square grid.
        cell: thumbnail box side in pixels.

    Returns:
        The RGB sheet.
    """
    n = len(images)
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    label_h = LABEL_LINES * LINE_HEIGHT + PAD
    sheet = Image.new("RGB", (cols * (cell + PAD) + PAD, rows * (cell + label_h + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    chars = max(10, cell // 7)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        r, c = divmod(i, cols)
        x0 = PAD + c * (cell + PAD)
        y0 = PAD + r * (cell + label_h + PAD)
        thumb = img.copy()
        thumb.thumbnail((cell, cell))
        sheet.paste(thumb, (x0 + (cell - thumb.width) // 2, y0 + (cell - thumb.height) // 2))
        draw.rectangle([x0 - 1, y0 - 1, x0 + cell, y0 + cell], outline=(200, 200, 200))
        lines = textwrap.wrap(label, chars)[:LABEL_LINES]
        for k, line in enumerate(lines):
            draw.text((x0, y0 + cell + 4 + k * LINE_HEIGHT), line, fill=(20, 20, 20), font=font)
    return sheet
