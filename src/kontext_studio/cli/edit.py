"""``kontext edit``, ``series`` and ``replay``: the commands that run the model.

Each command checks everything that needs no model first (files, tier, seed, LoRA files, weights
location) and only then loads torch and diffusers, behind a spinner.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from kontext_studio.cli.common import (
    BaseOpt,
    CandidatesOpt,
    CheckOpt,
    DeviceOpt,
    GuardOpt,
    JsonOpt,
    LockOpt,
    MemoryOpt,
    ModelOpt,
    SizeOpt,
    WeightsOpt,
    fidelity_options,
    model_choice,
    model_settings,
    references,
    settings_for,
)
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import (
    escape,
    handles_errors,
    loading,
    note,
    out,
    print_json,
    progress_bars,
    status_line,
)
from kontext_studio.cli.words import drift_line, identity_line, speed_lines
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.registry import TIERS
from kontext_studio.core.resolution import ASPECT_PRESETS
from kontext_studio.settings import Settings

TIER_NAMES = ", ".join(TIERS)
STRATEGY_HELP = ("How several references reach the model: native (FLUX.2, Qwen: the model takes each; their "
                 "default), stitch (Kontext's default), offset or index.")


def output_format_for(output: Path, given: str | None, format_flag: bool = True) -> str:
    """The output format: ``--format`` if given, else the one ``-o``'s extension names (``format_flag``: the
    command has a ``--format`` option to suggest).

    Raises:
        InvalidRequest: the extension is not one the editor writes (and no ``--format`` overrides it).
    """
    from kontext_studio.core.recipe import format_for_suffix, supported_suffixes

    if given:
        return given
    fmt = format_for_suffix(output.suffix)
    if fmt is None:
        raise InvalidRequest(
            f"-o {output}: cannot write {output.suffix or 'a file without an extension'}; use one of "
            f"{', '.join(supported_suffixes())}" + (" (or pass --format)" if format_flag else ""), field="output")
    return fmt.value


def prepare_engine(settings: Settings, entry: Any) -> Any:
    """Build the editor for the catalogue model ``entry`` (or a tier): weights located first, then torch and diffusers
    loaded under a spinner."""
    from kontext_studio.bootstrap import build_editor, check_weights, load_engine_libraries
    from kontext_studio.core.catalogue import ModelEntry, get_model

    if not isinstance(entry, ModelEntry):  # a tier
        entry = get_model(entry.name)
    if entry.local:
        check_weights(settings, entry)
        with loading("loading torch and diffusers"):
            load_engine_libraries()
    return build_editor(settings, on_status=status_line)


def print_notes(warnings: list[str], random_weights: bool) -> None:
    """The engine's adjustments and the reference checker's findings, one note each."""
    for warning in warnings:
        note(warning)
    if random_weights:
        note("this model has random weights (test model): the image is noise by design")


def report(result: Any, path: Path, as_json: bool) -> None:
    """Print one finished edit: where it went, its identity score, drift along a chain, notes."""
    if as_json:
        print_json({"output": str(path), **result.summary()})
        return
    w, h = result.image.size
    out.print(f"[green]saved[/] {escape(str(path))}  ({w}x{h}, seed {result.seed}, "
              f"{result.timings['total']:.2f} s)", highlight=False)
    if line := identity_line(result.identity):
        out.print(escape(line), highlight=False)
    if line := drift_line(result.recipe.get("chain")):
        out.print(escape(line), highlight=False)
    for line in speed_lines(result.recipe.get("acceleration")):
        out.print(escape(line), highlight=False)
    print_notes(result.warnings, bool(result.recipe.get("model", {}).get("random_weights")))


@handles_errors
def edit(
    inputs: Annotated[list[str], typer.Argument(help="Reference image(s), then the instruction in quotes; the "
                                                "instruction alone generates an image (on models that can, see "
                                                "kontext models).", metavar="IMG... INSTRUCTION",
                                                show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE",
                                         help="Output file (.png, .jpg or .webp).")],
    tier: Annotated[str, typer.Option(metavar="TIER", help=f"One of {TIER_NAMES} (Kontext); --model names any "
                                      "model.")] = "dev",
    aspect: Annotated[str, typer.Option(metavar="RATIO", help="match_input_image or W:H, e.g. "
                                        + ", ".join(ASPECT_PRESETS))] = "match_input_image",
    width: SizeOpt = None,
    height: SizeOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed (random when omitted; the one used is printed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (tier default: 28 for dev and fast).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance (default 2.5).")] = None,
    lora: Annotated[list[str] | None, typer.Option(metavar="FILE[:WEIGHT]",
                                                   help="LoRA file, optionally with its weight; repeatable.")]
    = None,
    strategy: Annotated[str | None, typer.Option(metavar="native|stitch|offset|index", help=STRATEGY_HELP)]
    = None,
    role: Annotated[list[str] | None, typer.Option(metavar="ROLE", help="Role per image in order: subject, "
                                                   "garment, style, background, object; repeatable.")] = None,
    geometry: Annotated[str, typer.Option(metavar="lock|native", help="lock: exactly the input size or ratio; "
                                          "native: model size.")] = "lock",
    output_format: Annotated[str | None, typer.Option("--format", metavar="png|jpeg|webp",
                                                      help="Output format (default: from -o).")] = None,
    identity_guard: GuardOpt = None,
    candidates: CandidatesOpt = None,
    pixel_lock: LockOpt = "auto",
    check: CheckOpt = True,
    safety_tolerance: Annotated[int | None, typer.Option(metavar="0-6", help="pro/max: BFL's moderation "
                                                         "tolerance, 0 (strictest) to 6 (BFL's default 2).")]
    = None,
    prompt_upsampling: Annotated[bool, typer.Option(help="pro/max: let BFL rewrite the prompt first.")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="Local models: half the steps for a quick, visibly "
                                        "softer look.")] = False,
    acceleration: Annotated[str | None, typer.Option(help="Local models: stock, lossless or fast (default: the "
                                                     "model's; the fast tier runs fast).")] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit one or more reference images with an instruction (or, with the instruction alone, generate one)."""
    from kontext_studio.core.preflight import preflight
    from kontext_studio.core.types import EditRequest, LoraSpec

    if not inputs or (len(inputs) == 1 and Path(inputs[0]).is_file()):
        raise InvalidRequest('give at least one image and an instruction: kontext edit photo.jpg "make it snowy" '
                             '-o out.png (or the instruction alone to generate: kontext edit "a red fox" -o fox.png)',
                             field="instruction")
    *images, instruction = inputs
    name, kontext_weights = model_choice(model)
    request = EditRequest(
        references=references(images, role), instruction=instruction, tier=tier, model=name, width=width,
        height=height, aspect_ratio=aspect, seed=seed,
        steps=steps, guidance=guidance, loras=[LoraSpec.parse(x) for x in lora or []], strategy=strategy,
        geometry=geometry, output_format=output_format_for(output, output_format), check_references=check,
        safety_tolerance=safety_tolerance, prompt_upsampling=prompt_upsampling, draft=draft, acceleration=acceleration,
        **fidelity_options(identity_guard, candidates, pixel_lock),
    )
    if candidates is None and not request.entry().local:  # each hosted candidate is a separate BFL charge
        request.candidates = 1
    checked = preflight(request)
    settings = model_settings(checked.entry, kontext_weights, weights, base, device, memory_mode)
    editor = prepare_engine(settings, checked.entry)
    with progress_bars() as on_progress:
        result = editor.edit(request, on_progress=on_progress)
    report(result, result.save(output), as_json)


