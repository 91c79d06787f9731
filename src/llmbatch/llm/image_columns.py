"""Images and processed image inputs as Arrow columns, so that they travel between the stages with
their rows. Both are intermediate columns: the engine stage drops them, so they never reach the
output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from PIL import Image

    from llmbatch.engine.multimodal import MultiModalInputs

# Decoded RGB pixels: the stages after preprocess neither fetch nor decode again.
IMAGES_TYPE = pa.list_(
    pa.struct([("width", pa.int32()), ("height", pa.int32()), ("rgb", pa.large_binary())])
)
MULTI_MODAL_TYPE = pa.struct(
    [
        ("pixel_values", pa.large_binary()),
        ("pixel_shape", pa.list_(pa.int64())),
        ("pixel_dtype", pa.string()),
        ("image_grid_thw", pa.list_(pa.list_(pa.int64()))),
        ("image_hashes", pa.list_(pa.int64())),
    ]
)


def images_to_arrow(rows: list[list[Image.Image] | None]) -> pa.Array:
    """Each row's RGB images (None for a row without a result) as one column."""
    return pa.array(
        [
            None
            if images is None
            else [{"width": i.width, "height": i.height, "rgb": i.tobytes()} for i in images]
            for images in rows
        ],
        type=IMAGES_TYPE,
    )


def images_from_arrow(value: list[dict[str, Any]] | None) -> list[Image.Image]:
    """One row's images, as `images_to_arrow` stored them."""
    from PIL import Image

    return [
        Image.frombytes("RGB", (image["width"], image["height"]), image["rgb"])
        for image in value or []
    ]


def multi_modal_to_arrow(rows: list[MultiModalInputs | None]) -> pa.Array:
    """Each row's processed images (None for a row without images) as one column."""
    return pa.array([None if mm is None else mm.to_record() for mm in rows], type=MULTI_MODAL_TYPE)
