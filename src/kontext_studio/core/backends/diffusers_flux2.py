"""The FLUX.2 families on this machine: FLUX.2 [klein] (``Flux2KleinPipeline``, Qwen3 text encoder) and
FLUX.2 [dev] (``Flux2Pipeline``, Mistral-Small-3 text encoder).

Both take several references natively: each reference is VAE-encoded on its own and gets its own time
coordinate in the 4-D position ids, so the ``native`` strategy hands the stock pipeline the images in
order. With no reference they generate from the text alone. The subclasses below only cache the stock
prompt and reference encoders (see ``diffusers_family``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from PIL import Image

from kontext_studio.core.backends.base import GenerationPlan
from kontext_studio.core.backends.diffusers_family import CachingMixin, DiffusersFamilyBackend


class KleinEditPipeline(CachingMixin, Flux2KleinPipeline):
    """``Flux2KleinPipeline`` with cached prompt embeddings and reference latents."""

    def encode_prompt(self, prompt: Any, device: Any = None, num_images_per_prompt: int = 1,
                      prompt_embeds: torch.Tensor | None = None, max_sequence_length: int = 512,
                      text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt_embeds is not None or num_images_per_prompt != 1:
            return super().encode_prompt(prompt, device, num_images_per_prompt, prompt_embeds,
                                         max_sequence_length, text_encoder_out_layers)
        key = (str(prompt), max_sequence_length, tuple(text_encoder_out_layers), str(device))
        # The text encoder sees only the text: the cache key need not include the references.
        self._prompt_context = ()
        return self.cached_prompt(key, lambda: super(KleinEditPipeline, self).encode_prompt(
            prompt, device, 1, None, max_sequence_length, text_encoder_out_layers))


class Flux2EditPipeline(CachingMixin, Flux2Pipeline):
    """``Flux2Pipeline`` with cached prompt embeddings and reference latents."""

    def encode_prompt(self, prompt: Any, device: Any = None, num_images_per_prompt: int = 1,
                      prompt_embeds: torch.Tensor | None = None, max_sequence_length: int = 512,
                      text_encoder_out_layers: tuple[int, ...] = (10, 20, 30)) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt_embeds is not None or num_images_per_prompt != 1:
            return super().encode_prompt(prompt, device, num_images_per_prompt, prompt_embeds,
                                         max_sequence_length, text_encoder_out_layers)
        key = (str(prompt), max_sequence_length, tuple(text_encoder_out_layers), str(device))
        self._prompt_context = ()
        return self.cached_prompt(key, lambda: super(Flux2EditPipeline, self).encode_prompt(
            prompt, device, 1, None, max_sequence_length, text_encoder_out_layers))


class Flux2KleinBackend(DiffusersFamilyBackend):
    """FLUX.2 [klein] 4B / 9B (distilled: guidance has no effect, 4 steps)."""

    edit_class = KleinEditPipeline

    def call_arguments(self, plan: GenerationPlan, images: list[Image.Image]) -> dict[str, Any]:
        return {"prompt": plan.instruction, "image": images or None, "guidance_scale": plan.guidance}


class Flux2DevBackend(DiffusersFamilyBackend):
    """FLUX.2 [dev] (guidance embedded in the transformer, one pass per step)."""

    edit_class = Flux2EditPipeline

    def call_arguments(self, plan: GenerationPlan, images: list[Image.Image]) -> dict[str, Any]:
        return {"prompt": plan.instruction, "image": images or None, "guidance_scale": plan.guidance}
