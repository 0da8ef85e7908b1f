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
    family: Annotated[str, typer.Option(metavar="FAMILY", help="kontext (FLUX.1 Kontext), klein (FLUX.2 [klein]), "
                                        "flux2 (FLUX.2 [dev]) or qwen (Qwen-Image-Edit).")] = "kontext",
    as_json: JsonOpt = False,
) -> None:
    """Build a tiny TEST model of any family: real classes, RANDOM weights. For tests and dry runs only."""
    from kontext_studio.core.errors import InvalidRequest

    families = ("kontext", "klein", "flux2", "qwen")
    if family not in families:
        raise InvalidRequest(f"--family must be one of {', '.join(families)}; got {family!r}", field="family")
    from kontext_studio.bootstrap import quiet_third_party_logs

    with loading("loading torch and diffusers"):
        quiet_third_party_logs()
        from kontext_studio.testing.tiny_model import build_tiny_model

    path = build_tiny_model(output, seed=seed, family=family)
    if as_json:
        print_json({"path": str(path), "random_weights": True, "family": family})
        return
    out.print(f"[green]built[/] {escape(str(path))}  [yellow](random weights: for tests and dry runs only, its "
              "images are noise)[/]", highlight=False)
    key = {"kontext": "", "klein": "klein-4b", "flux2": "flux2-dev", "qwen": "qwen-edit"}[family]
    where = f"--model {path}" if family == "kontext" else f"--model {key} --weights {path}"
    out.print(f'try: kontext edit photo.jpg "make it snowy" -o out.png {escape(where)}', highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``build-tiny-model`` to ``app``."""
    app.command("build-tiny-model", epilog=examples(
        "kontext build-tiny-model .kontext/tiny-model",
        "kontext build-tiny-model .kontext/tiny-klein --family klein",
        'kontext edit photo.jpg "make it snowy" -o out.png --model .kontext/tiny-model --steps 4'))(
        build_tiny_model_cmd)