def scene_file_name(index: int, instruction: str, limit: int = 40) -> str:
    """``01-put-her-on-a-beach.png``: the scene number and the instruction's first words, never a cut word."""
    words = re.findall(r"[a-z0-9]+", instruction.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > limit:
            break
        slug = candidate
    if not slug and words:  # one very long word: cut it rather than name the file after nothing
        slug = words[0][:limit]
    return f"{index:02d}-{slug or 'scene'}.png"


@handles_errors
def series(
    refs: Annotated[list[str], typer.Argument(help="Reference image(s) shared by every scene.", metavar="IMG...")],
    prompts: Annotated[Path, typer.Option(metavar="FILE", help="Text file: one instruction per line "
                                          "(# comments allowed).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                         help="Folder for the images and contact sheet.")],
    tier: Annotated[str, typer.Option(metavar="TIER", help=f"One of {TIER_NAMES}.")] = "dev",
    aspect: Annotated[str, typer.Option(metavar="RATIO", help="match_input_image or W:H.")] = "match_input_image",
    seed: Annotated[int | None, typer.Option(help="One seed for every scene (random when omitted).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance.")] = None,
    lora: Annotated[list[str] | None, typer.Option(metavar="FILE[:WEIGHT]", help="LoRA file; repeatable.")]
    = None,
    strategy: Annotated[str | None, typer.Option(metavar="native|stitch|offset|index", help=STRATEGY_HELP)]
    = None,
    role: Annotated[list[str] | None, typer.Option(metavar="ROLE", help="Role per reference, in order.")] = None,
    identity_guard: GuardOpt = None,
    candidates: CandidatesOpt = None,
    pixel_lock: LockOpt = "auto",
    check: CheckOpt = True,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One reference set x many instructions: a campaign with a contact sheet."""
    from kontext_studio.core.preflight import preflight
    from kontext_studio.core.types import EditRequest, LoraSpec

    if not prompts.is_file():
        raise InvalidRequest(f"prompts: file not found: {prompts}", field="prompts")
    lines = [ln.strip() for ln in prompts.read_text(encoding="utf-8").splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    if not instructions:
        raise InvalidRequest(f"prompts: {prompts} has no instructions (one per line, # for comments)",
                             field="prompts")
    name, kontext_weights = model_choice(model)
    request = EditRequest(
        references=references(refs, role), instruction=instructions[0], tier=tier, model=name,
        aspect_ratio=aspect, seed=seed, steps=steps, guidance=guidance,
        loras=[LoraSpec.parse(x) for x in lora or []], strategy=strategy, check_references=check,
        **fidelity_options(identity_guard, candidates, pixel_lock),
    )
    for text in instructions:
        request.replace(instruction=text).validate()
    checked = preflight(request)
    settings = model_settings(checked.entry, kontext_weights, weights, base, device, memory_mode)
    editor = prepare_engine(settings, checked.entry)
    with progress_bars() as on_progress:
        res = editor.series(request, instructions, on_progress=on_progress)
    output.mkdir(parents=True, exist_ok=True)
    files = [str(r.save(output / scene_file_name(i + 1, r.recipe["instruction"]))) for i, r in enumerate(res.results)]
    sheet = output / "contact_sheet.png"
    res.contact_sheet.save(sheet)
    summary = {"images": files, "contact_sheet": str(sheet), "seed": res.results[0].seed,
               "timings": res.timings, "scenes": [r.summary() for r in res.results]}
    (output / "series.json").write_text(json.dumps(summary, indent=2, default=str))
    if as_json:
        print_json(summary)
        return
    for f, r in zip(files, res.results, strict=True):
        line = identity_line(r.identity)
        out.print(f"[green]saved[/] {escape(f)}" + (f"  ({escape(line)})" if line else ""), highlight=False)
    out.print(f"[green]contact sheet[/] {escape(str(sheet))}  ({len(files)} scenes, seed {summary['seed']}, "
              f"{res.timings['total']:.2f} s)", highlight=False)
    # The same notes ``edit`` prints; a note every scene shares (a reference finding) is printed once.
    seen: list[str] = []
    for r in res.results:
        seen += [w for w in r.warnings if w not in seen]
    print_notes(seen, any(r.recipe.get("model", {}).get("random_weights") for r in res.results))


@handles_errors
def replay(
    image: Annotated[Path, typer.Argument(help="An image made by kontext (its recipe is inside).", metavar="IMG")],
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE",
                                                help="Where to write the re-run.")] = None,
    ref: Annotated[list[str] | None, typer.Option(metavar="IMG", help="Reference to use instead of the recorded "
                                                  "path, in order; repeatable.")] = None,
    model: ModelOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run the recipe embedded in IMG and say whether the pixels are identical."""
    import numpy as np
    from PIL import Image

    from kontext_studio.core.catalogue import Family, get_model
    from kontext_studio.core.recipe import read_recipe

    recipe = read_recipe(image)
    target = output or image.with_name(f"{image.stem}.replay{image.suffix}")
    output_format_for(target, recipe.get("output_format"))
    entry = get_model(str(recipe.get("model_name") or recipe.get("tier", "dev")), "tier")
    recorded = (recipe.get("model") or {}).get("source")  # where the weights were
    if entry.local and entry.family is not Family.KONTEXT:
        settings = model_settings(entry, None, model or recorded, base, device, memory_mode)
    else:
        settings = settings_for(model or recorded, base, device, memory_mode)
    editor = prepare_engine(settings, entry)
    with progress_bars() as on_progress:
        result, _ = editor.replay(image, references=ref, on_progress=on_progress)
    result.save(target)
    with Image.open(image) as a, Image.open(target) as b:
        identical = a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    if as_json:
        print_json({"output": str(target), "identical": identical, **result.summary()})
        return
    report(result, target, False)
    if identical:
        out.print("[green]identical[/] pixels to the original")
    else:
        out.print("[yellow]differs[/] from the original (another device, library version or model?)")


EDIT_EXAMPLES = examples(
    'kontext edit photo.jpg "put her on a beach at sunset" -o beach.png',
    'kontext edit woman.jpg suit.jpg "she wears the navy suit from the second image" -o out.jpg '
    "--role subject --role garment",
    'kontext edit photo.jpg "as an oil painting" -o art.webp --tier fast --seed 7',
    'kontext edit a.jpg b.jpg c.jpg "the three of them at a cafe" -o cafe.png --model klein-4b',
    'kontext edit "a red fox in the snow, studio light" -o fox.png --model flux-2-klein-4b --width 1200 --height 800',
)
SERIES_EXAMPLES = examples("kontext series product.jpg --prompts scenes.txt -o campaign/ --seed 7")
REPLAY_EXAMPLES = examples("kontext replay beach.png", "kontext replay beach.png --ref moved/photo.jpg -o again.png")


def register(app: typer.Typer) -> None:
    """Add ``edit``, ``series`` and ``replay`` to ``app``."""
    app.command(epilog=EDIT_EXAMPLES)(edit)
    app.command(epilog=SERIES_EXAMPLES)(series)
    app.command(epilog=REPLAY_EXAMPLES)(replay)
