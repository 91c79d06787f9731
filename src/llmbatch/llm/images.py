"""Images in chat messages: a content part ``{"type": "image", "image": X}`` (Hugging Face also
writes ``"url"`` or ``"path"`` instead of ``"image"``) or OpenAI's
``{"type": "image_url", "image_url": {"url": X}}`` (or ``"image_url": X``), X any form
`llmbatch.data.images.load_image` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from llmbatch.data.images import (
    ACCEPTED_IMAGES,
    IMAGE_FETCH_TIMEOUT_S,
    ImageInputError,
    load_image,
)

IMAGE_PART = {"type": "image"}
"""What an image part becomes once its image is taken out: the form chat templates expect."""

_IMAGE_KEYS = ("image", "url", "path")
_NOT_AN_IMAGE_PART = object()


def load_message_images(
    messages: Any, timeout: float = IMAGE_FETCH_TIMEOUT_S
) -> tuple[Any, list[Image.Image]]:
    """The messages with each image part replaced by ``{"type": "image"}``, and their images
    loaded in order (RGB). Messages that hold no image come back unchanged.

    Raises ImageInputError naming the image (its number in the row and where it sits) and why.
    """
    if not isinstance(messages, list):
        return messages, []
    images: list[Image.Image] = []
    result = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            result.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            where = f"image {len(images) + 1} of the row (messages[{i}].content[{j}])"
            try:
                value = _image_of_part(part)
                if value is not _NOT_AN_IMAGE_PART:
                    images.append(load_image(value, timeout))
            except ImageInputError as exc:
                raise ImageInputError(f"{where}: {exc}") from exc
            parts.append(part if value is _NOT_AN_IMAGE_PART else dict(IMAGE_PART))
        result.append({**message, "content": parts})
    return result, images


def find_image_part(messages: Any) -> str | None:
    """Where the first image part of `messages` sits (``"messages[1].content[0]"``), or None."""
    if not isinstance(messages, list):
        return None
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and (
                part.get("type") in ("image", "image_url")
                or any(part.get(key) is not None for key in ("image", "image_url"))
            ):
                return f"messages[{i}].content[{j}]"
    return None


def check_no_images(messages: Any, multimodal_data: Any = None) -> None:
    """Raises ValueError when `messages` hold an image or a row gives `multimodal_data`: a
    processor without has_image would otherwise render the image part as text, or drop it."""
    where = find_image_part(messages)
    if where is None and multimodal_data is not None:
        where = "multimodal_data"
    if where is not None:
        raise ValueError(
            f"a row holds an image ({where}) but the processor config has "
            "has_image=False: set has_image=True or prepare_multimodal_stage=True (with a "
            "vision-language model such as Qwen/Qwen2.5-VL-3B-Instruct) to run image inputs, "
            "or leave the images out"
        )


def load_multimodal_data(value: Any, timeout: float = IMAGE_FETCH_TIMEOUT_S) -> list[Image.Image]:
    """The images of a row's ``multimodal_data`` (vLLM's ``{"image": X or [X, ...]}``), loaded
    in order (RGB). Raises ImageInputError naming the image and why, ValueError for another
    modality."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ImageInputError(
            f"multimodal_data must be a dict such as {{'image': [...]}}, got {type(value).__name__}"
        )
    others = sorted(k for k, v in value.items() if k != "image" and v is not None)
    if others:
        raise ImageInputError(f"multimodal_data holds {others}: only 'image' inputs are supported")
    images = value.get("image")
    if images is None:
        return []
    if not isinstance(images, list | tuple):
        images = [images]
    loaded = []
    for i, image in enumerate(images):
        try:
            loaded.append(load_image(image, timeout))
        except ImageInputError as exc:
            raise ImageInputError(f"multimodal_data['image'][{i}]: {exc}") from exc
    return loaded


def as_content_parts(messages: Any) -> Any:
    """The messages with each text content as a list of one text part, so that every message's
    content has the same (list) form; multimodal chat templates render both forms alike."""
    if not isinstance(messages, list):
        return messages
    return [
        {**message, "content": [{"type": "text", "text": message["content"]}]}
        if isinstance(message, Mapping) and isinstance(message.get("content"), str)
        else message
        for message in messages
    ]


def _image_of_part(part: Any) -> Any:
    """The image value an image content part holds; _NOT_AN_IMAGE_PART for other parts."""
    if not isinstance(part, Mapping):
        return _NOT_AN_IMAGE_PART
    kind = part.get("type")
    if kind == "image":
        for key in _IMAGE_KEYS:
            if part.get(key) is not None:
                return part[key]
        raise ImageInputError(
            "the image part has no image: give it as {'type': 'image', 'image': X} where X is "
            f"{ACCEPTED_IMAGES}"
        )
    if kind == "image_url":
        url = part.get("image_url")
        if isinstance(url, Mapping):
            url = url.get("url")
        if url is None:
            raise ImageInputError(
                "the image_url part has no URL: give it as "
                "{'type': 'image_url', 'image_url': {'url': 'https://...'}}"
            )
        return url
    for key in ("image", "image_url"):
        if part.get(key) is not None:
            raise ImageInputError(
                f"a content part holds {key!r} but its type is {kind!r}: set its type to "
                f"{key!r} so the image is used"
            )
    return _NOT_AN_IMAGE_PART
