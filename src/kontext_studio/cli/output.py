"""Console helpers shared by the commands: progress bars, errors, JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and messages go to stderr so ``--json`` output on stdout stays machine-readable.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int, as_json: bool = False, error_code: str = "error") -> None:
    if as_json:
        print_json({"error": {"code": error_code, "message": message}})
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Any]:
    """Yields an ``on_progress(phase, done, total)`` callback drawing one bar per phase."""
    if not enabled:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
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
