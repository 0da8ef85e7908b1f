"""Regenerate the tiny tokenizer files shipped in ``testing/tokenizers/``.

The tiny Kontext model needs a CLIP tokenizer (byte-level BPE: ``vocab.json`` + ``merges.txt``) and a T5
tokenizer (sentencepiece unigram: ``spiece.model``); the FLUX.2 [klein] and Qwen-Image-Edit models a Qwen
tokenizer (byte-level BPE with Qwen's special tokens and chat template), FLUX.2 [dev] a Mistral-style one
(byte-level BPE, ``[INST]``/``[SYSTEM_PROMPT]`` chat template). No model hub is reachable where the tests
run, so all are trained here on a small built-in corpus of editing instructions. The files are committed;
run ``python -m kontext_studio.testing.make_tokenizers`` only to change them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

OUT_DIR = Path(__file__).parent / "tokenizers"

_SUBJECTS = ["the woman", "the man", "the dog", "the cat", "the product", "the room", "her", "him", "it",
             "the car", "the bottle", "the chair", "the house", "the character"]
_CHANGES = ["on a beach at sunset", "as an oil painting", "in a navy suit", "in the snow", "at night",
            "in a red dress", "with warm lighting", "in watercolor style", "on a white background",
            "in a forest", "under studio lights", "wearing sunglasses", "in a city street", "as a sketch",
            "with a blue sky", "in the rain", "holding an umbrella", "in pixel art", "at golden hour"]
_VERBS = ["put", "make", "change", "turn", "show", "place", "keep", "render", "restyle", "relight"]


def corpus() -> list[str]:
    """Deterministic training sentences covering typical editing instructions."""
    lines = []
    for v in _VERBS:
        for s in _SUBJECTS:
            for c in _CHANGES:
                lines.append(f"{v} {s} {c}, keep the face and pose unchanged.")
    lines.append("0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz .,;:!?'\"-()")
    return lines


def make_clip(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    out.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_t5(out: Path) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        vocab_size=400,
        model_type="unigram",
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "spiece.model").write_bytes(buf.getvalue())


# Special tokens in the order the tiny configs expect their ids (0, 1, 2, ...).
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
MISTRAL_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[IMG]"]
BPE_VOCAB = 500

# Content may be a string or a list of {"type": "text"|"image"} parts (both pipelines send the list form).
_PARTS = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
          "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
          "{% elif part['type'] == 'image' %}IMAGE{% endif %}{% endfor %}{% endif %}")
QWEN_CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                      + _PARTS.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
                      + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_CHAT_TEMPLATE = ("<s>{% for message in messages %}{% if message['role'] == 'system' %}[SYSTEM_PROMPT]"
                         + _PARTS.replace("IMAGE", "[IMG]") + "[/SYSTEM_PROMPT]{% elif message['role'] == 'user' %}"
                         "[INST]" + _PARTS.replace("IMAGE", "[IMG]") + "[/INST]{% else %}"
                         + _PARTS.replace("IMAGE", "") + "</s>{% endif %}{% endfor %}")


def _byte_bpe(specials: list[str], extra: list[str]) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus() + extra, trainer=trainer)
    return tok


def make_qwen(out: Path) -> None:
    """A Qwen2-style tokenizer (``tokenizer.json`` + config with the chat template), ids as QWEN_SPECIALS."""
    tok = _byte_bpe(QWEN_SPECIALS, ["Describe the key features of the input image, then explain how the user's "
                                    "text instruction should alter or modify the image. Picture 1: "])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    config = {"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 1024, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None, "errors": "replace",
              "add_prefix_space": False, "chat_template": QWEN_CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def make_mistral(out: Path) -> None:
    """A Mistral-style tokenizer (``tokenizer.json`` + config with the chat template), ids as MISTRAL_SPECIALS."""
    tok = _byte_bpe(MISTRAL_SPECIALS, ["You are an AI that reasons about image descriptions. You give structured "
                                       "responses focusing on object relationships."])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024, "bos_token": "<s>",
              "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "chat_template": MISTRAL_CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def main() -> None:
    make_clip(OUT_DIR / "clip")
    make_t5(OUT_DIR / "t5")
    make_qwen(OUT_DIR / "qwen")
    make_mistral(OUT_DIR / "mistral")
    print(f"wrote tokenizer files under {OUT_DIR}")


if __name__ == "__main__":
    main()
