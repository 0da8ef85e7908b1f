"""``kontext``: the command line. This module only assembles the commands; each lives in its own module.

Adding a command: write ``cli/<topic>.py`` with the command function(s) and a ``register(app)`` that calls
``app.command()(fn)`` (or ``app.add_typer`` for a group), then add one ``<topic>.register(app)`` line below.
Keep torch, diffusers, OpenCV and other heavy imports inside the command bodies, after the checks that need
no model: ``kontext --help`` and input errors must answer at once (tests/cli/test_cli_startup.py).
"""

from __future__ import annotations

from typing import Annotated

import typer

from kontext_studio.cli import admin, analysis, edit, info, models, plan, quantize, serve, tiny, tools, train, verify
from kontext_studio.cli.help import examples, plain_help
from kontext_studio.core.provenance.credentials import provide_content_credentials

app = typer.Typer(
    name="kontext",
    help="Kontext Studio: edit photos with FLUX.1 Kontext while keeping the subject itself.",
    epilog=examples('kontext edit photo.jpg "put her on a beach at sunset" -o beach.png',
                    'kontext coach "make it better"', "kontext check-ref photo.jpg",
                    "kontext build-tiny-model .kontext/tiny-model   (try everything without weights)",
                    "kontext COMMAND --help   (options and examples of one command)"),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("kontext-studio")
        except metadata.PackageNotFoundError:
            from kontext_studio import __version__ as version
        typer.echo(f"kontext {version}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library log messages on the terminal "
                                          "(they go to ~/.kontext/logs/kontext.log otherwise).")] = False,
) -> None:
    from kontext_studio.cli.logs import setup_logging

    setup_logging(verbose)


edit.register(app)
analysis.register(app)
info.register(app)
models.register(app)
plan.register(app)
quantize.register(app)
serve.register(app)
admin.register(app)
train.register(app)
tiny.register(app)
verify.register(app)
tools.register(app)
plain_help(app)
provide_content_credentials(verify.installation_credentials)  # every command's outputs are signed by this installation


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
