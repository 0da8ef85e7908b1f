"""``kontext``: edit, series, replay, models, doctor, build-tiny-model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from kontext_studio.bootstrap import build_editor, model_source, with_overrides
from kontext_studio.cli.output import err, handles_errors, out, print_json, progress_bars
from kontext_studio.cli.plan import plan as plan_command
from kontext_studio.cli.tools import register as register_tools
from kontext_studio.cli.train import app as train_app
from kontext_studio.cli.verify import installation_credentials, verify
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.provenance.credentials import provide_content_credentials
from kontext_studio.core.recipe import format_for_path, read_recipe
from kontext_studio.core.registry import TIERS
from kontext_studio.core.resolution import ASPECT_PRESETS
from kontext_studio.core.types import EditRequest, LoraSpec, Reference
from kontext_studio.settings import Settings

app = typer.Typer(
    name="kontext",
    help="Kontext Studio: edit photos with FLUX.1 Kontext while keeping the subject itself.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
# Each hosted candidate is a separate BFL charge: the identity guard tries more seeds there only when asked.
HOSTED_TIERS = frozenset(name for name, spec in TIERS.items() if not spec.local)

ModelOpt = Annotated[str | None, typer.Option("--model", help="Hub repo id, diffusers folder or single "
                                              "checkpoint file (default: KONTEXT_MODEL or the official repo).")]
BaseOpt = Annotated[str | None, typer.Option("--base", help="For a single-file checkpoint: folder or repo "
                                             "holding the text encoders, VAE and configs.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cuda, cuda:1, mps or cpu.")]
MemoryOpt = Annotated[str | None, typer.Option("--memory-mode", help="auto, gpu, model_offload, "
                                               "group_offload or sequential_offload.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout (progress stays on stderr).")]
GuardOpt = Annotated[float | None, typer.Option("--identity-guard", help="Minimum identity similarity (0-1; 0.5 = "
                                                "same-person threshold): try further seeds until one reaches it.")]
CandidatesOpt = Annotated[int | None, typer.Option(help="Seeds to try at most (default 4 with --identity-guard, "
                                                   "else 1); the best is kept.")]
LockOpt = Annotated[str, typer.Option("--pixel-lock", help="auto (undo drift outside the edited area), off, or a "
                                      "mask image (white = the area to edit).")]
CheckOpt = Annotated[bool, typer.Option("--check/--no-check", help="Check each reference photo and report "
                                        "problems (resolution, blur, exposure, faces...).")]




def _settings(model: str | None, base: str | None, device: str | None, memory_mode: str | None) -> Settings:
    return with_overrides(Settings.from_env(), model=model, base_model=base, device=device, memory_mode=memory_mode)


def _references(images: list[str], roles: list[str] | None) -> list[Reference]:
    roles = roles or []
    if len(roles) > len(images):
        raise InvalidRequest(f"--role given {len(roles)} times for {len(images)} image(s); give one per image, "
                             "in order", field="role")
    return [Reference(img, roles[i] if i < len(roles) else None) for i, img in enumerate(images)]


def _fidelity_options(guard: float | None, candidates: int | None, pixel_lock: str) -> dict[str, Any]:
    """The request fields behind --identity-guard, --candidates and --pixel-lock."""
    lock, mask = (pixel_lock, None) if pixel_lock in ("auto", "off") else ("auto", pixel_lock)
    if mask is not None and not Path(mask).is_file():
        raise InvalidRequest(f"--pixel-lock must be auto, off or a mask image file; {mask!r} is neither",
                             field="pixel_lock")
    return {"identity_guard": guard, "candidates": candidates or (4 if guard is not None else 1),
            "pixel_lock": lock, "lock_mask": mask}


def _identity_line(identity: dict[str, Any] | None) -> str | None:
    if not identity:
        return None
    sim = identity.get("similarity")
    if sim is None:
        reason = (identity.get("details") or {}).get("reason") or "nothing to compare"
        return f"identity: not measured ({reason})"
    verdict = {True: "kept", False: "NOT kept", None: "unknown"}[identity.get("passed")]
    what = "same person" if identity.get("measured") else "object consistency"
    tries = identity.get("candidates") or []
    extra = f", best of {len(tries)} seeds" if len(tries) > 1 else ""
    return f"identity: {sim:.2f} ({what} {verdict}, {identity.get('method')}{extra})"


def _report(result: Any, path: Path, as_json: bool) -> None:
    if as_json:
        print_json({"output": str(path), **result.summary()})
        return
    w, h = result.image.size
    out.print(f"[green]saved[/] {path}  ({w}x{h}, seed {result.seed}, {result.timings['total']:.2f} s)")
    if line := _identity_line(result.identity):
        out.print(line, highlight=False)
    chain = result.recipe.get("chain") or {}
    if chain.get("drift"):
        out.print(f"drift from the original after {chain['turn']} edits: identity "
                  f"{chain['drift']['similarity']:.2f}", highlight=False)
    for warning in result.warnings:
        err.print(f"[yellow]note:[/] {warning}", highlight=False)
    if result.recipe.get("model", {}).get("random_weights"):
        err.print("[yellow]note:[/] this model has random weights (test model): the image is noise by design")


@app.command()
@handles_errors
def edit(
    inputs: Annotated[list[str], typer.Argument(help="Reference image(s) (1-4), then the instruction in quotes.",
                                                metavar="IMG [IMG...] INSTRUCTION")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (.png, .jpg or .webp).")],
    tier: Annotated[str, typer.Option(help=f"One of {', '.join(TIERS)}.")] = "dev",
    aspect: Annotated[str, typer.Option(help="match_input_image or W:H, e.g. " + ", ".join(ASPECT_PRESETS))]
    = "match_input_image",
    seed: Annotated[int | None, typer.Option(help="Seed (random when omitted; the one used is printed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (tier default: dev 28, fast 14).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance (default 2.5).")] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA file, optionally PATH:WEIGHT; repeatable.")] = None,
    strategy: Annotated[str, typer.Option(help="Several references: stitch, offset or index.")] = "stitch",
    role: Annotated[list[str] | None, typer.Option(help="Role per image in order: subject, garment, style, "
                                                   "background, object; repeatable.")] = None,
    geometry: Annotated[str, typer.Option(help="lock: exactly the input size or ratio; native: model size.")]
    = "lock",
    output_format: Annotated[str | None, typer.Option("--format", help="png, jpeg or webp (default: from -o).")]
    = None,
    identity_guard: GuardOpt = None,
    candidates: CandidatesOpt = None,
    pixel_lock: LockOpt = "auto",
    check: CheckOpt = True,
    safety_tolerance: Annotated[int | None, typer.Option(help="pro/max: BFL's moderation tolerance, 0 (strictest) "
                                                         "to 6 (BFL's default 2).")] = None,
    prompt_upsampling: Annotated[bool, typer.Option(help="pro/max: let BFL rewrite the prompt first.")] = False,
    model: ModelOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit one or more reference images with an instruction."""
    if len(inputs) < 2:
        raise InvalidRequest('give at least one image and an instruction: kontext edit photo.jpg "make it snowy" '
                             "-o out.png", field="instruction")
    *images, instruction = inputs
    request = EditRequest(
        references=_references(images, role), instruction=instruction, tier=tier, aspect_ratio=aspect, seed=seed,
        steps=steps, guidance=guidance, loras=[LoraSpec.parse(x) for x in lora or []], strategy=strategy,
        geometry=geometry, output_format=output_format or format_for_path(output).value, check_references=check,
        safety_tolerance=safety_tolerance, prompt_upsampling=prompt_upsampling,
        **_fidelity_options(identity_guard, candidates if candidates or tier.lower() not in HOSTED_TIERS else 1,
                            pixel_lock),
    )
    request.validate()
    editor = build_editor(_settings(model, base, device, memory_mode), on_status=lambda m: err.print(m))
    with progress_bars() as on_progress:
        result = editor.edit(request, on_progress=on_progress)
    _report(result, result.save(output), as_json)


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "scene"


