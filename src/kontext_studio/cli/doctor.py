"""``kontext doctor``: what this machine would do with the real model."""

from __future__ import annotations

from typing import Any

from kontext_studio.bootstrap import model_source
from kontext_studio.settings import Settings

GiB = 1024**3
# FLUX.1 Kontext [dev] component sizes in bf16 (12B transformer, T5-XXL, CLIP-L, VAE).
REAL_MODEL_BYTES = {"transformer": 23.8 * GiB, "text_encoder_2": 9.5 * GiB, "text_encoder": 0.25 * GiB,
                    "vae": 0.17 * GiB}
REAL_BLOCK_BYTES = int(0.3 * GiB)


def diagnose(settings: Settings) -> dict[str, Any]:
    """A JSON-ready report: versions, device, free VRAM, memory mode, weights."""
    report: dict[str, Any] = {}
    try:
        import torch
    except ImportError:
        report["torch"] = "not installed: run `make install` (installs torch==2.13.0 first)"
        return report
    from kontext_studio.core.device import choose_memory_mode, free_vram, pick_device, pick_dtype_name
    from kontext_studio.core.weights import locate

    report["torch"] = torch.__version__
    try:
        import diffusers

        report["diffusers"] = diffusers.__version__
    except ImportError:
        report["diffusers"] = "not installed: pip install -e '.[gpu]'"
    device = pick_device(settings.device)
    report["device"] = device
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    report["dtype"] = pick_dtype_name(device, settings.dtype)
    free = free_vram(device)
    if free is not None:
        report["free_vram"] = f"{free / GiB:.1f} GiB"
    elif device == "cpu":
        report["free_vram"] = "no GPU: running on the CPU"
    else:
        report["free_vram"] = "shared with system memory (unified memory: not measured separately)"
    if device == "cpu":
        report["memory_mode"] = "none (CPU: works, but a 28-step 1 MP edit takes hours; use a GPU)"
    elif free is None:
        report["memory_mode"] = "model_offload (unified memory)"
    else:
        mode, reason = choose_memory_mode(free, int(sum(REAL_MODEL_BYTES.values())),
                                          int(REAL_MODEL_BYTES["transformer"]), REAL_BLOCK_BYTES)
        report["memory_mode"] = f"{mode.value} ({reason})"
    from kontext_studio.cli.plan import machine_plan_line

    report["plan"] = machine_plan_line()
    status = locate(model_source(settings), settings.hf_token, download=False)
    report["weights"] = (f"found at {status.path}" + (" (random test weights)" if status.random_weights else "")
                         if status.found else f"missing: {status.message}")
    report["hf_token"] = "set" if settings.hf_token else "not set"
    report["advisories"] = _advisories()
    return report


def _advisories() -> str | list[str]:
    """Known security advisories affecting installed packages (Pillow and the web stack)."""
    try:
        from kontext_studio.service.security.advisories import check_installed
    except ImportError:  # the service extra is not installed
        return "not checked: pip install -e '.[service]'"
    hits = check_installed()
    return [str(h) for h in hits] if hits else "none known for the installed Pillow and web stack"
