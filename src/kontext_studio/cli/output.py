"""Console helpers shared by the commands: progress bars, a loading spinner, errors, JSON.

Everything here stays cheap to import (rich and typer only): ``kontext --help`` and input errors answer
before torch is ever loaded.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from kontext_studio.core.errors import KontextError

# Progress and messages go to stderr so ``--json`` output on stdout stays machine-readable.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

__all__ = ["err", "escape", "fail", "handles_errors", "loading", "note", "out", "print_json", "progress_bars",
           "status_line"]


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON on stdout (paths and other objects as strings)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int, as_json: bool = False, error_code: str = "error") -> None:
    """Report an error: JSON on stdout with ``--json``, and always a red line on stderr.

    Args:
        message: the error in words (printed literally: brackets are not markup).
        code: the exit code the caller will use.
        as_json: also print ``{"error": {...}}`` on stdout.
        error_code: the stable error code for scripts.
    """
    if as_json:
        print_json({"error": {"code": error_code, "message": message}})
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A yellow ``note:`` line on stderr; ``message`` is printed literally."""
    err.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def status_line(message: str) -> None:
    """An engine status message on stderr (model loading, fingerprinting), printed literally."""
    err.print(escape(message), highlight=False)


@contextmanager
def loading(what: str) -> Iterator[None]:
    """A spinner on stderr while ``what`` loads; nothing when stderr is not a terminal (logs, pipes, CI)."""
    if not err.is_terminal:
        yield
        return
    with err.status(f"{escape(what)}…", spinner="dots"):
        yield


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Any]:
    """Yields an ``on_progress(phase, done, total)`` callback drawing one bar per phase."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase.endswith("done"):
                return
            label = "loading model" if phase.endswith("load") else phase
            if phase not in tasks:
                tasks[phase] = progress.add_task(label, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield on_progress


F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Turn engine errors into a clear message and an exit code, never a traceback; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except KontextError as exc:
            fail(str(exc), getattr(exc, "exit_code", 1), as_json, getattr(exc, "code", "error"))
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except KeyboardInterrupt:
            fail("canceled", 130, as_json, "canceled")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