@app.command()
@handles_errors
def series(
    references: Annotated[list[str], typer.Argument(help="Reference image(s) shared by every scene.")],
    prompts: Annotated[Path, typer.Option(help="Text file: one instruction per line (# comments allowed).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the images and contact sheet.")],
    tier: Annotated[str, typer.Option(help=f"One of {', '.join(TIERS)}.")] = "dev",
    aspect: Annotated[str, typer.Option(help="match_input_image or W:H.")] = "match_input_image",
    seed: Annotated[int | None, typer.Option(help="One seed for every scene (random when omitted).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance.")] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA PATH[:WEIGHT]; repeatable.")] = None,
    strategy: Annotated[str, typer.Option(help="stitch, offset or index.")] = "stitch",
    role: Annotated[list[str] | None, typer.Option(help="Role per reference, in order.")] = None,
    identity_guard: GuardOpt = None,
    candidates: CandidatesOpt = None,
    pixel_lock: LockOpt = "auto",
    model: ModelOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One reference set x many instructions: a campaign with a contact sheet."""
    if not prompts.is_file():
        raise InvalidRequest(f"prompts: file not found: {prompts}", field="prompts")
    lines = [ln.strip() for ln in prompts.read_text(encoding="utf-8").splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    request = EditRequest(
        references=_references(references, role), instruction=instructions[0] if instructions else "x", tier=tier,
        aspect_ratio=aspect, seed=seed, steps=steps, guidance=guidance,
        loras=[LoraSpec.parse(x) for x in lora or []], strategy=strategy,
        **_fidelity_options(identity_guard, candidates, pixel_lock),
    )
    editor = build_editor(_settings(model, base, device, memory_mode), on_status=lambda m: err.print(m))
    with progress_bars() as on_progress:
        res = editor.series(request, instructions, on_progress=on_progress)
    output.mkdir(parents=True, exist_ok=True)
    files = []
    for i, r in enumerate(res.results):
        files.append(str(r.save(output / f"{i + 1:02d}-{_slug(r.recipe['instruction'])}.png")))
    sheet = output / "contact_sheet.png"
    res.contact_sheet.save(sheet)
    summary = {"images": files, "contact_sheet": str(sheet), "seed": res.results[0].seed,
               "timings": res.timings, "scenes": [r.summary() for r in res.results]}
    (output / "series.json").write_text(json.dumps(summary, indent=2, default=str))
    if as_json:
        print_json(summary)
        return
    for f, r in zip(files, res.results, strict=True):
        line = _identity_line(r.identity)
        out.print(f"[green]saved[/] {f}" + (f"  ({line})" if line else ""), highlight=False)
    out.print(f"[green]contact sheet[/] {sheet}  ({len(files)} scenes, seed {summary['seed']}, "
              f"{res.timings['total']:.2f} s)")


@app.command()
@handles_errors
def replay(
    image: Annotated[Path, typer.Argument(help="An image made by kontext (its recipe is inside).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the re-run.")] = None,
    ref: Annotated[list[str] | None, typer.Option(help="Reference to use instead of the recorded path, "
                                                  "in order; repeatable.")] = None,
    model: ModelOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run the recipe embedded in IMAGE and say whether the pixels are identical."""
    import numpy as np
    from PIL import Image

    recipe = read_recipe(image)
    settings = _settings(model or recipe.get("model", {}).get("source"), base, device, memory_mode)
    editor = build_editor(settings, on_status=lambda m: err.print(m))
    with progress_bars() as on_progress:
        result, _ = editor.replay(image, references=ref, on_progress=on_progress)
    target = output or image.with_name(f"{image.stem}.replay{image.suffix}")
    result.save(target)
    with Image.open(image) as a, Image.open(target) as b:
        identical = a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    if as_json:
        print_json({"output": str(target), "identical": identical, **result.summary()})
        return
    _report(result, target, False)
    if identical:
        out.print("[green]identical[/] pixels to the original")
    else:
        out.print("[yellow]differs[/] from the original (another device, library version or model?)")


@app.command()
@handles_errors
def models(model: ModelOpt = None, base: BaseOpt = None, as_json: JsonOpt = False) -> None:
    """Tiers, credit prices, and where the weights were found (or how to get them)."""
    from kontext_studio.core.weights import locate

    settings = _settings(model, base, None, None)
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
    if as_json:
        print_json({"tiers": rows, "weights": status.as_dict()})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Kontext Studio tiers")
    for col in ("tier", "credits", "steps", "guidance", "refs", "status", "what it is"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["tier"], str(r["credits"]), str(r["steps"] or "-"), str(r["guidance"] or "-"),
                      str(r["max_references"]), escape(r["status"]), escape(r["description"]))
    out.print(table)
    for r in rows:
        out.print(f"[bold]{r['tier']}[/]: {escape(r['trades'])}", highlight=False)
    if status.found:
        kind = " [yellow](random test weights)[/]" if status.random_weights else ""
        out.print(f"weights: [green]found[/] {status.path}{kind}")
    else:
        out.print(f"weights: [red]missing[/]. {status.message}", soft_wrap=True)


@app.command()
@handles_errors
def doctor(model: ModelOpt = None, base: BaseOpt = None, device: DeviceOpt = None, as_json: JsonOpt = False) -> None:
    """Check torch, the device, VRAM, the memory mode that would be picked, and the weights."""
    from kontext_studio.cli.doctor import diagnose

    settings = _settings(model, base, device, None)
    report = diagnose(settings)
    report["bfl_api"] = (f"configured: pro and max go to {settings.bfl_base_url}" if settings.bfl_api_key else
                         "not configured: set BFL_API_KEY for the pro and max tiers (BFL_BASE_URL to use another "
                         "server)")
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        out.print(f"[bold]{key}[/]: {value}", soft_wrap=True, highlight=False)


@app.command("check-ref")
@handles_errors
def check_ref(
    images: Annotated[list[Path], typer.Argument(help="Reference photo(s) to check.")],
    expect_face: Annotated[bool, typer.Option(help="Report a missing face as a warning (portraits).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check reference photos before editing: resolution, blur, exposure, compression, faces, pose, filters."""
    from kontext_studio.analysis.reference_check import check_reference

    reports = {str(p): check_reference(p, expect_face=expect_face) for p in images}
    if as_json:
        print_json({path: r.as_dict() for path, r in reports.items()})
        return
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for path, report in reports.items():
        w, h = report.size
        out.print(f"[bold]{path}[/] ({w}x{h}, {report.faces} face(s))", highlight=False)
        if not report.findings:
            out.print("  [green]no problems found[/]")
        for f in report.findings:
            out.print(f"  [{colour[f.severity.value]}]{f.severity.value}[/] {f.code}: {f.message}\n"
                      f"      fix: {f.fix}", highlight=False)


@app.command()
@handles_errors
def coach(
    prompt: Annotated[str, typer.Argument(help="The instruction to check.")],
    refs: Annotated[int, typer.Option(help="How many reference images the edit will use.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Lint an editing instruction: what Kontext will misread, and a suggested rewrite."""
    from kontext_studio.analysis.prompt_coach import coach as run_coach

    report = run_coach(prompt, references=refs)
    if as_json:
        print_json(report.as_dict())
        return
    if not report.findings:
        out.print("[green]looks good[/]: one clear change, nothing that fights the reference.")
    for f in report.findings:
        span = f" \"{prompt[f.span[0]:f.span[1]]}\"" if f.span else ""
        out.print(f"[yellow]{f.code}[/]{span}: {f.message}\n    fix: {f.fix}", highlight=False)
    if report.rewrite:
        out.print(f"[bold]suggested:[/] {report.rewrite}", highlight=False)


@app.command()
@handles_errors
def identity(
    reference: Annotated[Path, typer.Argument(help="The reference photo (the subject).")],
    output: Annotated[Path, typer.Argument(help="The edited image.")],
    face_model: Annotated[Path | None, typer.Option(help="ArcFace-class ONNX model instead of dlib's ResNet.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Score whether OUTPUT keeps the subject of REFERENCE (faces, or feature consistency for objects)."""
    from kontext_studio.analysis.identity import OnnxFaceEmbedder, compare_identity
    from kontext_studio.core.images import load_reference

    ref, edited = load_reference(Reference(reference), 0), load_reference(Reference(output), 1)
    scorer = OnnxFaceEmbedder(str(face_model)) if face_model else None
    report = compare_identity(ref.image, edited.image, scorer=scorer)
    if as_json:
        print_json(report.as_dict())
        return
    data = report.as_dict()
    if report.measured:
        verdict = "[green]same person[/]" if report.same_person else "[red]different person[/]"
        out.print(f"{verdict}: similarity {report.similarity:.2f}, distance {report.distance:.3f} "
                  f"(threshold {report.threshold}, {report.method})", highlight=False)
    else:
        out.print(f"identity not measured: {report.reason}", highlight=False)
        cons = data.get("consistency") or {}
        if cons.get("measured"):
            out.print(f"object consistency: {cons['score']:.2f} ({cons['method']})", highlight=False)


@app.command("pixel-lock")
@handles_errors
def pixel_lock_cmd(
    original: Annotated[Path, typer.Argument(help="The input image of the edit.")],
    edited: Annotated[Path, typer.Argument(help="The edited image (any tool).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the repaired image.")],
    mask: Annotated[Path | None, typer.Option(help="Mask image, white = the area that was meant to change.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Undo drift (shift, zoom, colour cast) outside the edited area of EDITED, keeping the edit."""
    from kontext_studio.analysis.pixel_lock import pixel_lock
    from kontext_studio.core.images import load_reference
    from kontext_studio.core.provenance import ContentClaim, sign_file

    a, b = load_reference(Reference(original), 0), load_reference(Reference(edited), 1)
    m = load_reference(Reference(mask), 2).image.convert("L") if mask else None
    result = pixel_lock(a.image, b.image, mode="auto", mask=m)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(output)
    sign_file(output, ContentClaim(action="c2pa.edited", ai=False, tool="pixel-lock"), [edited, original])
    if as_json:
        print_json({"output": str(output), **result.as_dict()})
        return
    state = "[green]applied[/]" if result.applied else "[yellow]left alone[/]"
    out.print(f"{state}: {result.reason}; changed area {result.changed_fraction:.1%}; saved {output}",
              highlight=False)


@app.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 is single-user mode.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    fake_backend: Annotated[bool, typer.Option(help="Run every tier on the FAKE backend (test patterns, no "
                                               "model): for trying the API and UI only.")] = False,
    model: ModelOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
) -> None:
    """Start Kontext Studio: the web studio at / and the API (jobs run on the warm engine in-process)."""
    import uvicorn

    from kontext_studio.core.engine import Editor
    from kontext_studio.service.server import build_app

    settings = _settings(model, base, device, memory_mode)

    def editor_factory() -> Editor:
        if fake_backend:
            from kontext_studio.core.backends.fake import FakeBackend

            err.print("[yellow]fake backend:[/] outputs are test patterns, not edits")
            return Editor({"fake": FakeBackend()})
        return build_editor(settings, on_status=lambda m: err.print(m))

    application = build_app(settings, host, editor_factory, say=lambda m: out.print(m, highlight=False))
    out.print(f"Kontext Studio on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="info")


@app.command()
@handles_errors
def worker(hostname: Annotated[str | None, typer.Option(help="Celery worker name (default: host based).")] = None,
           ) -> None:
    """Run one Celery worker (one per GPU, concurrency 1) that executes queued jobs on the warm engine.

    Needs KONTEXT_BROKER_URL and KONTEXT_DATABASE_URL (PostgreSQL), and KONTEXT_HOME on storage shared with
    the API server.
    """
    from kontext_studio.service.jobs.dispatch_celery import run_worker
    from kontext_studio.service.server import celery_app

    run_worker(celery_app(Settings.from_env()), hostname=hostname)


admin = typer.Typer(help="Users, API keys and credits of the service database.", no_args_is_help=True)
app.add_typer(admin, name="admin")
app.add_typer(train_app, name="train-lora")
app.command("plan")(plan_command)
app.command()(verify)
provide_content_credentials(installation_credentials)  # every command's outputs are signed by this installation
register_tools(app)


def _accounts() -> Any:
    from kontext_studio.service.accounts import SqlAccounts
    from kontext_studio.service.db import make_engine, make_session_factory, upgrade

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.service_database_url)
    upgrade(engine)
    return SqlAccounts(make_session_factory(engine), free=settings.free)


def _user(accounts: Any, email: str) -> Any:
    user = accounts.get_user_by_email(email)
    if user is None:
        raise InvalidRequest(f"no user {email!r}; create it with: kontext admin create-user {email}", field="email")
    return user


@admin.command("create-user")
@handles_errors
def admin_create_user(
    email: Annotated[str, typer.Argument(help="The user's email (their login name).")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    is_admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
    credits: Annotated[int, typer.Option(help="Credits to grant now.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Create a user and their first API key (shown once)."""
    accounts = _accounts()
    user = accounts.create_user(email, name, is_admin=is_admin)
    if credits:
        accounts.grant(user.id, credits)
    key, _ = accounts.create_api_key(user.id, "first key")
    if as_json:
        print_json({"user_id": user.id, "email": email, "api_key": key, "credits": credits})
        return
    out.print(f"created {email} (id {user.id}) with {credits} credits\nAPI key (shown once): {key}", highlight=False)


@admin.command("create-key")
@handles_errors
def admin_create_key(email: str, name: Annotated[str, typer.Option(help="Label for the key.")] = "",
                     as_json: JsonOpt = False) -> None:
    """Create another API key for a user (shown once)."""
    accounts = _accounts()
    key, record = accounts.create_api_key(_user(accounts, email).id, name)
    if as_json:
        print_json({"api_key": key, "prefix": record.prefix})
        return
    out.print(f"API key (shown once): {key}", highlight=False)


@admin.command("grant")
@handles_errors
def admin_grant(email: str, credits: int, as_json: JsonOpt = False) -> None:
    """Grant credits to a user."""
    accounts = _accounts()
    balance = accounts.grant(_user(accounts, email).id, credits)
    if as_json:
        print_json({"available": balance.available, "held": balance.held})
        return
    out.print(f"{email}: {balance.available} credits available ({balance.held} held)", highlight=False)


@app.command("build-tiny-model")
@handles_errors
def build_tiny_model_cmd(
    output: Annotated[Path, typer.Argument(help="Folder to write the tiny model to.")],
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Build the tiny TEST model: real Kontext classes, RANDOM weights. For tests and dry runs only."""
    from kontext_studio.testing.tiny_model import build_tiny_model

    path = build_tiny_model(output, seed=seed)
    if as_json:
        print_json({"path": str(path), "random_weights": True})
        return
    out.print(f"[green]built[/] {path}  [yellow](random weights: for tests and dry runs only, its images are noise)[/]")
    out.print(f'try: kontext edit photo.jpg "make it snowy" -o out.png --model {path}')


def main() -> None:
    app()


if __name__ == "__main__":
    main()
