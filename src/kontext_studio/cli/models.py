"""``kontext models``: the catalogue with licence, references, price, and where each model's weights are."""

from __future__ import annotations

from typing import Any

import typer

from kontext_studio.cli.common import BaseOpt, JsonOpt, ModelOpt, settings_for
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import escape, handles_errors, out, print_json
from kontext_studio.settings import Settings


def catalogue_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every catalogue model with this installation's status (weights found, or how to get them).

    Args:
        settings: where weights are configured, the BFL key, the prices.

    Returns:
        One JSON-ready dict per model: the entry's facts plus ``status``, ``ready`` and ``weights_path``.
    """
    from kontext_studio.bootstrap import catalogue, family_source, model_source
    from kontext_studio.core.catalogue import Family
    from kontext_studio.core.weights import locate

    rows: list[dict[str, Any]] = []
    located: dict[str, Any] = {}
    for entry in catalogue(settings):
        row = entry.as_dict()
        if entry.local:
            source = model_source(settings) if entry.family is Family.KONTEXT else family_source(settings, entry)
            key = entry.warm_key
            if key not in located:
                located[key] = locate(source, settings.hf_token, download=False)
            status = located[key]
            row["weights_path"] = status.path
            row["random_weights"] = status.random_weights
            row["ready"] = status.found
            if status.found:
                row["status"] = f"ready: {status.path}" + (" (random test weights)" if status.random_weights else "")
            elif entry.family is Family.KONTEXT:
                row["status"] = f"weights missing: {status.message}"
            else:
                lic = entry.licence
                gated = "" if lic.commercial else "accept the licence on the model page, set HF_TOKEN, "
                row["status"] = (f"weights missing: {gated}then run an edit with downloads allowed (about "
                                 f"{entry.weights.download_gb:g} GB from huggingface.co/{entry.weights.hub}), or "
                                 f"set KONTEXT_WEIGHTS={entry.key}=/path/to/folder")
        else:
            row["weights_path"] = None
            row["ready"] = bool(settings.bfl_api_key)
            row["status"] = (f"configured: BFL API at {settings.bfl_base_url}" if settings.bfl_api_key else
                             "not configured: needs BFL_API_KEY (a key from https://api.bfl.ai)")
        rows.append(row)
    return rows


def _tier_view(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Kontext tiers as ``kontext models --json`` listed them before the catalogue (scripts read it)."""
    from kontext_studio.bootstrap import model_source
    from kontext_studio.core.registry import TIERS
    from kontext_studio.core.weights import locate

    status = locate(model_source(settings), settings.hf_token, download=False)
    by_key = {r["key"]: r for r in rows}
    tiers = []
    for t in TIERS.values():
        state = ("ready" if status.found else "weights missing") if t.local else by_key[t.name]["status"]
        tiers.append({"tier": t.name, "title": t.title, "credits": by_key[t.name]["price_credits"], "steps": t.steps,
                      "guidance": t.guidance, "max_references": t.max_references, "backend": t.backend,
                      "status": state, "description": t.description, "trades": t.trades})
    return {"tiers": tiers, "weights": status.as_dict()}


@handles_errors
def models(model: ModelOpt = None, base: BaseOpt = None, as_json: JsonOpt = False) -> None:
    """Every model: licence (commercial use?), references, price, and where the weights are or how to get them."""
    settings = settings_for(model, base, None, None)
    rows = catalogue_rows(settings)
    from kontext_studio.cli.plan import machine_plan_line

    plan = machine_plan_line(quick=True)
    if as_json:
        print_json({"models": rows, **_tier_view(settings, rows), "plan": plan})
        return
    from rich.table import Table

    table = Table(title="Kontext Studio models")
    for col in ("short", "model", "credits", "refs", "does", "commercial use", "state"):
        table.add_column(col)
    for r in rows:
        state = ("ready" if r["local"] else "configured") if r["ready"] else (
            "weights missing" if r["local"] else "needs BFL_API_KEY")
        table.add_row(r["key"], r["name"], str(r["price_credits"]), str(r["max_references"]), "+".join(r["tasks"]),
                      "yes" if r["commercial_use"] else "no", state)
    out.print(table)
    for r in rows:
        out.print(f"[bold]{r['key']}[/] ({escape(r['title'])}, {escape(r['licence']['name'])}): "
                  f"{escape(r['trades'])}\n    {escape(r['status'])}", highlight=False)
    out.print(f"plan on this machine: {escape(plan)} (kontext plan --vram 12: another card)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``models`` to ``app``."""
    app.command(epilog=examples("kontext models", "kontext models --json",
                                "KONTEXT_WEIGHTS=klein-4b=/models/klein kontext models"))(models)
