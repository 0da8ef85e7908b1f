"""``kontext plan``: how each local model would run on this machine, or on a card of another size."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kontext_studio.cli.output import handles_errors, out, print_json
from kontext_studio.core.errors import InvalidRequest

GENERATIONS = "turing, ampere, ada, hopper, blackwell, apple or cpu"


def machine_plan_line(model_id: str = "dev", quick: bool = False) -> str:
    """One line for ``kontext doctor`` / ``kontext models``: the plan this machine gets for ``model_id``
    (``quick``: probe the GPU without importing torch)."""
    from kontext_studio.core.planner import PlanDoesNotFit, footprint, plan_for, probe_machine, this_machine

    try:
        return plan_for(footprint(model_id), probe_machine() if quick else this_machine()).explanation
    except PlanDoesNotFit as exc:
        return str(exc)


@handles_errors
def plan(
    vram: Annotated[float | None, typer.Option(help="Card size in GB (default: this machine's free GPU memory).")]
    = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="Model id (repeatable; default: every local "
                                                    "model).")] = None,
    ram: Annotated[float | None, typer.Option(help="System memory in GB (default: this machine's).")] = None,
    gpu: Annotated[str | None, typer.Option(help=f"GPU generation: {GENERATIONS} (default: this machine's, "
                                            "or ada with --vram).")] = None,
    resolution: Annotated[int, typer.Option(help="Output side in pixels (the references are as large).")] = 1024,
    references: Annotated[int, typer.Option(help="Number of reference images.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plans as JSON.")] = False,
    table: Annotated[bool, typer.Option("--table", help="Print a Markdown table: every model on 8-80 GB cards "
                                        "(with --gpu and --ram).")] = False,
) -> None:
    """Which precision, offload mode and attention backend each model gets, and what that costs."""
    from kontext_studio.core.planner import (
        FOOTPRINTS,
        GpuGeneration,
        Machine,
        PlanDoesNotFit,
        Workload,
        footprint,
        plan_for,
    )

    if vram is not None and not 1 <= vram <= 1024:
        raise InvalidRequest(f"--vram must be a card size in GB between 1 and 1024, got {vram}", field="vram")
    if not 256 <= resolution <= 4096:
        raise InvalidRequest(f"--resolution must be between 256 and 4096 pixels, got {resolution}", field="resolution")
    if not 0 <= references <= 10:
        raise InvalidRequest(f"--references must be between 0 and 10, got {references}", field="references")
    generation: GpuGeneration | None = None
    if gpu is not None:
        try:
            generation = GpuGeneration(gpu.strip().lower())
        except ValueError:
            raise InvalidRequest(f"--gpu must be one of {GENERATIONS}; got {gpu!r}", field="gpu") from None
    if table:
        from kontext_studio.core.planner import plan_table

        typer.echo(plan_table(ram_gib=ram or 64.0, generation=generation or GpuGeneration.ADA))
        return
    if vram is None:
        from kontext_studio.core.planner import this_machine

        here = this_machine()
        machine = Machine(here.vram_gib, ram or here.ram_gib, generation or here.generation)
        where = "this machine"
    else:
        machine = Machine.card(vram, ram or 64.0, generation or GpuGeneration.ADA)
        where = f"a {vram:g} GB {machine.generation.value} card with {machine.ram_gib:g} GB of system memory"
    models = [footprint(m) for m in model] if model else list(FOOTPRINTS.values())
    work = Workload(resolution, references)
    results: list[dict[str, Any]] = []
    for m in models:
        try:
            results.append({"model": m.id, "fits": True, **plan_for(m, machine, work).as_dict()})
        except PlanDoesNotFit as exc:
            smallest = exc.smallest.as_dict() if exc.smallest else None
            results.append({"model": m.id, "fits": False, "error": str(exc), "smallest": smallest})
    if as_json:
        print_json({"machine": {"vram_gib": machine.vram_gib, "ram_gib": machine.ram_gib,
                                "generation": machine.generation.value},
                    "resolution": resolution, "references": references, "plans": results})
    else:
        from rich.markup import escape

        out.print(f"[bold]Plans for {where}[/] ({resolution}² output, {references} reference(s)):", highlight=False)
        for r in results:
            text = escape(r["explanation"]) if r["fits"] else f"[red]does not fit[/]: {escape(r['error'])}"
            out.print(f"- [bold]{r['model']}[/]: {text}", highlight=False)
    if not any(r["fits"] for r in results):
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add ``plan`` to ``app``."""
    app.command("plan")(plan)
