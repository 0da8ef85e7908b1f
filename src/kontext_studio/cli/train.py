"""``kontext train-lora``: check a pair dataset, train a Kontext [dev] LoRA, resume, export."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from kontext_studio.cli.output import err, escape, handles_errors, out, print_json
from kontext_studio.core.errors import InvalidRequest

app = typer.Typer(help="Train FLUX.1 Kontext [dev] LoRAs from before/after pairs.", no_args_is_help=True)

F = TypeVar("F", bound=Callable[..., Any])
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout (progress stays on stderr).")]
ControlOpt = Annotated[Path | None, typer.Option(help="Folder of the source pictures (ai-toolkit layout) when it "
                                                 "is not DATASET/control.")]
InstructionOpt = Annotated[str | None, typer.Option("--instruction", help="Instruction for pairs without a caption.")]
MinSideOpt = Annotated[int | None, typer.Option(help="Shortest side a picture may have, in pixels (default: half the "
                                                "training resolution, 256 at 512).")]
EXIT_DATASET = 2




def _print_report(report: Any) -> None:
    colour = {"error": "red", "warning": "yellow"}
    head, *rest = report.summary().splitlines()
    state = "[green]ok[/]" if report.ok else "[red]not trainable as is[/]"
    out.print(f"{state}  {escape(head)}", highlight=False)
    for line in rest:
        sev = line.split(" ", 1)[0]
        out.print(f"  [{colour.get(sev, 'white')}]{escape(sev)}[/]{escape(line[len(sev):])}", highlight=False,
                  soft_wrap=True)


@app.command()
@handles_errors
def check(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (ai-toolkit layout or with manifest.csv/.jsonl) "
                                            "or a manifest file.")],
    control: ControlOpt = None,
    instruction: InstructionOpt = None,
    min_side: MinSideOpt = None,
    resolution: Annotated[int, typer.Option(help="The training size the pictures are checked for.")] = 512,
    as_json: JsonOpt = False,
) -> None:
    """Check a dataset before training (partners, unreadable or tiny pictures, aspect, captions, duplicates).

    Exits 2 when a pair has an error.
    """
    from kontext_studio.training.dataset import check_dataset, min_side_for

    report = check_dataset(dataset, control, instruction,
                           min_side if min_side is not None else min_side_for(resolution))
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_DATASET)


def _parse_targets(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command("run")
@handles_errors
def run(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder or manifest file (see `check`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder: lora.safetensors, checkpoints/, "
                                         "metrics.csv, validation/.")],
    model: Annotated[str | None, typer.Option(help="Hub repo id, diffusers folder or single checkpoint file "
                                              "(default: KONTEXT_MODEL or the official repo).")] = None,
    base: Annotated[str | None, typer.Option(help="For a single-file checkpoint: where the other parts are.")]
    = None,
    control: ControlOpt = None,
    instruction: InstructionOpt = None,
    min_side: MinSideOpt = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    rank: Annotated[int, typer.Option(help="LoRA rank (4-32 typical).")] = 16,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default: the rank).")] = None,
    targets: Annotated[str | None, typer.Option(help="Comma-separated module-name suffixes to adapt "
                                                "(default: attention and MLP projections of every block).")]
    = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 1,
    resolution: Annotated[int | None, typer.Option(help="Training size: 512, 768, 1024 (default: 512, or the "
                                                   "test model's size). 512 on 24 GB needs --base-precision fp8 "
                                                   "and --gradient-checkpointing.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the adapter, batches, noise and timesteps.")] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations: less memory, slower.")]
    = False,
    optimizer: Annotated[str, typer.Option(help="adamw or adamw8bit (bitsandbytes, CUDA).")] = "adamw",
    base_precision: Annotated[str, typer.Option(help="How the frozen transformer is stored: model (as loaded, "
                                                "bf16 on CUDA) or fp8 (block weights in float8, upcast per "
                                                "layer; needs --gradient-checkpointing). fp8 is what brings "
                                                "512 px rank 16 under 24 GB: an estimate until measured, see "
                                                "docs/training.md. The adapter is float32 either way.")]
    = "model",
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 250,
    validate_every: Annotated[int, typer.Option(help="Validation edits every N steps (0: never).")] = 250,
    validation_pairs: Annotated[int, typer.Option(help="Pairs held back for validation.")] = 2,
    validation_steps: Annotated[int, typer.Option(help="Denoising steps of a validation edit.")] = 20,
    resume: Annotated[Path | None, typer.Option(help="Continue from a checkpoint folder (or the run folder's "
                                                "latest checkpoint).")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of hyper-parameters (TrainConfig fields); "
                                                "options given on the command line are ignored then.")] = None,
    export_kohya: Annotated[bool, typer.Option(help="Also write lora_kohya.safetensors (kohya / ComfyUI).")]
    = False,
    skip_bad_pairs: Annotated[bool, typer.Option(help="Train on the usable pairs even when others have "
                                                 "errors.")] = False,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:1 or cpu.")] = "auto",
    cache_dir: Annotated[Path | None, typer.Option(help="Latent and embedding cache shared between runs "
                                                   "(default: KONTEXT_HOME/cache/training).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA on before/after pairs; Ctrl-C writes a checkpoint (continue with --resume)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from kontext_studio.bootstrap import quiet_third_party_logs
    from kontext_studio.cli.output import loading
    from kontext_studio.core.weights import ModelSource, locate
    from kontext_studio.settings import Settings
    from kontext_studio.training.config import TrainConfig
    from kontext_studio.training.dataset import check_dataset, min_side_for

    settings = Settings.from_env()
    source = model or settings.model
    if config is not None:
        try:
            raw = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"--config: cannot read {config} as JSON ({exc})", field="config") from None
        cfg = TrainConfig.from_dict(raw)
    else:
        cfg = TrainConfig(steps=steps, rank=rank, alpha=alpha, learning_rate=lr, batch_size=batch_size,
                          resolution=resolution or 512, seed=seed, gradient_checkpointing=gradient_checkpointing,
                          optimizer=optimizer, base_precision=base_precision, checkpoint_every=checkpoint_every,
                          validate_every=validate_every,
                          validation_pairs=validation_pairs, validation_steps=validation_steps,
                          default_instruction=instruction)
        if t := _parse_targets(targets):
            cfg.target_modules = t
        if resolution is None:
            # A model that works below 512 px (the tiny test model, 128) trains at its own size; its weights
            # folder says so without loading anything.
            found = locate(ModelSource.parse(source, base=base or settings.base_model), settings.hf_token)
            if found.found and found.resolution < cfg.resolution:
                cfg.resolution = found.resolution
    cfg.validate()  # a bad option is reported before minutes of loading weights
    report = check_dataset(dataset, control, instruction,
                           min_side if min_side is not None else min_side_for(cfg.resolution))
    if report.errors and not (skip_bad_pairs and report.usable):
        if as_json:
            print_json({"error": {"code": "invalid_dataset", "message": "the dataset has errors"},
                        "report": report.as_dict()})
        else:
            _print_report(report)
            err.print("[red]error:[/] fix the pairs above or pass --skip-bad-pairs to train on the usable ones")
        raise typer.Exit(EXIT_DATASET)
    with loading("loading torch and diffusers"):
        quiet_third_party_logs()
        from kontext_studio.training.trainer import LoraTrainer, StepInfo, load_pipeline
    err.print(f"loading {escape(str(source))}", highlight=False)
    pipe, described, model_resolution = load_pipeline(source, base or settings.base_model,
                                                      device=device, token=settings.hf_token,
                                                      allow_download=settings.allow_download,
                                                      base_precision=cfg.base_precision)
    if resolution is None and config is None and model_resolution < cfg.resolution:
        cfg.resolution = model_resolution  # the tiny test model works at 128 px
    cfg.validate()
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err) as progress:
        task = progress.add_task("training", total=cfg.steps, loss="-")

        def on_step(info: StepInfo) -> None:
            progress.update(task, completed=info.step, loss=f"{info.loss:.4f}")

        trainer = LoraTrainer(pipe, cfg, output, base_model=described,
                              cache_dir=cache_dir or settings.home / "cache" / "training", on_step=on_step,
                              on_event=lambda m: progress.console.print(m, highlight=False) if not
                              m.startswith("encoded") else None, export_kohya=export_kohya)
        result = trainer.train(report, resume=resume)
    summary = {k: v for k, v in result.as_dict().items() if k != "losses"}
    if as_json:
        print_json(summary)
    else:
        first = result.validations[0] if result.validations else None
        last = result.validations[-1] if result.validations else None
        if result.lora_path:
            out.print(f"[green]saved[/] {escape(str(result.lora_path))}  (step {result.step}, loss "
                      f"{result.losses[-1]:.4f}, {result.seconds:.1f} s)", highlight=False)
            out.print(escape(f"use it: kontext edit photo.jpg \"...\" -o out.png --lora {result.lora_path}:1.0"),
                      highlight=False)
        if result.kohya_path:
            out.print(f"[green]kohya / ComfyUI layout[/] {escape(str(result.kohya_path))}", highlight=False)
        if first and last and last is not first:
            out.print(f"held-out distance to target: {first['latent_distance']:.4f} at step {first['step']} -> "
                      f"{last['latent_distance']:.4f} at step {last['step']} (latents)", highlight=False)
        if result.status != "completed":
            err.print(f"[yellow]{result.status}[/] " + escape(
                f"at step {result.step}; checkpoint {result.checkpoint}; continue with: kontext train-lora run "
                f"{dataset} -o {output} --resume {output}"), highlight=False)
    if result.status == "interrupted":
        raise typer.Exit(130)


@app.command()
@handles_errors
def export(
    lora: Annotated[Path, typer.Argument(help="A diffusers-format adapter made by `train-lora run`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the kohya / ComfyUI file.")],
    as_json: JsonOpt = False,
) -> None:
    """Write the kohya / ComfyUI key layout of a trained adapter."""
    if not lora.is_file():  # before torch loads
        raise InvalidRequest(f"export: file not found: {lora}", field="lora")
    from kontext_studio.training.export import export_kohya

    path = export_kohya(lora, output)
    if as_json:
        print_json({"output": str(path)})
    else:
        out.print(f"[green]saved[/] {escape(str(path))}", highlight=False)


def register(parent: typer.Typer) -> None:
    """Add the ``train-lora`` group to ``parent``."""
    parent.add_typer(app, name="train-lora")
