"""``kontext quantize``: write a GGUF or fp8 copy of a model's transformer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kontext_studio.cli.output import err, handles_errors, out, print_json
from kontext_studio.core.errors import InvalidRequest

FORMATS = "q8_0, q6_k, q5_k, q4_k or fp8"


def _transformer_source(src: Path, base: str | None) -> tuple[str, Path, Path | None]:
    """(class name, folder holding the transformer config, single file or None) for ``src``."""
    if src.is_dir():
        index = src / "model_index.json"
        if index.is_file():
            entry = json.loads(index.read_text()).get("transformer")
            if not entry or not (src / "transformer").is_dir():
                raise InvalidRequest(f"{src} has no transformer folder", field="src")
            return str(entry[1]), src, None
        config = src / "config.json"
        if config.is_file():
            name = json.loads(config.read_text()).get("_class_name", "")
            return str(name), src, None
        raise InvalidRequest(f"{src} is neither a diffusers model folder (model_index.json) nor a transformer "
                             "folder (config.json)", field="src")
    if src.is_file() and src.suffix.lower() in (".safetensors", ".sft"):
        if not base or not (Path(base) / "model_index.json").is_file():
            raise InvalidRequest("a single checkpoint file needs --base: the diffusers folder holding the model's "
                                 "configs", field="base")
        entry = json.loads((Path(base) / "model_index.json").read_text()).get("transformer")
        return str(entry[1]), Path(base), src
    raise InvalidRequest(f"SRC must be a diffusers folder, a transformer folder or a .safetensors file; got {src}",
                         field="src")


@handles_errors
def quantize(
    src: Annotated[Path, typer.Argument(help="A diffusers model folder, its transformer folder, or a single "
                                        ".safetensors checkpoint (with --base).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write (.gguf for GGUF formats, "
                                         ".safetensors for fp8).")],
    fmt: Annotated[str, typer.Option("--format", help=f"{FORMATS}.")] = "q8_0",
    base: Annotated[str | None, typer.Option(help="For a single checkpoint file: the diffusers folder with the "
                                             "configs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write a quantized copy of a model's transformer (GGUF Q8_0...Q4_K, or fp8 e4m3)."""
    from kontext_studio.core.quantize import WeightsFormatError, parse_format

    try:
        qfmt = parse_format(fmt)
    except WeightsFormatError as exc:
        raise InvalidRequest(f"--format: {exc}", field="format") from None
    if output.suffix.lower() != qfmt.suffix:
        raise InvalidRequest(f"--output for {qfmt.value} must end in {qfmt.suffix}; got {output.name}", field="output")
    class_name, config_dir, single = _transformer_source(src, base)
    from kontext_studio.bootstrap import quiet_third_party_logs

    quiet_third_party_logs()
    import diffusers

    from kontext_studio.core.quantize import ARCHITECTURES, weight_bytes, write_fp8, write_gguf

    if class_name not in ARCHITECTURES:
        raise InvalidRequest(f"{src}: {class_name or 'an unknown class'} is not a transformer of a local model family "
                             f"({', '.join(ARCHITECTURES)})", field="src")
    cls = getattr(diffusers, class_name)
    err.print(f"reading the {class_name} from {single or config_dir}")
    import torch

    if single is not None:
        model = cls.from_single_file(str(single), config=str(config_dir), subfolder="transformer",
                                     torch_dtype=torch.bfloat16)
    else:
        sub = "transformer" if (config_dir / "model_index.json").is_file() else None
        model = cls.from_pretrained(str(config_dir), subfolder=sub, torch_dtype=torch.bfloat16)
    err.print(f"writing {qfmt.value} to {output}")
    written = write_gguf(model, output, qfmt) if qfmt.is_gguf else write_fp8(model, output)
    bf16 = sum(p.numel() for p in model.parameters()) * 2
    size = written.stat().st_size
    result: dict[str, Any] = {"output": str(written), "format": qfmt.value, "bytes": size, "bf16_bytes": bf16,
                              "ratio_to_bf16": round(size / bf16, 3), "stored_bytes": weight_bytes(model)}
    if qfmt.is_gguf:
        from kontext_studio.core.quantize import inspect_gguf

        result["tensor_types"] = inspect_gguf(written).types
    if as_json:
        print_json(result)
        return
    base_hint = base or str(config_dir if (config_dir / "model_index.json").is_file() else "FOLDER")
    out.print(f"[green]wrote[/] {written} ({size / 2**20:.1f} MiB, {size / bf16:.2f}x of bf16)", highlight=False)
    key = catalogue_key(config_dir, class_name, bf16)
    model = f"{written}" if key is None else f"{key} --weights {written}"
    out.print(f"use it: kontext edit IMG \"...\" --model {model} --base {base_hint} -o out.png", highlight=False)


def catalogue_key(folder: Path, class_name: str, bf16_bytes: int) -> str | None:
    """The catalogue model a transformer belongs to, for the command that runs its quantized copy: None for
    Kontext (its file goes in ``--model`` itself); else by the folder's pipeline class (``model_index.json``),
    the model whose size is nearest where a pipeline has several (klein 4B and 9B)."""
    import json

    from kontext_studio.core.catalogue import CATALOGUE, Family

    if class_name == "FluxTransformer2DModel":
        return None
    try:
        pipeline = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        pipeline = None
    transformer_of = {"Flux2KleinPipeline": "Flux2Transformer2DModel", "Flux2Pipeline": "Flux2Transformer2DModel",
                      "QwenImageEditPlusPipeline": "QwenImageTransformer2DModel"}
    candidates = [e for e in CATALOGUE.local() if e.family is not Family.KONTEXT
                  and transformer_of.get(e.pipeline or "") == class_name
                  and (pipeline is None or e.pipeline == pipeline)]
    if not candidates:
        return None
    return min(candidates, key=lambda e: abs((e.memory_gb or 0) * 2**30 - bf16_bytes)).key


def register(app: typer.Typer) -> None:
    """Add ``quantize`` to ``app``."""
    app.command("quantize")(quantize)
