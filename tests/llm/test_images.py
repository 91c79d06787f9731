"""Every form a row may give an image in loads as the same RGB pixels; anything else, or an image
that cannot be read, is an ImageInputError that says what was given and what to fix."""

from __future__ import annotations

import http.server
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from image_testing import data_url, http_server, picture, png_bytes
from PIL import Image

from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.llm.image_columns import (
    images_from_arrow,
    images_to_arrow,
    multi_modal_from_record,
    multi_modal_to_arrow,
)
from llmbatch.llm.images import (
    ImageInputError,
    as_content_parts,
    check_no_images,
    find_image_part,
    load_image,
    load_message_images,
)

SLOW_RESPONSE_S = 2.0


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow.png":
            time.sleep(SLOW_RESPONSE_S)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    picture(seed=1).save(folder / "one.png")
    picture(seed=1).save(folder / "slow.png")
    picture(32, 20, seed=2).save(folder / "two.jpg", quality=95)
    (folder / "not-an-image.png").write_bytes(b"1234")
    return folder


@pytest.fixture(scope="module")
def image_server(image_folder: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1, in its own thread, serving `image_folder`."""

    def handler(*args: object) -> _Handler:
        return _Handler(*args, directory=str(image_folder))

    with http_server(handler) as url:
        yield url


def test_every_form_of_one_image_gives_the_same_rgb_pixels(image_folder: Path, image_server):
    path = image_folder / "one.png"
    expected = pixels(picture(seed=1))
    forms = [
        Image.open(path),
        path.read_bytes(),
        bytearray(path.read_bytes()),
        {"bytes": path.read_bytes(), "path": "ignored-when-bytes-are-given.png"},
        {"bytes": None, "path": str(path)},
        str(path),
        path,
        path.as_uri(),
        f"{image_server}/one.png",
        data_url(picture(seed=1)),
    ]
    for form in forms:
        np.testing.assert_array_equal(pixels(load_image(form)), expected)


def test_other_modes_are_converted_to_rgb():
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 128))
    assert load_image(rgba).getpixel((0, 0)) == (10, 20, 30)
    gray = Image.new("L", (5, 4), 77)
    assert load_image(png_bytes(gray)).getpixel((4, 3)) == (77, 77, 77)
    palette = picture(seed=3).convert("P")
    np.testing.assert_array_equal(pixels(load_image(palette)), pixels(palette.convert("RGB")))
    opened = load_image(Image.open(io.BytesIO(png_bytes(picture(8, 6)))))
    assert opened.size == (8, 6)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1234", r"^cannot decode 4 bytes: cannot identify image file"),
        (png_bytes(picture())[:60], r"^cannot decode 60 bytes: .*(truncated|broken|image file)"),
        (1234, r"^got a int \(1234\); an image must be a PIL image, encoded image bytes"),
        ({"bytes": None, "path": None}, r"'bytes' and 'path' are both empty"),
        ({"url": "x.png"}, r"keys \['url'\]; an image dict holds 'bytes'.*'path'"),
        ("/no/such/picture.png", r"no file '/no/such/picture.png'; a string image is a file path"),
        ("s3://bucket/picture.png", r"s3:// URLs are not read as images"),
        ("data:image/png,rawtext", r"is not base64-encoded: give it as data:image/png;base64"),
        ("data:image/png;base64,@@@", r"has invalid base64"),
    ],
)
def test_what_is_not_an_image_says_what_was_given(value, expected):
    with pytest.raises(ImageInputError, match=expected):
        load_image(value)


def test_an_image_over_pillows_size_limit_is_an_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageInputError, match=r"cannot decode \d+ bytes: .*exceeds limit"):
        load_image(png_bytes(picture(30, 30)))


def test_a_file_that_is_not_an_image_is_named(image_folder: Path):
    path = image_folder / "not-an-image.png"
    with pytest.raises(ImageInputError, match=rf"cannot decode the file '{path}': cannot identify"):
        load_image(str(path))


def test_a_missing_url_and_a_slow_server_name_the_url(image_server: str):
    missing = f"{image_server}/missing.png"
    with pytest.raises(ImageInputError, match=rf"cannot fetch {missing}: HTTP 404"):
        load_image(missing)
    slow = f"{image_server}/slow.png"
    with pytest.raises(ImageInputError, match=rf"cannot fetch {slow}: no answer within 0.2 s"):
        load_image(slow, timeout=0.2)
    with pytest.raises(ImageInputError, match=r"cannot fetch http://127.0.0.1:1/a.png: .*refused"):
        load_image("http://127.0.0.1:1/a.png")


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
    back, none = [multi_modal_from_record(v) for v in multi_modal_to_arrow([mm, None]).to_pylist()]
    assert none is None
    assert torch.equal(back.pixel_values, mm.pixel_values)
    assert back.pixel_values.dtype == torch.float32
    assert torch.equal(back.image_grid_thw, mm.image_grid_thw)
    assert back.image_hashes == mm.image_hashes
