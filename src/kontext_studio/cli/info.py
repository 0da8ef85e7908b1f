"""``kontext doctor``: what this installation can run, and why not."""

from __future__ import annotations

import typer

from kontext_studio.cli.common import BaseOpt, DeviceOpt, JsonOpt, ModelOpt, settings_for
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import escape, handles_errors, out, print_json


@handles_errors
def doctor(model: ModelOpt = None, base: BaseOpt = None, device: DeviceOpt = None, as_json: JsonOpt = False) -> None:
    """Check torch, the device, VRAM, the memory mode that would be picked, and the weights."""
    from kontext_studio.cli.doctor import diagnose
    from kontext_studio.cli.output import loading

    settings = settings_for(model, base, device, None)
    with loading("loading torch"):
        report = diagnose(settings)
    report["bfl_api"] = (f"configured: pro and max go to {settings.bfl_base_url}" if settings.bfl_api_key else
                         "not configured: set BFL_API_KEY for the pro and max tiers (BFL_BASE_URL to use another "
                         "server)")
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        shown = "; ".join(value) if isinstance(value, list) else value
        out.print(f"[bold]{escape(key.replace('_', ' '))}[/]: {escape(str(shown))}", soft_wrap=True,
                  highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to ``app`` (``models`` lives in ``cli/models.py``)."""
    app.command(epilog=examples("kontext doctor", "kontext doctor --device cuda:1 --json"))(doctor)
