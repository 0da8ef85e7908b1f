"""``kontext build-tiny-model``: a few-megabyte test model to try every command without weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kontext_studio.cli.common import JsonOpt
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import escape, handles_errors, loading, out, print_json


@handles_errors
def build_tiny_model_cmd(
    output: Annotated[Path, typer.Argument(help="Folder to write the tiny model to.", metavar="DIR")],
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Build the tiny TEST model: real Kontext classes, RANDOM weights. For tests and dry runs only."""
    from kontext_studio.bootstrap import quiet_third_party_logs

    with loading("loading torch and diffusers"):
        quiet_third_party_logs()
        from kontext_studio.testing.tiny_model import build_tiny_model

    path = build_tiny_model(output, seed=seed)
    if as_json:
        print_json({"path": str(path), "random_weights": True})
        return
    out.print(f"[green]built[/] {escape(str(path))}  [yellow](random weights: for tests and dry runs only, its "
              "images are noise)[/]", highlight=False)
    out.print(f'try: kontext edit photo.jpg "make it snowy" -o out.png --model {escape(str(path))}', highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``build-tiny-model`` to ``app``."""
    app.command("build-tiny-model", epilog=examples(
        "kontext build-tiny-model .kontext/tiny-model",
        'kontext edit photo.jpg "make it snowy" -o out.png --model .kontext/tiny-model --steps 4'))(
        build_tiny_model_cmd)
