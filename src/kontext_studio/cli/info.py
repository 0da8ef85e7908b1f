"""``kontext models`` and ``kontext doctor``: what this installation can run, and why not."""

from __future__ import annotations

from typing import Any

import typer

from kontext_studio.cli.common import BaseOpt, DeviceOpt, JsonOpt, ModelOpt, settings_for
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import escape, handles_errors, out, print_json


@handles_errors
def models(model: ModelOpt = None, base: BaseOpt = None, as_json: JsonOpt = False) -> None:
    """Tiers, credit prices, and where the weights were found (or how to get them)."""
    from rich.table import Table

    from kontext_studio.bootstrap import model_source
    from kontext_studio.core.registry import TIERS
    from kontext_studio.core.weights import locate

    settings = settings_for(model, base, None, None)
    status = locate(model_source(settings), settings.hf_token, download=False)
    rows: list[dict[str, Any]] = []
    for t in TIERS.values():
        if t.local:
            state = "ready" if status.found else "weights missing"
        elif settings.bfl_api_key:
            state = f"configured: BFL API at {settings.bfl_base_url}"
        else:
            state = "not configured: needs " + ", ".join(t.requires) + " (a key from https://api.bfl.ai)"
        rows.append({"tier": t.name, "title": t.title, "credits": t.price_credits, "steps": t.steps,
                     "guidance": t.guidance, "max_references": t.max_references, "backend": t.backend,
                     "status": state, "description": t.description, "trades": t.trades})
    from kontext_studio.cli.plan import machine_plan_line

    plan = machine_plan_line(quick=True)
    if as_json:
        print_json({"tiers": rows, "weights": status.as_dict(), "plan": plan})
        return
    table = Table(title="Kontext Studio tiers")
    for col in ("tier", "credits", "steps", "guidance", "refs", "status", "what it is"):
        table.add_column(col)
    for r in rows:
        table.add_row(escape(r["tier"]), str(r["credits"]), str(r["steps"] or "-"), str(r["guidance"] or "-"),
                      str(r["max_references"]), escape(r["status"]), escape(r["description"]))
    out.print(table)
    for r in rows:
        out.print(f"[bold]{escape(r['tier'])}[/]: {escape(r['trades'])}", highlight=False)
    if status.found:
        kind = " [yellow](random test weights)[/]" if status.random_weights else ""
        out.print(f"weights: [green]found[/] {escape(str(status.path))}{kind}", highlight=False)
    else:
        out.print(f"weights: [red]missing[/]. {escape(status.message)}", soft_wrap=True, highlight=False)
    out.print(f"plan on this machine: {escape(plan)} (kontext plan --vram 12: another card)", highlight=False)


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
    """Add ``models`` and ``doctor`` to ``app``."""
    app.command(epilog=examples("kontext models", "kontext models --model ./my-kontext-folder --json"))(models)
    app.command(epilog=examples("kontext doctor", "kontext doctor --device cuda:1 --json"))(doctor)
