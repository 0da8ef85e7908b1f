"""Cut-outs: background removal and replacement (IS-Net matte), portrait blur (MediaPipe person mask).

Both models run on the CPU (onnxruntime, ai-edge-litert) and are loaded once per process and model file.
The matte stays soft (0-255 alpha, hair and motion blur kept), never thresholded unless asked.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageFilter, ImageOps

from kontext_studio.tools.base import AUTO, ToolImageError, ToolParams, param
from kontext_studio.tools.models import model_path

_sessions: dict[Path, Any] = {}
_sessions_lock = threading.Lock()
ISNET_SIZE = 1024
SELFIE_SIZE = 256


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _isnet_session(path: Path) -> Any:
    with _sessions_lock:
        if path not in _sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = _threads()
            opts.log_severity_level = 3
            _sessions[path] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return _sessions[path]


def matte(image: Image.Image, model: str = "best", models: Path | None = None) -> Image.Image:
    """The foreground matte of a picture (IS-Net dichotomous segmentation).

    Args:
        image: any picture (RGB is used).
        model: "best" (IS-Net fp16, 88 MB) or "fast" (quantised, 44 MB).
        models: the tool models folder (default: the installed one).

    Returns:
        An L image of the picture's size: 255 = subject, 0 = background, soft in between.

    Raises:
        ToolModelMissing: the IS-Net files are not installed (says how to install them).
    """
    path = model_path("isnet" if model == "best" else "isnet-small", models)
    session = _isnet_session(path)
    rgb = image.convert("RGB")
    x = np.asarray(rgb.resize((ISNET_SIZE, ISNET_SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
    x = ((x - 128.0) / 256.0).transpose(2, 0, 1)[None]
    with _sessions_lock:  # one inference at a time per process: two at once only thrash 2-4 cores
        alpha = session.run(["output"], {"input": x})[0][0, 0]
    small = Image.fromarray(np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return small.resize(image.size, Image.Resampling.BILINEAR)


_litert: dict[Path, Any] = {}


def person_mask(image: Image.Image, models: Path | None = None) -> tuple[Image.Image, str]:
    """Where the person is (MediaPipe selfie segmentation; IS-Net's matte when that runtime is missing).

    Returns:
        (an L mask of the picture's size, the model used: "selfie" or "isnet").

    Raises:
        ToolModelMissing: neither model is installed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the runtime did not install on this platform: the general matte still finds people
        return matte(image, "best", models), "isnet"
    path = model_path("selfie", models)
    with _sessions_lock:
        if path not in _litert:
            interp = Interpreter(model_path=str(path), num_threads=_threads())
            interp.allocate_tensors()
            _litert[path] = interp
        interp = _litert[path]
        x = np.asarray(image.convert("RGB").resize((SELFIE_SIZE, SELFIE_SIZE), Image.Resampling.BILINEAR),
                       dtype=np.float32) / 255.0
        interp.set_tensor(interp.get_input_details()[0]["index"], x[None])
        interp.invoke()
        prob = interp.get_tensor(interp.get_output_details()[0]["index"])[0, :, :, 0].copy()
    small = Image.fromarray(np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    # The 256 px mask is coarse: a light blur after the upscale hides its steps at the silhouette.
    return small.resize(image.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1.5)), "selfie"


# -- remove background --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoveBackgroundParams(ToolParams):
    model: str = param("best", "best: IS-Net fp16 (sharper edges); fast: quantised IS-Net (half the size).",
                       choices=("best", "fast"))
    threshold: float | None = param(None, "Make the edge hard: alpha above this (0-1) becomes opaque, below it "
                                    "transparent; auto keeps soft edges (hair, fur).", minimum=0.01, maximum=0.99,
                                    auto=True)
    crop: bool = param(False, "Crop the result to the subject's bounding box.")


def remove_background(image: Image.Image, params: RemoveBackgroundParams = RemoveBackgroundParams(),
                      models: Path | None = None) -> Image.Image:
    """Cut the subject out: an RGBA picture with the background transparent and soft edges kept.

    Raises:
        ToolModelMissing: the IS-Net model is not installed.
        ToolImageError: ``crop`` asked but no subject was found.
    """
    alpha = matte(image, params.model, models)
    if params.threshold is not None:
        cut = round(params.threshold * 255)
        alpha = alpha.point(lambda v: 255 if v >= cut else 0)
    out = image.convert("RGB").convert("RGBA")
    out.putalpha(alpha)
    if params.crop:
        box = alpha.point(lambda v: 255 if v >= 16 else 0).getbbox()
        if box is None:
            raise ToolImageError("no subject was found to crop to", field="crop")
        out = out.crop(box)
    return out


# -- replace background -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplaceBackgroundParams(ToolParams):
    background: str = param("color", "color: a flat colour; blur: the photo's own background blurred; image: "
                            "the second image, scaled to cover.", choices=("color", "blur", "image"))
    color: str = param("#ffffff", "Background colour for background=color.", kind="color")
    blur: float = param(25.0, "Blur radius in % of 100 px for background=blur.", minimum=1, maximum=100)
    model: str = param("best", "best or fast IS-Net matte.", choices=("best", "fast"))


def replace_background(image: Image.Image, params: ReplaceBackgroundParams = ReplaceBackgroundParams(),
                       new_background: Image.Image | None = None, models: Path | None = None) -> Image.Image:
    """Put the subject on another background, through the same soft matte as background removal.

    Args:
        image: the photo.
        params: what the background becomes.
        new_background: the picture behind the subject when ``background="image"``.
        models: the tool models folder.

    Raises:
        ToolImageError: background=image without a second image.
        ToolModelMissing: the IS-Net model is not installed.
    """
    rgb = image.convert("RGB")
    alpha = matte(rgb, params.model, models)
    if params.background == "color":
        back = Image.new("RGB", rgb.size, ImageColor.getrgb(params.color)[:3])
    elif params.background == "blur":
        # Blur only the background: the subject is first filled from its surroundings so its colours do
        # not bleed into a halo around it.
        radius = params.blur * max(rgb.size) / 1000.0
        back = _blur_behind(rgb, alpha, radius)
    else:
        if new_background is None:
            raise ToolImageError("background=image needs a second image: the new background", field="images")
        back = ImageOps.fit(new_background.convert("RGB"), rgb.size, Image.Resampling.LANCZOS)
    return Image.composite(rgb, back, alpha)


def _blur_behind(rgb: Image.Image, alpha: Image.Image, radius: float) -> Image.Image:
    a = np.asarray(alpha, dtype=np.float32) / 255.0
    weight = 1.0 - a
    blurred = np.asarray(rgb.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    w_img = Image.fromarray(np.clip(weight * 255, 0, 255).astype(np.uint8), "L")
    w_img = w_img.filter(ImageFilter.GaussianBlur(radius))
    px = np.asarray(rgb, dtype=np.float32) * weight[..., None]
    num = np.asarray(Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
                     dtype=np.float32)
    den = np.asarray(w_img, dtype=np.float32)[..., None] / 255.0
    # Normalised convolution: the background's own colours fill in behind the subject; where the subject
    # covers everything nearby, the plain blur is the fallback.
    filled = np.where(den > 0.02, num / np.maximum(den, 1e-3), blurred)
    return Image.fromarray(np.clip(filled, 0, 255).astype(np.uint8), "RGB")


# -- portrait blur ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PortraitBlurParams(ToolParams):
    strength: float = param(40.0, "How blurred the background gets (0-100).", minimum=0, maximum=100)
    mask_model: str = param(AUTO, "auto: the person model (MediaPipe selfie); subject: the general IS-Net matte "
                            "(objects, pets).", choices=(AUTO, "subject"))


def portrait_blur(image: Image.Image, params: PortraitBlurParams = PortraitBlurParams(),
                  models: Path | None = None) -> tuple[Image.Image, str]:
    """Blur the background behind a person, keeping the person sharp.

    Returns:
        (the picture, the mask model used: "selfie" or "isnet").

    Raises:
        ToolModelMissing: the mask model is not installed.
    """
    rgb = image.convert("RGB")
    if params.mask_model == "subject":
        mask, used = matte(rgb, "best", models), "isnet"
    else:
        mask, used = person_mask(rgb, models)
    if params.strength <= 0:
        return rgb, used
    radius = params.strength * max(rgb.size) / 2500.0
    return Image.composite(rgb, _blur_behind(rgb, mask, radius), mask), used
