"""Images in chat messages: taken out of the messages in order, with placeholders left behind, and
carried between stages in Arrow columns; a bad image names which one it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from image_testing import data_url, picture, pixels
from PIL import Image

from llmbatch.data.images import ImageInputError
from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.llm.image_columns import images_from_arrow, images_to_arrow, multi_modal_to_arrow
from llmbatch.llm.images import (
    as_content_parts,
    check_no_images,
    find_image_part,
    load_message_images,
)


def test_message_images_load_in_order_and_leave_placeholders(image_folder: Path, image_server):
    one, two = image_folder / "one.png", image_folder / "two.jpg"
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image", "image": Image.open(one)},
                {"type": "image_url", "image_url": {"url": f"{image_server}/two.jpg"}},
                {"type": "image_url", "image_url": data_url(picture(seed=5))},
                {"type": "image", "url": str(two)},
                {"type": "text", "text": "please."},
            ],
        },
    ]
    placed, images = load_message_images(messages)
    assert placed == [
        messages[0],
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image"},
                {"type": "image"},
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "please."},
            ],
        },
    ]
    assert [image.size for image in images] == [(24, 16), (32, 20), (24, 16), (32, 20)]
    np.testing.assert_array_equal(pixels(images[0]), pixels(picture(seed=1)))
    np.testing.assert_array_equal(pixels(images[2]), pixels(picture(seed=5)))
    assert isinstance(messages[1]["content"][1]["image"], Image.Image)
    assert load_message_images([{"role": "user", "content": "Hi"}]) == (
        [{"role": "user", "content": "Hi"}],
        [],
    )


def test_a_bad_image_in_messages_says_which_one(image_folder: Path):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": str(image_folder / "one.png")},
                {"type": "text", "text": "and"},
                {"type": "image", "image": b"1234"},
            ],
        },
    ]
    with pytest.raises(
        ImageInputError,
        match=r"^image 2 of the row \(messages\[1\]\.content\[2\]\): cannot decode 4 bytes: "
        r"cannot identify image file",
    ):
        load_message_images(messages)


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ({"type": "image"}, r"the image part has no image: give it as \{'type': 'image'"),
        ({"type": "image_url", "image_url": {}}, r"the image_url part has no URL"),
        ({"type": "picture", "image": b"x"}, r"holds 'image' but its type is 'picture'"),
    ],
)
def test_a_malformed_image_part_is_an_error(part, expected):
    with pytest.raises(ImageInputError, match=r"^image 1 of the row .*" + expected):
        load_message_images([{"role": "user", "content": [part]}])


def test_images_are_found_so_a_text_processor_can_refuse_them():
    text = [{"role": "user", "content": [{"type": "text", "text": "Hi", "image": None}]}]
    assert find_image_part(text) is None
    check_no_images(text)
    with_url = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]},
    ]
    assert find_image_part(with_url) == "messages[1].content[0]"
    with pytest.raises(ValueError, match=r"\(messages\[1\]\.content\[0\]\).*set has_image=True"):
        check_no_images(with_url)


def test_text_contents_become_text_parts():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}]},
    ]
    assert as_content_parts(messages) == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}]},
    ]


def test_images_and_processed_images_survive_their_arrow_columns():
    rows = [[picture(seed=1), picture(7, 3, seed=2)], None, []]
    restored = [images_from_arrow(value) for value in images_to_arrow(rows).to_pylist()]
    assert [len(images) for images in restored] == [2, 0, 0]
    for original, back in zip(rows[0], restored[0]):
        np.testing.assert_array_equal(pixels(back), pixels(original))
    mm = MultiModalInputs(
        pixel_values=torch.randn(12, 30),
        image_grid_thw=torch.tensor([[1, 2, 2], [1, 2, 4]]),
        image_hashes=[-5, 2**62],
    )
    back, none = [
        MultiModalInputs.from_record(v) for v in multi_modal_to_arrow([mm, None]).to_pylist()
    ]
    assert none is None
    assert torch.equal(back.pixel_values, mm.pixel_values)
    assert back.pixel_values.dtype == torch.float32
    assert torch.equal(back.image_grid_thw, mm.image_grid_thw)
    assert back.image_hashes == mm.image_hashes
