"""Tiny random-weight pipelines of the FLUX.2 [klein], FLUX.2 [dev] and Qwen-Image-Edit families.

Like the tiny Kontext model (``tiny_model.py``), every component is the class the real model uses (the
text encoders too: Qwen3 for klein, Mistral-3 for FLUX.2 [dev], Qwen2.5-VL with its processor for
Qwen-Image-Edit), at a toy size with seeded random weights, and the tokenizers are the locally trained
files in ``testing/tokenizers/``. The VAEs keep the real 8x spatial compression so the engine's geometry
(multiples of 16) holds; the text encoders keep enough layers for the stock pipelines' default
hidden-state picks (klein reads layers 9/18/27, FLUX.2 [dev] 10/20/30). Their images are noise.
"""

from __future__ import annotations

from typing import Any

from kontext_studio.testing.make_tokenizers import MISTRAL_SPECIALS, QWEN_SPECIALS
from kontext_studio.testing.tiny_model import TOKENIZER_DIR

LATENT_CHANNELS = 4


def _flux2_vae(seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    return AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False)


def _flux2_transformer(seed: int, text_dim: int, guidance_embeds: bool) -> Any:
    import torch
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=text_dim, timestep_guidance_channels=32,
        axes_dims_rope=[4, 4, 4, 4], guidance_embeds=guidance_embeds)


def klein_components(seed: int = 0) -> dict[str, Any]:
    """Components of a tiny ``Flux2KleinPipeline`` (distilled, like klein 4B/9B)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    hidden = 16
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=500, hidden_size=hidden, intermediate_size=16, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=QWEN_SPECIALS.index("<|im_start|>"), eos_token_id=QWEN_SPECIALS.index("<|im_end|>"),
        pad_token_id=QWEN_SPECIALS.index("<|endoftext|>")))
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": _flux2_vae(seed + 2),
        "text_encoder": text_encoder,
        "tokenizer": Qwen2TokenizerFast.from_pretrained(TOKENIZER_DIR / "qwen"),
        "transformer": _flux2_transformer(seed, 3 * hidden, guidance_embeds=False),
        "is_distilled": True,
    }


def flux2_components(seed: int = 0) -> dict[str, Any]:
    """Components of a tiny ``Flux2Pipeline`` (FLUX.2 [dev]: guidance embedded, Mistral-3 encoder)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, Mistral3Config, Mistral3ForConditionalGeneration

    hidden = 16
    ids = {name: MISTRAL_SPECIALS.index(tok) for name, tok in
           (("pad_token_id", "<pad>"), ("bos_token_id", "<s>"), ("eos_token_id", "</s>"))}
    torch.manual_seed(seed + 1)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": 500, "hidden_size": hidden, "intermediate_size": 16,
                     "max_position_embeddings": 1024, "num_attention_heads": 2, "num_hidden_layers": 31,
                     "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 1e9,
                     "sliding_window": None, **ids},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 16, "image_size": 32, "patch_size": 8, "num_channels": 3, "head_dim": 8},
        image_token_index=MISTRAL_SPECIALS.index("[IMG]"), spatial_merge_size=1, **ids))
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": _flux2_vae(seed + 2),
        "text_encoder": text_encoder,
        "tokenizer": AutoTokenizer.from_pretrained(TOKENIZER_DIR / "mistral"),
        "transformer": _flux2_transformer(seed, 3 * hidden, guidance_embeds=True),
    }


def qwen_components(seed: int = 0) -> dict[str, Any]:
    """Components of a tiny ``QwenImageEditPlusPipeline`` (Qwen2.5-VL encoder with its image processor)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

    from kontext_studio.core.backends.qwen_processor import make_processor

    torch.manual_seed(seed)
    # Two blocks, as a step cache needs (a first block to measure the change, the rest to skip).
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=LATENT_CHANNELS * 4, out_channels=LATENT_CHANNELS, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS)
    torch.manual_seed(seed + 2)
    special = {name: QWEN_SPECIALS.index(tok) for name, tok in
               (("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
                ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                ("bos_token_id", "<|im_start|>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"))}
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": 500, "max_position_embeddings": 2048,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1e6, **{k: v for k, v in special.items() if k.endswith(("bos_token_id",
                                                                                             "eos_token_id",
                                                                                             "pad_token_id"))}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": 16},
        hidden_size=16, vocab_size=500, **special))
    tokenizer = Qwen2TokenizerFast.from_pretrained(TOKENIZER_DIR / "qwen")
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5,
                                                     max_shift=0.9, shift_terminal=0.02, use_dynamic_shifting=True),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": make_processor(tokenizer),
        "transformer": transformer,
    }
