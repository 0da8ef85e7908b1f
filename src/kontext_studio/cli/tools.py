"""``kontext tools`` (list) and ``kontext tool NAME IN... -o OUT [--param value]`` (run one).

Free tools run here on the CPU; AI tools are preset instructions run as an ordinary edit on the chosen model (any
catalogue model that edits: ``--tier`` for Kontext, ``--model`` for any other).
Heavy imports (models, the engine) happen inside the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kontext_studio.cli.common import BaseOpt, ModelOpt, WeightsOpt
from kontext_studio.cli.output import err, escape, handles_errors, out, print_json
from kontext_studio.core.errors import InvalidRequest


def _split_params(tokens: list[str], bool_names: set[str]) -> tuple[list[str], dict[str, str | bool]]:
    """Positional inputs and ``--name value`` / ``--name=value`` / ``--flag`` / ``--no-flag`` parameters."""
    inputs: list[str] = []
    params: dict[str, str | bool] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            key = name.replace("-", "_")
            if eq:
                params[key] = value
            elif key in bool_names:
                params[key] = True
            elif key.startswith("no_") and key[3:] in bool_names:
                params[key[3:]] = False
            elif i + 1 < len(tokens):
                params[key] = tokens[i + 1]
                i += 1
            else:
                raise InvalidRequest(f"--{name} needs a value", field=key)
        else:
            inputs.append(tok)
        i += 1
    return inputs, params


def tools_list(as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False) -> None:
    """List the free tools and the one-click AI tools (with their price on every model that edits)."""
    from kontext_studio.bootstrap import catalogue
    from kontext_studio.settings import Settings
    from kontext_studio.tools import list_tools
    from kontext_studio.tools.ai import AI_TOOLS
    from kontext_studio.tools.models import status

    installed = status()
    # Keyed by the short names --tier and --model take (dev, klein-4b), at this installation's prices.
    prices = {e.key: e.price_credits for e in catalogue(Settings.from_env()) if e.can_edit}
    if as_json:
        print_json({"free": [{**t.as_dict(), "installed": installed.get(t.model, True) if t.model else True}
                             for t in list_tools()],
                    "ai": [t.as_dict(prices) for t in AI_TOOLS.values()]})
        return
    out.print("[bold]Free tools[/] (no credits, run on this machine):")
    for t in list_tools():
        missing = " [yellow](model not installed)[/]" if t.model and not installed.get(t.model, True) else ""
        out.print(f"  [cyan]{escape(f'{t.name:20}')}[/] {escape(f'{t.description}{missing}')}", highlight=False)
    price_text = ", ".join(f"{k} {v}" for k, v in prices.items())
    out.print(f"\n[bold]AI tools[/] (an edit on the model you pick, priced like one: {price_text} credits):")
    for a in AI_TOOLS.values():
        out.print(f"  [cyan]{escape(f'{a.name:22}')}[/] {escape(a.description)}", highlight=False)
    out.print(escape("\nRun one: kontext tool NAME IN... -o OUT [--param value]; its parameters: kontext tool NAME "
                     "--help"))


def _print_params(name: str) -> None:
    from kontext_studio.tools import get_tool
    from kontext_studio.tools.ai import get_ai_tool

    ai = get_ai_tool(name)
    spec = None if ai else get_tool(name)
    params = ai.params if ai else spec.params  # type: ignore[union-attr]
    title = ai.title if ai else spec.title  # type: ignore[union-attr]
    out.print(f"{title} ({name}): {ai.description if ai else spec.description}",  # type: ignore[union-attr]
              highlight=False, markup=False)
    if spec is not None:
        lim = spec.limits
        count = f"{lim.min_inputs}" if lim.min_inputs == lim.max_inputs else f"{lim.min_inputs}-{lim.max_inputs}"
        largest = spec.max_pixels(spec.default_params()) / 1e6
        out.print(f"images: {count}; largest input {largest:g} MP with the defaults; mask: {lim.mask}",
                  highlight=False)
    for p in params:
        allowed = ", ".join(p.choices) if p.choices else (
            f"{p.minimum:g} to {p.maximum:g}" if p.kind in ("int", "float") and p.minimum is not None
            and p.maximum is not None else p.kind)
        out.print(f"  --{p.name.replace('_', '-'):16} {p.help} [{allowed}; default {p.default}]", highlight=False,
                  markup=False)
    if ai:
        out.print("  --tier (Kontext) or --model (any model that edits, see kontext models), --weights, --seed: which "
                  "model runs the edit (priced like an edit on that model)")


@handles_errors
def tool_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The tool (see kontext tools).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output file (.png, .jpg, .webp, .avif); "
                                                "info and inspect print instead.")] = None,
    mask: Annotated[Path | None, typer.Option(help="Mask image: white = the area to work on (erase).")] = None,
    quality: Annotated[int, typer.Option(help="Quality of a JPEG, WebP or AVIF output (1-100).")] = 92,
    tier: Annotated[str, typer.Option(help="AI tools: the Kontext tier that runs the edit (--model names any "
                                      "other model that edits).")] = "dev",
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    base: BaseOpt = None,
    seed: Annotated[int | None, typer.Option(help="AI tools: seed.")] = None,
    steps: Annotated[int | None, typer.Option(help="AI tools: denoising steps.")] = None,
    show_help: Annotated[bool, typer.Option("--help-params", hidden=True)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")] = False,
) -> None:
    """Run one tool: kontext tool NAME IN... -o OUT [--param value] (kontext tool NAME --params lists them)."""
    from kontext_studio.tools import get_tool
    from kontext_studio.tools.ai import get_ai_tool

    ai = get_ai_tool(name)
    spec = None if ai else get_tool(name)
    params_desc = ai.params if ai else spec.params  # type: ignore[union-attr]
    bool_names = {p.name for p in params_desc if p.kind == "bool"} | {"params"}
    inputs, raw = _split_params(list(ctx.args), bool_names)
    if raw.pop("params", False) or show_help or (not inputs and not raw):
        _print_params(name)
        return
    if not inputs:
        raise InvalidRequest(f"give the input image(s): kontext tool {name} photo.jpg -o out.png", field="images")
    if ai is not None:
        _run_ai(ai, inputs, raw, output, (tier, model, weights, base), seed, steps, as_json)
        return
    assert spec is not None
    _run_free(spec, inputs, raw, output, mask, quality, as_json)


def _run_free(spec: Any, inputs: list[str], raw: dict[str, Any], output: Path | None, mask: Path | None,
              quality: int, as_json: bool) -> None:
    from kontext_studio.tools import format_for, result_bytes, run_tool
    from kontext_studio.tools.signing import sign_tool_result

    reports = spec.name in ("info", "inspect")
    if output is None and not reports:
        raise InvalidRequest(f"name the output file: kontext tool {spec.name} {' '.join(inputs)} -o out.png",
                             field="output")
    for path in inputs:
        if not Path(path).is_file():
            raise InvalidRequest(f"input not found: {path}", field="images")
    if mask is not None and not mask.is_file():
        raise InvalidRequest(f"mask not found: {mask}", field="mask")
    fmt = format_for(output) if output is not None else None
    if fmt == "jpeg" and spec.limits.alpha_out:
        raise InvalidRequest(f"{spec.title} makes a transparent picture, which JPEG cannot hold: name the output "
                             ".png or .webp", field="output")
    if spec.name == "convert" and fmt and "format" not in raw:
        raw["format"] = fmt  # the output's extension says the format
    if not 1 <= quality <= 100:
        raise InvalidRequest(f"--quality must be 1 to 100; got {quality}", field="quality")
    started = time.perf_counter()
    result = run_tool(spec.name, [Path(p) for p in inputs], raw, mask=mask)
    seconds = time.perf_counter() - started
    saved = None
    credentials: bool | None = None
    if output is not None and (result.image is not None or result.encoded is not None):
        assert fmt is not None
        data, _ = result_bytes(result, fmt, quality)
        signed = sign_tool_result(data, fmt, spec, result, [Path(p) for p in inputs])
        data, credentials = signed.data, signed.signed
        if signed.note and result.changes_pixels and not as_json:
            err.print(f"[yellow]note:[/] {escape(signed.note)}", highlight=False)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(data)
        saved = (output, len(data))
    if as_json:
        print_json({"tool": spec.name, "output": str(saved[0]) if saved else None,
                    "bytes": saved[1] if saved else None, "seconds": round(seconds, 3), "info": result.info,
                    "content_credentials": credentials})
        return
    if saved:
        size = f"{result.image.width}x{result.image.height}, " if result.image is not None else ""
        out.print(f"[green]saved[/] {escape(str(saved[0]))}  ({size}{saved[1] / 1000:.1f} KB, {seconds:.2f} s)",
                  highlight=False)
    if spec.name == "inspect":
        out.print(escape(str(result.info["summary"])), highlight=False)
    elif result.info:
        for key, value in result.info.items():
            if key not in ("face_boxes", "width", "height") or reports:
                out.print(escape(f"  {key}: {value}"), highlight=False)


def _run_ai(ai: Any, inputs: list[str], raw: dict[str, Any], output: Path | None,
            choice: tuple[str, str | None, str | None, str | None], seed: int | None, steps: int | None,
            as_json: bool) -> None:
    """Run an AI tool as an edit on the chosen model (``choice``: --tier, --model, --weights, --base).

    Raises:
        InvalidRequest: no output file, a bad parameter, or a model that cannot edit (naming those that can).
    """
    from kontext_studio.cli.common import model_choice, model_settings
    from kontext_studio.cli.edit import output_format_for, prepare_engine, report
    from kontext_studio.cli.output import progress_bars
    from kontext_studio.core.catalogue import CATALOGUE
    from kontext_studio.core.preflight import preflight
    from kontext_studio.core.types import EditRequest, Reference

    tier, model, weights, base = choice
    if output is None:
        raise InvalidRequest(f"name the output file: kontext tool {ai.name} photo.jpg -o out.png", field="output")
    instruction = ai.build(raw)
    name, kontext_weights = model_choice(model)
    request = EditRequest(references=[Reference(p) for p in inputs], instruction=instruction, tier=tier, model=name,
                          seed=seed, steps=steps, output_format=output_format_for(output, None, format_flag=False))
    entry = request.entry()
    if not entry.can_edit:
        editors = ", ".join(e.key for e in CATALOGUE if e.can_edit)
        raise InvalidRequest(f"--model {model}: {entry.title} only generates from text, and {ai.name} edits your "
                             f"photo; pick a model that edits: {editors}", field="model")
    # Like ``kontext edit``: files, model, seed and the weights are checked before torch loads.
    checked = preflight(request)
    editor = prepare_engine(model_settings(checked.entry, kontext_weights, weights, base, None, None), checked.entry)
    with progress_bars(not as_json) as on_progress:
        result = editor.edit(request, on_progress=on_progress)
    path = result.save(output)
    if as_json:
        print_json({"tool": ai.name, "output": str(path), "instruction": instruction, **result.summary()})
        return
    out.print(escape(f"instruction: {instruction}"), highlight=False)
    report(result, path, False)


_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def register(app: typer.Typer) -> None:
    """Add ``kontext tools`` and ``kontext tool`` to the CLI."""
    app.command("tools")(handles_errors(tools_list))
    app.command("tool", context_settings=_EXTRA)(tool_run)
