"""VAE latents and text embeddings, cached on disk by content hash and reused across runs.

Encoding is the expensive, repeated part of preprocessing (the T5 encoder alone is 4.7B parameters).
Keys combine the picture's SHA-256 (or the instruction text), the bucket size and a fingerprint of the
encoder's weights, so a second run on the same data, or a run that adds pairs, encodes only what is new,
and a different model never reads another model's latents.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from kontext_studio.training.buckets import fit_to_bucket

# Bytes of each sampled tensor that go into a weights fingerprint: enough to tell checkpoints apart
# without reading 10 GB of T5 weights on every start.
_SAMPLE_BYTES = 1 << 16
_SAMPLED_TENSORS = 16


def module_fingerprint(module: Any) -> str:
    """A short, stable id of a module's configuration and weights (sampled, not every byte).

    Args:
        module: a diffusers / transformers model.

    Returns:
        16 hex characters.
    """
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(raw, sort_keys=True, default=str).encode())
    params = list(module.state_dict().items())
    step = max(1, len(params) // _SAMPLED_TENSORS)
    for name, tensor in params[::step]:
        h.update(name.encode())
        flat = tensor.detach().reshape(-1)[: _SAMPLE_BYTES // max(1, tensor.element_size())]
        h.update(flat.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class EncodeCache:
    """Latents and prompt embeddings of one pipeline, in memory and (optionally) in ``folder``.

    Args:
        pipe: a ``FluxKontextPipeline`` (its VAE and text encoders are used).
        folder: where the ``.safetensors`` files go; ``None`` keeps everything in memory only.
    """

    def __init__(self, pipe: Any, folder: str | Path | None = None):
        self.pipe = pipe
        self.folder = Path(folder) if folder else None
        self._vae_id = module_fingerprint(pipe.vae)
        self._text_id = module_fingerprint(pipe.text_encoder) + module_fingerprint(pipe.text_encoder_2)
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def _get(self, kind: str, key: str, make: Any) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.folder / kind / f"{key}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            self.hits += 1
            value = load_file(str(path))
        else:
            self.misses += 1
            value = {k: v.detach().to("cpu").contiguous() for k, v in make().items()}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file(value, str(tmp))
                tmp.replace(path)  # atomic: a killed run never leaves half a file under the key
        self._memory[key] = value
        return value

    @torch.no_grad()
    def latents(self, path: Path, sha256: str, bucket: tuple[int, int]) -> torch.Tensor:
        """Normalised VAE latents (1, 16, h/8, w/8) of the picture at ``path`` cut to ``bucket``.

        Args:
            path: the picture.
            sha256: its file hash (the cache key).
            bucket: (width, height) it trains at.

        Returns:
            float32 latents on the CPU, shifted and scaled as the transformer sees them.
        """
        key = hashlib.sha256(f"{self._vae_id}|{sha256}|{bucket[0]}x{bucket[1]}".encode()).hexdigest()

        def make() -> dict[str, torch.Tensor]:
            vae = self.pipe.vae
            with Image.open(path) as img:
                pixels = to_pixels(fit_to_bucket(img, bucket))
            pixels = pixels.to(device=vae.device, dtype=vae.dtype)
            # The distribution's mean: deterministic, as ai-toolkit caches it.
            latent = vae.encode(pixels).latent_dist.mode()
            latent = (latent - vae.config.shift_factor) * vae.config.scaling_factor
            return {"latents": latent.float()}

        return self._get("latents", key, make)["latents"]

    @torch.no_grad()
    def prompt(self, text: str, max_sequence_length: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T5 and CLIP embeddings of ``text`` as the pipeline computes them at inference.

        Returns:
            (prompt_embeds, pooled_prompt_embeds, text_ids) on the CPU.
        """
        key = hashlib.sha256(f"{self._text_id}|{max_sequence_length}|{text}".encode()).hexdigest()

        def make() -> dict[str, torch.Tensor]:
            embeds, pooled, ids = self.pipe.encode_prompt(prompt=text, prompt_2=None,
                                                          device=self.pipe.text_encoder.device,
                                                          max_sequence_length=max_sequence_length)
            return {"embeds": embeds, "pooled": pooled, "ids": ids}

        v = self._get("text", key, make)
        return v["embeds"], v["pooled"], v["ids"]


def to_pixels(image: Image.Image) -> torch.Tensor:
    """RGB picture → (1, 3, H, W) tensor in [-1, 1], as the pipeline's image processor makes it."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
