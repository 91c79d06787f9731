"""A model folder's multimodal processor (image processor + tokenizer + chat template).

transformers builds Qwen2-VL-style processors with a video processor that needs torchvision, even
for prompts that hold only images. Where torchvision is missing (CPU-only installs: the PyPI
torchvision wheel is built against CUDA torch), the same processor is built without its video
part, so images still work and a video fails with a clear error.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoProcessor, ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.utils import is_torchvision_available

VIDEO_NEEDS_TORCHVISION = (
    "video inputs need torchvision, which is not installed; install the torchvision build that "
    "matches your torch"
)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without the video processor (whose class needs torchvision)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: Any = None,
        **kwargs,
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, videos: Any = None, **kwargs: Any):
        # transformers skips videos when a processor has no video processor: say so instead.
        if videos is not None:
            raise ValueError(VIDEO_NEEDS_TORCHVISION)
        return super().__call__(images=images, text=text, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # A folder saved from here must load as the full processor where torchvision exists.
        return super().to_dict() | {"processor_class": Qwen2_5_VLProcessor.__name__}


_IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
}


def load_processor(folder: str, trust_remote_code: bool = False) -> Any:
    """The processor of a model folder, as ``AutoProcessor`` loads it; without its video part
    where torchvision is missing and the family has an image-only form."""
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    model_type = AutoConfig.from_pretrained(folder, **extra).model_type
    if is_torchvision_available() or model_type not in _IMAGE_ONLY_PROCESSORS:
        return AutoProcessor.from_pretrained(folder, **extra)
    return _IMAGE_ONLY_PROCESSORS[model_type].from_pretrained(folder, **extra)


def load_image_processor(folder: str, trust_remote_code: bool = False) -> Any:
    """The processor of a vision-language model folder; a ValueError saying so when the model
    takes no images (its processor has no image processor)."""
    processor = load_processor(folder, trust_remote_code)
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"the model in {folder} has no image processor (its AutoProcessor is a "
            f"{type(processor).__name__}): it takes no images; use a vision-language model "
            "such as Qwen/Qwen2.5-VL-3B-Instruct"
        )
    return processor
