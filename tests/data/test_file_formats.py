"""Reading folders as Ray Data does: every file (or those of ``file_extensions``), a clear error
for a file that is not the format, Hive partitions as columns; text, binary, image and numpy
files; ``write_numpy``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from llmbatch import data


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.csv").write_text("id,name\n1,x\n2,y\n")
    (folder / "b.csv").write_text("id,name\n3,z\n")
    pq.write_table(pa.table({"id": [4, 5], "name": ["p", "q"]}), folder / "c.parquet")
    (folder / "d.jsonl").write_text('{"id": 6, "name": "j"}\n')
    return folder


def test_a_folder_of_mixed_formats_names_the_file_that_is_not_the_format(mixed_folder):
    with pytest.raises(ValueError, match=r"c\.parquet is not a CSV file .*file_extensions"):
        data.read_csv(mixed_folder).take_all()
    rows = data.read_csv(mixed_folder, file_extensions=["csv"]).take_all()
    assert [row["id"] for row in rows] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"a\.csv is not a Parquet file"):
        data.read_parquet(mixed_folder).take_all()
    parquet = data.read_parquet(mixed_folder, file_extensions=[".PARQUET"]).take_all()
    assert [row["id"] for row in parquet] == [4, 5]
    with pytest.raises(ValueError, match=r"a\.csv is not a JSON file"):
        data.read_json(mixed_folder).take_all()
    assert data.read_json(mixed_folder, file_extensions=["jsonl"]).take_all() == [
        {"id": 6, "name": "j"}
    ]


def test_every_file_of_a_folder_is_read_not_only_the_formats_extension(tmp_path):
    (tmp_path / "part-0").write_text("id,name\n1,x\n")
    (tmp_path / "part-1.txt").write_text("id,name\n2,y\n")
    (tmp_path / "_SUCCESS").write_text("")
    assert [row["id"] for row in data.read_csv(tmp_path).take_all()] == [1, 2]


def write_partitions(root, frame: pd.DataFrame) -> None:
    for (country, year), rows in frame.groupby(["country", "year"]):
        folder = root / f"country={country}" / f"year={year}"
        folder.mkdir(parents=True)
        rows.drop(columns=["country", "year"]).to_csv(folder / "part.csv", index=False)


def test_hive_partition_folders_become_columns(tmp_path):
    frame = pd.DataFrame(
        {
            "id": range(12),
            "country": ["us", "fr", "de"] * 4,
            "year": [2023, 2024] * 6,
            "score": np.linspace(0, 1, 12),
        }
    )
    write_partitions(tmp_path, frame)
    result = data.read_csv(tmp_path).to_pandas()
    assert list(result.columns) == ["id", "score", "country", "year"]
    assert set(result["year"]) == {"2023", "2024"}  # folder names are text unless typed
    typed = data.read_csv(
        tmp_path, partitioning=data.Partitioning("hive", field_types={"year": int})
    ).to_pandas()
    expected = frame.sort_values("id").reset_index(drop=True)
    got = typed.sort_values("id").reset_index(drop=True)[["id", "country", "year", "score"]]
    pd.testing.assert_frame_equal(got, expected[["id", "country", "year", "score"]])
    assert data.read_csv(tmp_path, partitioning=None).columns() == ["id", "score"]


def test_dir_partitions_and_rays_partitioning_objects(tmp_path):
    from ray.data.datasource import Partitioning as RayPartitioning

    (tmp_path / "us" / "2024").mkdir(parents=True)
    (tmp_path / "us" / "2024" / "a.csv").write_text("id\n1\n")
    dirs = data.Partitioning("dir", base_dir=str(tmp_path), field_names=["country", "year"])
    assert data.read_csv(tmp_path, partitioning=dirs).take_all() == [
        {"id": 1, "country": "us", "year": "2024"}
    ]
    ray_style = RayPartitioning("dir", base_dir=str(tmp_path), field_names=["country", "year"])
    assert data.read_csv(tmp_path, partitioning=ray_style).take_all()[0]["year"] == "2024"


def test_a_partition_column_the_file_has_too_is_an_error(tmp_path):
    (tmp_path / "id=5").mkdir()
    (tmp_path / "id=5" / "a.csv").write_text("id\n1\n")
    with pytest.raises(ValueError, match="column 'id', which the file has too"):
        data.read_csv(tmp_path).take_all()


def test_read_text_gives_a_row_per_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first line\r\nsecond\n\n  \nthird")
    (tmp_path / "b.txt").write_text("caf\u00e9\n")
    rows = data.read_text(tmp_path).take_all()
    assert [row["text"] for row in rows] == ["first line", "second", "third", "caf\u00e9"]
    kept = data.read_text(tmp_path / "a.txt", drop_empty_lines=False).take_all()
    assert [row["text"] for row in kept] == ["first line", "second", "", "  ", "third"]
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bad\.txt is not utf-8 text: byte 3"):
        data.read_text(tmp_path / "bad.txt").take_all()
    latin = data.read_text(tmp_path / "bad.txt", encoding="latin-1").take_all()
    assert latin[1]["text"] == "\u00ff\u00fe"


def test_read_binary_files_gives_each_files_bytes(tmp_path):
    payloads = {"a.bin": b"\x00\x01binary", "b.dat": b"", "c.bin": bytes(range(256))}
    for name, payload in payloads.items():
        (tmp_path / name).write_bytes(payload)
    rows = data.read_binary_files(tmp_path, include_paths=True).take_all()
    assert [(row["path"].rsplit("/", 1)[1], row["bytes"]) for row in rows] == list(payloads.items())
    only = data.read_binary_files(tmp_path, file_extensions=["bin"]).take_all()
    assert len(only) == 2


def test_read_images_decodes_pictures_to_arrays(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {
        "red.png": np.full((4, 6, 3), (255, 0, 0), dtype=np.uint8),
        "noise.png": rng.integers(0, 256, (5, 3, 3), dtype=np.uint8),
    }
    for name, array in pixels.items():
        Image.fromarray(array).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("name\nred\n")
    rows = data.read_images(tmp_path, include_paths=True).take_all()
    by_name = {row["path"].rsplit("/", 1)[1]: row["image"] for row in rows}
    assert set(by_name) == set(pixels)
    for name, array in pixels.items():
        assert by_name[name].dtype == np.uint8
        np.testing.assert_array_equal(by_name[name], array)
    small = data.read_images(tmp_path, size=(2, 2), mode="L").take_all()
    assert [row["image"].shape for row in small] == [(2, 2), (2, 2)]
    batch = data.read_images(tmp_path / "red.png").take_batch()
    assert batch["image"].shape == (1, 4, 6, 3)
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match=r"broken\.png is not a image file"):
        data.read_images(tmp_path).take_all()


def test_write_numpy_and_read_numpy_round_trip(tmp_path):
    arrays = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    ds = data.from_numpy(arrays).repartition(2)
    ds.write_numpy(tmp_path / "out", column="data")
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 2
    np.testing.assert_array_equal(np.load(files[0]), arrays[:3])
    back = data.read_numpy(tmp_path / "out").take_all()
    assert len(back) == 6
    for row, expected in zip(back, arrays):
        assert row["data"].dtype == np.float32
        np.testing.assert_array_equal(row["data"], expected)
    np.save(tmp_path / "flat.npy", np.array([1, 2, 3]))
    assert data.read_numpy(tmp_path / "flat.npy").take_all() == [{"data": i} for i in (1, 2, 3)]
    ragged = data.from_items([{"v": np.zeros(2)}, {"v": np.zeros(3)}])
    with pytest.raises(ValueError, match="different shapes"):
        ragged.write_numpy(tmp_path / "ragged", column="v")
    (tmp_path / "fake.npy").write_text("text")
    with pytest.raises(ValueError, match=r"fake\.npy is not a \.npy file"):
        data.read_numpy(tmp_path / "fake.npy").take_all()
