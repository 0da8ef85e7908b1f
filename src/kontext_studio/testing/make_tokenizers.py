"""Regenerate the tiny tokenizer files shipped in ``testing/tokenizers/``.

The tiny test model needs a CLIP tokenizer (byte-level BPE: ``vocab.json`` + ``merges.txt``) and a T5
tokenizer (sentencepiece unigram: ``spiece.model``). No model hub is reachable where the tests run, so
both are trained here on a small built-in corpus of editing instructions. The files are committed; run
``python -m kontext_studio.testing.make_tokenizers`` only to change them.
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


def main() -> None:
    make_clip(OUT_DIR / "clip")
    make_t5(OUT_DIR / "t5")
    print(f"wrote tokenizer files under {OUT_DIR}")


if __name__ == "__main__":
    main()
