"""``kontext verify IMG``: an image's content credentials, AI marks and recipe, in words."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kontext_studio.cli.output import escape, handles_errors, out, print_json

if TYPE_CHECKING:
    from kontext_studio.core.provenance.credentials import ContentCredentials

# Exit codes scripts can rely on: 0 the manifest validates; 1 it fails (changed after signing, or its
# certificate expired); 4 there is no manifest (or it could not be checked). Bad input exits 2 like every command.
EXIT_INVALID, EXIT_NO_CREDENTIALS = 1, 4


def installation_credentials() -> ContentCredentials:
    """The signer of this installation (from the environment), for every output a command writes."""
    from kontext_studio.bootstrap import content_credentials
    from kontext_studio.settings import Settings

    return content_credentials(Settings.from_env())


@handles_errors
def verify(
    image: Annotated[Path, typer.Argument(help="Any image (PNG, JPEG, WebP, AVIF, HEIC...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check IMAGE's content credentials (C2PA) and say whether and how it was made or edited with AI.

    Exits 0 when its manifest validates, 1 when it fails validation (or its certificate expired), 4 when it
    has none.
    """
    from kontext_studio.core.provenance.inspect import inspect_provenance

    report = inspect_provenance(image, installation_credentials())
    code = 0 if report.validates else EXIT_INVALID if report.credentials in ("invalid", "expired") \
        else EXIT_NO_CREDENTIALS
    if as_json:
        print_json(report.to_dict())
        raise typer.Exit(code)
    colour = {"trusted": "green", "unknown_issuer": "yellow", "expired": "yellow",
              "invalid": "bold red"}.get(report.credentials, "dim")
    out.print(f"[bold]{escape(str(image))}[/]  {report.format} {report.size[0]}×{report.size[1]}" if report.size
              else f"[bold]{escape(str(image))}[/]", highlight=False)
    out.print(f"content credentials: [{colour}]{escape(report.credentials_text)}[/]", highlight=False)
    ai = {True: "yes", False: "no AI step recorded", None: "nothing says"}[report.ai_generated]
    out.print(f"made or edited with AI: {ai}", highlight=False)
    for i, step in enumerate(reversed(report.history)):
        signer = f" — signed by {step.signer}" if step.signer else ""
        when = f" on {step.signed_at}" if step.signed_at else ""
        out.print(escape(f"  {i + 1}. {step.sentence()}{signer}{when}"), highlight=False)
    for failure in report.failures if report.credentials in ("invalid", "expired") else []:
        out.print(f"  [red]✗[/] {escape(str(failure))}", highlight=False)
    if report.iptc_source_type:
        from kontext_studio.core.provenance.inspect import source_type_words

        out.print(escape(f"IPTC digital source type: {source_type_words(report.iptc_source_type)}"), highlight=False)
    if report.recipe:
        r = report.recipe
        facts = ", ".join(f"{k} {r[k]}" for k in ("seed", "tier") if r.get(k) is not None)
        out.print(escape(f"Kontext Studio recipe: {r.get('instruction')!r}" + (f" ({facts})" if facts else "")
                         + "; `kontext replay` re-runs it"), highlight=False)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``verify`` to ``app``."""
    app.command()(verify)
