"""Every form a row may give an image in loads as the same RGB pixels; anything else, or an image
that cannot be read, is an ImageInputError that says what was given and what to fix."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from image_testing import data_url, picture, pixels, png_bytes
from PIL import Image

from llmbatch.data.images import ImageInputError, load_image


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
