"""``kontext check-ref``, ``coach``, ``identity`` and ``pixel-lock``: the fidelity tools, no model needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kontext_studio.cli.common import JsonOpt
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import escape, handles_errors, loading, out, print_json

# Severity → colour: a problem stands out, a warning is a caution, an info note is quiet.
SEVERITY_STYLE = {"problem": "red", "error": "red", "warning": "yellow", "info": "cyan"}


def print_findings(findings: list[Any], indent: str = "  ", details: bool = False) -> None:
    """One line per finding: severity, plain message and fix; the measurement itself with ``details``."""
    for f in findings:
        sev = f.severity.value
        out.print(f"{indent}[{SEVERITY_STYLE.get(sev, 'white')}]{sev}[/] {escape(f.message)}", highlight=False)
        if f.fix:
            out.print(f"{indent}    fix: {escape(f.fix)}", highlight=False)
        if details and getattr(f, "detail", None):
            out.print(f"{indent}    measured: {escape(f.detail)}", highlight=False)


@handles_errors
def check_ref(
    images: Annotated[list[Path], typer.Argument(help="Reference photo(s) to check.", metavar="IMG...")],
    expect_face: Annotated[bool, typer.Option(help="The photo is a portrait: a missing face is a problem.")]
    = False,
    details: Annotated[bool, typer.Option("--details", help="Also show each measurement behind a finding.")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Check reference photos before editing: resolution, blur, exposure, compression, faces, pose, filters."""
    from kontext_studio.core.images import load_reference
    from kontext_studio.core.types import Reference

    for i, p in enumerate(images):  # an unreadable file is reported before OpenCV and dlib load
        load_reference(Reference(p), i)
    with loading("loading the photo checks"):
        from kontext_studio.analysis.reference_check import check_reference

    reports = {str(p): check_reference(p, expect_face=expect_face) for p in images}
    if as_json:
        print_json({path: r.as_dict() for path, r in reports.items()})
        return
    for path, report in reports.items():
        w, h = report.size
        faces = {0: "no face", 1: "1 face"}.get(report.faces, f"{report.faces} faces")
        out.print(f"[bold]{escape(path)}[/] ({w}x{h}, {faces})", highlight=False)
        if not report.findings:
            out.print("  [green]no problems found[/]")
        print_findings(report.findings, details=details)


@handles_errors
def coach(
    prompt: Annotated[str, typer.Argument(help="The instruction to check.", metavar="INSTRUCTION")],
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
        span = f' "{prompt[f.span[0]:f.span[1]]}"' if f.span else ""
        out.print(f"[yellow]{escape(f.code)}[/]{escape(span)}: {escape(f.message)}\n    fix: {escape(f.fix)}",
                  highlight=False)
    if report.rewrite:
        out.print(f"[bold]suggested:[/] {escape(report.rewrite)}", highlight=False)


def identity_words(report: Any) -> list[str]:
    """What an identity report means, in sentences (a lost face included, never a bare None)."""
    data = report.as_dict()
    if report.measured:
        if report.lost_faces:
            found = {0: "no face", 1: "1 face"}.get(report.output_faces, f"{report.output_faces} faces")
            return [f"face lost: the reference has {report.reference_faces} face(s), the edited image {found}; "
                    f"{report.lost_faces} face(s) of the reference are missing from the result"]
        verdict = "same person" if report.same_person else "different person"
        sim = "n/a" if report.similarity is None else f"{report.similarity:.2f}"
        return [f"{verdict}: similarity {sim} (0.50 or more is the same person)"]
    lines = [f"identity not measured: {report.reason}"]
    cons = data.get("consistency") or {}
    if cons.get("measured"):
        kept = {True: "looks the same as in the reference", False: "looks different from the reference",
                None: "unclear"}[cons.get("consistent")]
        lines.append(f"object: {kept} (match {cons['score']:.2f} of 1)")
    return lines


@handles_errors
def identity(
    reference: Annotated[Path, typer.Argument(help="The reference photo (the subject).", metavar="REFERENCE")],
    output: Annotated[Path, typer.Argument(help="The edited image.", metavar="EDITED")],
    face_model: Annotated[Path | None, typer.Option(metavar="ONNX", help="ArcFace-class ONNX model instead of "
                                                    "dlib's ResNet.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score whether EDITED keeps the subject of REFERENCE (faces, or feature consistency for objects)."""
    from kontext_studio.core.images import load_reference
    from kontext_studio.core.types import Reference

    ref, edited = load_reference(Reference(reference), 0), load_reference(Reference(output), 1)
    with loading("loading the face models"):
        from kontext_studio.analysis.identity import OnnxFaceEmbedder, compare_identity

    scorer = OnnxFaceEmbedder(str(face_model)) if face_model else None
    report = compare_identity(ref.image, edited.image, scorer=scorer)
    if as_json:
        print_json(report.as_dict())
        return
    colour = "green" if report.same_person else ("red" if report.measured else "yellow")
    for line in identity_words(report):
        out.print(f"[{colour}]{escape(line)}[/]", highlight=False)


@handles_errors
def pixel_lock_cmd(
    original: Annotated[Path, typer.Argument(help="The input image of the edit.", metavar="ORIGINAL")],
    edited: Annotated[Path, typer.Argument(help="The edited image (any tool).", metavar="EDITED")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE",
                                         help="Where to write the repaired image (.png, .jpg or .webp).")],
    mask: Annotated[Path | None, typer.Option(metavar="MASK", help="Mask image, white = the area that was meant "
                                              "to change.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Undo drift (shift, zoom, colour cast) outside the edited area of EDITED, keeping the edit."""
    from kontext_studio.cli.edit import output_format_for
    from kontext_studio.core.images import load_reference
    from kontext_studio.core.types import Reference

    fmt = output_format_for(output, None, format_flag=False)
    a, b = load_reference(Reference(original), 0), load_reference(Reference(edited), 1)
    m = load_reference(Reference(mask), 2).image.convert("L") if mask else None
    with loading("loading the alignment tools"):
        from kontext_studio.analysis.pixel_lock import pixel_lock

    result = pixel_lock(a.image, b.image, mode="auto", mask=m)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(output, format={"jpeg": "JPEG", "webp": "WEBP"}.get(fmt, "PNG"))
    from kontext_studio.core.provenance import ContentClaim, sign_file

    sign_file(output, ContentClaim(action="c2pa.edited", ai=False, tool="pixel-lock"), [edited, original])
    if as_json:
        print_json({"output": str(output), **result.as_dict()})
        return
    state = "[green]applied[/]" if result.applied else "[yellow]left alone[/]"
    out.print(f"{state}: {escape(result.reason)}; changed area {result.changed_fraction:.1%}; saved "
              f"{escape(str(output))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``check-ref``, ``coach``, ``identity`` and ``pixel-lock`` to ``app``."""
    app.command("check-ref", epilog=examples("kontext check-ref portrait.jpg --expect-face",
                                             "kontext check-ref product.png --details"))(check_ref)
    app.command(epilog=examples('kontext coach "put her on a beach at sunset"',
                                'kontext coach "she wears the navy suit from the second image" --refs 2'))(coach)
    app.command(epilog=examples("kontext identity portrait.jpg edited.png"))(identity)
    app.command("pixel-lock", epilog=examples("kontext pixel-lock photo.jpg edited.png -o fixed.png",
                                              "kontext pixel-lock photo.jpg edited.png -o fixed.png --mask "
                                              "area.png"))(pixel_lock_cmd)
