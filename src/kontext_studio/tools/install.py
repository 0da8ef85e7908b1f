"""``python -m kontext_studio.tools.install``: write the free tools' model files (see :mod:`.models`)."""

from __future__ import annotations

import sys

from kontext_studio.tools.base import ToolModelMissing
from kontext_studio.tools.models import MODELS, install, status


def main(argv: list[str] | None = None) -> int:
    """``python -m kontext_studio.tools.install [--force] | status``."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in ("install", "status", "--force"):
        print("usage: python -m kontext_studio.tools.install [--force] | status", file=sys.stderr)
        return 2
    if args and args[0] == "status":
        for key, ok in status().items():
            print(f"{key:12} {'installed' if ok else 'missing'}  {MODELS[key].title}  [{MODELS[key].licence}]")
        return 0
    try:
        paths = install(force="--force" in args)
    except ToolModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"tool models in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
