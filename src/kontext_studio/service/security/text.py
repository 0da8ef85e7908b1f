"""Text at the boundary: refuse what no database, JSON encoder or model tokenizer can carry safely.

A lone UTF-16 surrogate (``\\ud800``) survives JSON parsing as a Python ``str`` but cannot be encoded as
UTF-8; NUL cannot be stored in PostgreSQL text. Both are refused where requests enter, naming the field,
and ``printable`` makes any text already stored safe to show.
"""

from __future__ import annotations

import re
from typing import Any

from kontext_studio.core.errors import InvalidRequest

# Lone surrogates, NUL and the C0 controls other than tab, newline and carriage return.
_BAD = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_DEPTH = 32


def check_text(value: str, field: str) -> str:
    """``value`` when it is clean text.

    Raises:
        InvalidRequest: it holds a lone surrogate, NUL or another control character (names the position).
    """
    found = _BAD.search(value)
    if found is not None:
        raise InvalidRequest(f"{field}: character U+{ord(found.group()):04X} at position {found.start()} is not "
                             "allowed (lone surrogates and control characters are refused); send plain UTF-8 text",
                             field=field)
    return value


def check_tree(value: Any, field: str, depth: int = 0) -> None:
    """Check every string (keys included) in a parsed JSON value, and its nesting depth.

    Raises:
        InvalidRequest: bad text anywhere, or nesting deeper than ``MAX_DEPTH``.
    """
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{field}: nested deeper than {MAX_DEPTH} levels", field=field)
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(str(k), field)
            check_tree(v, f"{field}.{k}", depth + 1)
    elif isinstance(value, list):
        for n, v in enumerate(value):
            check_tree(v, f"{field}[{n}]", depth + 1)


def printable(value: Any) -> Any:
    """``value`` with any unencodable character in its strings replaced by U+FFFD (for listings of text that
    was stored before the boundary refused it)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
