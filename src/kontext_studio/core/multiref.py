"""Several references: the stitch canvas and the position-grid placements for offset / index.

FLUX.1 Kontext [dev] was trained with one reference. Three approximations are offered:

* ``stitch`` (default): the pictures are pasted side by side into one image (in one row while that
  stays within the model's 7:3 aspect range, otherwise in the row layout closest to square), which is
  then treated exactly like a single reference. Most robust, and the token count stays that of one image.
* ``offset``: each picture is encoded on its own at its preferred size; all use position index 1 and
  are tiled left to right on the row/column grid, each shifted by the widths before it (mixed sizes
  allowed). Costs one image's tokens per reference.
* ``index``: each picture is encoded on its own with its own position index (1, 2, 3, ...), all
  starting at row 0, column 0. Only helps models trained for it; offered for LoRAs that were.

With a single reference every strategy gives index 1 at (0, 0): the stock pipeline's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from kontext_studio.core.types import Strategy

STITCH_BACKGROUND = (255, 255, 255)
MAX_ROW_ASPECT = 7 / 3  # the widest preferred size; a wider canvas would be squeezed


@dataclass(frozen=True)
class Placement:
    """Where one reference's tokens sit: position index and the (row, col) of its top-left token."""

    index: int
    row: int
    col: int


def placements(token_sizes: list[tuple[int, int]], strategy: Strategy) -> list[Placement]:
    """Positions for encoded references given each one's size in tokens (width, height).

    Args:
        token_sizes: (width, height) of each reference in 2x2-patch tokens.
        strategy: offset or index (stitch encodes one canvas, so it has a single placement).

    Returns:
        One Placement per reference.
    """
    if strategy is Strategy.INDEX:
        return [Placement(index=k + 1, row=0, col=0) for k in range(len(token_sizes))]
    out, col = [], 0
    for w, _h in token_sizes:
        out.append(Placement(index=1, row=0, col=col))
        col += w
    return out


def _rows(widths: list[int], columns: int) -> list[list[int]]:
    return [list(range(i, min(i + columns, len(widths)))) for i in range(0, len(widths), columns)]


def stitch(images: list[Image.Image], row_height: int = 1024) -> Image.Image:
    """Paste images into one canvas at equal height: one row when it is at most 7:3, else the rows
    layout closest to a square.

    Args:
        images: the references, in order (the first is placed top-left).
        row_height: height each picture is scaled to before pasting (aspect kept, never cropped).

    Returns:
        The RGB canvas; empty space is white.
    """
    if len(images) == 1:
        return images[0]
    scaled = [im.resize((max(1, round(im.width * row_height / im.height)), row_height), Image.Resampling.LANCZOS)
              for im in images]  # fmt: skip
    widths = [im.width for im in scaled]
    if sum(widths) <= MAX_ROW_ASPECT * row_height:  # one row fits the model's aspect range: no empty space
        rows = [list(range(len(scaled)))]
        return _paste(scaled, rows, sum(widths), row_height)
    best = None
    for columns in range(1, len(scaled) + 1):
        rows = _rows(widths, columns)
        canvas_w = max(sum(widths[i] for i in row) for row in rows)
        canvas_h = row_height * len(rows)
        score = abs(math.log(canvas_w / canvas_h))
        if best is None or score < best[0] - 1e-9:
            best = (score, rows, canvas_w, canvas_h)
    assert best is not None
    _, rows, canvas_w, _canvas_h = best
    return _paste(scaled, rows, canvas_w, row_height)


def _paste(scaled: list[Image.Image], rows: list[list[int]], canvas_w: int, row_height: int) -> Image.Image:
    widths = [im.width for im in scaled]
    canvas = Image.new("RGB", (canvas_w, row_height * len(rows)), STITCH_BACKGROUND)
    for r, row in enumerate(rows):
        row_w = sum(widths[i] for i in row)
        x = (canvas_w - row_w) // 2
        for i in row:
            canvas.paste(scaled[i], (x, r * row_height))
            x += widths[i]
    return canvas
