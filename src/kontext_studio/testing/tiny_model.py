"""Build a tiny FLUX.1 Kontext [dev] pipeline from the real diffusers/transformers classes.

Every component is the class the real 12B model uses, at a toy size and with random (seeded) weights,
so the engine, its loading code and its tests run offline in well under a second per edit. The images
it produces are noise-like: the model is for tests and dry runs only. The tokenizers come from the files
in ``testing/tokenizers/`` (trained locally, see ``make_tokenizers.py``); nothing touches a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKENIZER_DIR = Path(__file__).parent / "tokenizers"

# Written into the saved folder so every tool can tell a test model from real weights.
MARKER_FILE = "kontext_studio.json"
TINY_RESOLUTION = 128


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """Return the components of a tiny ``FluxKontextPipeline`` (random weights, seeded per component).

    Args:
        seed: base seed; each component is seeded from it so the model is reproducible.

    Returns:
        A dict of pipeline components accepted by ``FluxKontextPipeline(**components)``.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 patches, as in the real model
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            hidden_act="gelu",
            vocab_size=600,
            max_position_embeddings=77,
        )
    )
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=200,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # four blocks: the real model's 8x spatial compression
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR / "clip", model_max_length=77)
    tokenizer_2 = T5Tokenizer.from_pretrained(TOKENIZER_DIR / "t5", model_max_length=512)
    return {
        "scheduler": scheduler,
        "text_encoder": clip,
        "tokenizer": tokenizer,
        "text_encoder_2": t5,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "vae": vae,
        "image_encoder": None,
        "feature_extractor": None,
    }


FAMILIES = ("kontext", "klein", "flux2", "qwen")


def tiny_pipeline(family: str = "kontext", seed: int = 0) -> Any:
    """A tiny random-weight pipeline of ``family`` (kontext, klein, flux2 or qwen), in memory.

    Raises:
        ValueError: an unknown family, naming the known ones.
    """
    from kontext_studio.testing import tiny_families

    if family == "kontext":
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline(**tiny_components(seed))
    if family == "klein":
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline(**tiny_families.klein_components(seed))
    if family == "flux2":
        from diffusers import Flux2Pipeline

        return Flux2Pipeline(**tiny_families.flux2_components(seed))
    if family == "qwen":
        from diffusers import QwenImageEditPlusPipeline

        return QwenImageEditPlusPipeline(**tiny_families.qwen_components(seed))
    raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")


def build_tiny_model(out_dir: str | Path, seed: int = 0, family: str = "kontext") -> Path:
    """Save a tiny random-weight pipeline of ``family`` as a diffusers folder (1-3 MB).

    Args:
        out_dir: folder to write; created if missing.
        seed: weight seed.
        family: kontext (FLUX.1 Kontext), klein (FLUX.2 [klein]), flux2 (FLUX.2 [dev]) or qwen
            (Qwen-Image-Edit-2511).

    Returns:
        The folder path. It holds ``model_index.json`` plus a ``kontext_studio.json`` marker that labels
        the weights as random and sets the model's working resolution.

    Raises:
        ValueError: an unknown family.
    """
    out = Path(out_dir)
    pipe = tiny_pipeline(family, seed)
    pipe.save_pretrained(out)
    if family == "qwen":
        # Without torchvision the processor is an image-only subclass; the folder names the stock class so
        # that any diffusers install loads it.
        index = json.loads((out / "model_index.json").read_text())
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
        (out / "model_index.json").write_text(json.dumps(index, indent=2))
        proc_config = out / "processor" / "processor_config.json"
        if proc_config.is_file():
            data = json.loads(proc_config.read_text())
            data["processor_class"] = "Qwen2VLProcessor"
            proc_config.write_text(json.dumps(data, indent=2))
    (out / MARKER_FILE).write_text(
        json.dumps(
            {
                "kind": "tiny-test-model",
                "family": family,
                "random_weights": True,
                "note": "Random weights, for tests and dry runs only: its images are noise.",
                "resolution": TINY_RESOLUTION,
                "seed": seed,
            },
            indent=2,
        )
    )
    return out
