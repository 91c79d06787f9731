"""A Hugging Face dataset with an ``Image()`` column gives rows whose image is the
``{"bytes": ..., "path": ...}`` dict the tutorial indexes, and its bytes survive every writer."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.csv as pacsv
import pytest
from PIL import Image

import llmbatch.data as data
from llmbatch.data.images import load_image

NUM_IMAGES = 5


def generated_image(i: int) -> Image.Image:
    pixels = np.random.default_rng(i).integers(0, 256, (8 + i, 10 + 2 * i, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("int64"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Sequence(datasets.Value("string")),
    }
)


@pytest.fixture(scope="module")
def vision_dataset() -> datasets.Dataset:
    """Rows shaped like the tutorial's COCO captions: an image, a question and answers."""
    return datasets.Dataset.from_dict(
        {
            "question_id": list(range(NUM_IMAGES)),
            "image": [generated_image(i) for i in range(NUM_IMAGES)],
            "question": [f"What is in picture {i}?" for i in range(NUM_IMAGES)],
            "answer": [[f"caption {i}", "other"] for i in range(NUM_IMAGES)],
        },
        features=FEATURES,
    )


def assert_is_image(stored: dict, i: int) -> None:
    assert set(stored) == {"bytes", "path"}
    decoded = Image.open(io.BytesIO(stored["bytes"]))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(generated_image(i)))


def test_image_rows_hold_bytes_and_path_as_the_tutorial_reads_them(vision_dataset):
    rows = data.from_huggingface(vision_dataset).take_all()
    assert [row["question_id"] for row in rows] == list(range(NUM_IMAGES))
    for i, row in enumerate(rows):
        assert_is_image(row["image"], i)
        assert row["answer"] == [f"caption {i}", "other"]


def test_a_streamed_and_a_shuffled_dataset_keep_their_images(vision_dataset):
    streamed = data.from_huggingface(vision_dataset.to_iterable_dataset()).take_all()
    for i, row in enumerate(streamed):
        assert_is_image(row["image"], i)
    order = [3, 0, 4]
    for i, row in zip(order, data.from_huggingface(vision_dataset.select(order)).take_all()):
        assert row["question_id"] == i
        assert_is_image(row["image"], i)


def test_an_image_stored_by_path_loads_from_its_file(tmp_path: Path):
    path = tmp_path / "picture.png"
    generated_image(2).save(path)
    features = datasets.Features({"image": datasets.Image()})
    hf = datasets.Dataset.from_dict({"image": [str(path)]}, features=features)
    [row] = data.from_huggingface(hf).take_all()
    assert row["image"] == {"bytes": None, "path": str(path)}
    np.testing.assert_array_equal(np.asarray(load_image(row["image"])), generated_image(2))


def test_a_row_function_opens_the_image_bytes(vision_dataset):
    def size_of(row):
        return {"size": list(Image.open(io.BytesIO(row["image"]["bytes"])).size)}

    sizes = data.from_huggingface(vision_dataset).map(size_of).take_all()
    assert [row["size"] for row in sizes] == [[10 + 2 * i, 8 + i] for i in range(NUM_IMAGES)]


def test_image_bytes_survive_parquet_json_and_csv(vision_dataset, tmp_path: Path):
    ds = data.from_huggingface(vision_dataset)
    ds.write_parquet(tmp_path / "parquet")
    back = data.read_parquet(tmp_path / "parquet").take_all()
    assert back == ds.take_all()

    ds.write_json(tmp_path / "json")
    [json_file] = (tmp_path / "json").iterdir()
    first = json.loads(json_file.read_text().splitlines()[0])
    assert base64.b64decode(first["image"]["bytes"]) == png_bytes(generated_image(0))

    ds.select_columns(["question_id", "image"]).write_csv(tmp_path / "csv")
    [csv_file] = (tmp_path / "csv").iterdir()
    table = pacsv.read_csv(csv_file)
    stored = json.loads(table.column("image")[1].as_py())
    assert base64.b64decode(stored["bytes"]) == png_bytes(generated_image(1))


def test_a_bytes_column_is_written_to_csv_as_base64(tmp_path: Path):
    raw = [png_bytes(generated_image(0)), None, b"\xff\x00 not utf-8"]
    data.from_items([{"n": i, "raw": value} for i, value in enumerate(raw)]).write_csv(
        tmp_path / "out"
    )
    [csv_file] = (tmp_path / "out").iterdir()
    options = pacsv.ConvertOptions(strings_can_be_null=True)
    texts = pacsv.read_csv(csv_file, convert_options=options).column("raw").to_pylist()
    assert [None if t is None else base64.b64decode(t) for t in texts] == raw
