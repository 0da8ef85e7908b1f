"""The Qwen2.5-VL processor of Qwen-Image-Edit, also where torchvision is not installed.

transformers 5 builds ``Qwen2VLProcessor`` with a video processor, which needs torchvision; without it the
constructor fails even though an image edit never touches video. ``make_processor`` then builds the same
processor without the video part (the image processor's PIL backend does the resizing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _video_free_class() -> type:
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """``Qwen2VLProcessor`` with an image processor and a tokenizer only."""

        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


def make_processor(tokenizer: Any, image_processor: Any = None, chat_template: str | None = None) -> Any:
    """A Qwen2-VL processor around ``tokenizer`` (default image processor: Qwen2-VL's, PIL backend)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = image_processor or Qwen2VLImageProcessorPil()
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if _torchvision():
        from transformers import Qwen2VLProcessor

        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    return _video_free_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def load_processor(folder: str | Path) -> Any | None:
    """The processor saved in a Qwen-Image-Edit folder's ``processor/`` (None when torchvision is installed:
    then diffusers loads the stock class itself)."""
    if _torchvision():
        return None
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    where = Path(folder) / "processor"
    tokenizer = AutoTokenizer.from_pretrained(where)
    settings: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        f = where / name
        if f.is_file():
            data = json.loads(f.read_text())
            settings = data.get("image_processor", data)
            break
    keep = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std", "merge_size",
            "patch_size", "resample", "rescale_factor", "size", "temporal_patch_size", "min_pixels", "max_pixels")
    image_processor = Qwen2VLImageProcessorPil(**{k: v for k, v in settings.items() if k in keep})
    return make_processor(tokenizer, image_processor)
