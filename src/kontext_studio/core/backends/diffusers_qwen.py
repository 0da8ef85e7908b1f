"""Qwen-Image-Edit-2509/2511 on this machine: ``QwenImageEditPlusPipeline`` (Qwen2.5-VL encoder).

The encoder sees the reference pictures (at about 384x384) as well as the text, so cached prompt
embeddings are keyed by the text and the references. The stock pipeline VAE-encodes each reference at
about 1 MP itself and takes 1-3 references natively. It only edits (no text-to-image), and uses real
classifier-free guidance (``true_cfg_scale``, two transformer passes per step) with a blank negative prompt.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as stock_module
from PIL import Image

from kontext_studio.core.backends.base import GenerationPlan
from kontext_studio.core.backends.diffusers_family import CachingMixin, DiffusersFamilyBackend
from kontext_studio.core.backends.qwen_processor import load_processor
from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.weights import ModelSource, WeightsStatus, locate

NEGATIVE_PROMPT = " "  # the Qwen-Image-Edit model card's blank negative prompt
STOCK_RESOLUTION = 1024
_SIZES_LOCK = threading.Lock()


class QwenEditPipeline(CachingMixin, QwenImageEditPlusPipeline):
    """``QwenImageEditPlusPipeline`` with cached prompt embeddings and reference latents."""

    def encode_prompt(self, prompt: Any, image: Any = None, device: Any = None, num_images_per_prompt: int = 1,
                      prompt_embeds: torch.Tensor | None = None, prompt_embeds_mask: torch.Tensor | None = None,
                      max_sequence_length: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        parent = super().encode_prompt
        if prompt_embeds is not None or num_images_per_prompt != 1 or not self._prompt_context:
            return parent(prompt, image, device, num_images_per_prompt, prompt_embeds,
                          prompt_embeds_mask, max_sequence_length)
        key = (str(prompt), max_sequence_length, str(device))
        return self.cached_prompt(key, lambda: parent(prompt, image, device, 1, None, None,
                                                      max_sequence_length))


def condition_area(resolution: int) -> int:
    """The pixel area of the encoder's copy of each reference at this working resolution."""
    if resolution == STOCK_RESOLUTION:
        return int(stock_module.CONDITION_IMAGE_SIZE)
    return max(56 * 56, int(384 * 384 * (resolution / STOCK_RESOLUTION) ** 2))


def widest_ratio(resolution: int) -> float:
    """The most elongated reference (long side / short side) the stock pipeline can size.

    It resizes the encoder's copy to a fixed area with both sides rounded to multiples of 32, so a short side
    under 16 px rounds to 0 (about 576:1 with real weights).
    """
    return condition_area(resolution) / (16 * 16)


@contextlib.contextmanager
def stock_sizes(resolution: int) -> Iterator[None]:
    """Scale the stock pipeline's reference sizes (1 MP for the VAE, 384x384 for the encoder) to a model
    whose working size is not 1024 (the tiny test model); a no-op for real weights."""
    if resolution == STOCK_RESOLUTION:
        yield
        return
    scale = (resolution / STOCK_RESOLUTION) ** 2
    with _SIZES_LOCK:
        saved = stock_module.VAE_IMAGE_SIZE, stock_module.CONDITION_IMAGE_SIZE
        stock_module.VAE_IMAGE_SIZE = int(saved[0] * scale)
        stock_module.CONDITION_IMAGE_SIZE = condition_area(resolution)
        try:
            yield
        finally:
            stock_module.VAE_IMAGE_SIZE, stock_module.CONDITION_IMAGE_SIZE = saved


class QwenImageEditBackend(DiffusersFamilyBackend):
    """Qwen-Image-Edit-2511 (and 2509, same pipeline)."""

    edit_class = QwenEditPipeline

    def extra_components(self, status: WeightsStatus) -> dict[str, Any]:
        # Without torchvision, transformers cannot build the stock processor: build it from the folder.
        folder = status.path if status.source.kind != "single_file" else None
        if folder is None and status.source.base:
            folder = locate(ModelSource.parse(status.source.base), self.token).path
        processor = load_processor(folder) if folder else None
        return {"processor": processor} if processor is not None else {}

    def reference_images(self, plan: GenerationPlan) -> list[Image.Image]:
        # The stock pipeline sizes each reference itself (encoder and VAE sizes): hand over the pictures.
        limit = widest_ratio(self.resolution)
        for index, ref in enumerate(plan.references, start=1):
            w, h = ref.image.size
            if max(w, h) / max(1, min(w, h)) > limit:
                raise InvalidRequest(
                    f"reference {index} is {w}x{h}, more elongated than Qwen-Image-Edit can read "
                    f"(at most {limit:.0f}:1); crop it closer to the subject or use another model")
        return [ref.image.convert("RGB") for ref in plan.references]

    def call_arguments(self, plan: GenerationPlan, images: list[Image.Image]) -> dict[str, Any]:
        return {"prompt": plan.instruction, "image": images, "negative_prompt": NEGATIVE_PROMPT,
                "true_cfg_scale": plan.guidance}

    def call_context(self) -> Any:
        return stock_sizes(self.resolution)
