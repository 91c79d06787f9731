import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from llmbatch import data


def test_from_items_rows_take_the_union_of_keys():
    ds = data.from_items([{"a": 1}, {"b": "x"}, {"a": 3, "b": None}])
    assert ds.columns() == ["a", "b"]
    assert ds.take_all() == [{"a": 1, "b": None}, {"a": None, "b": "x"}, {"a": 3, "b": None}]


def test_from_items_values_become_the_item_column():
    assert data.from_items([3, 1, 2]).take_all() == [{"item": 3}, {"item": 1}, {"item": 2}]


def test_from_items_rejects_mixed_and_non_lists():
    with pytest.raises(TypeError, match="mixes"):
        data.from_items([{"a": 1}, 2])
    with pytest.raises(TypeError, match="list"):
        data.from_items({"a": [1, 2]})
    with pytest.raises(TypeError, match="'v'"):
        data.from_items([{"v": 1}, {"v": "one"}])


def test_from_items_override_num_blocks_keeps_order():
    ds = data.from_items(list(range(10)), override_num_blocks=3)
    assert ds.num_blocks() == 3
    assert [row["item"] for row in ds.take_all()] == list(range(10))


def test_from_pandas_round_trips():
    frame = pd.DataFrame({"name": ["a", "b", None], "score": [1.5, 2.0, 3.25]})
    ds = data.from_pandas(frame)
    pd.testing.assert_frame_equal(ds.to_pandas(), frame)
    two = data.from_pandas([frame, frame])
    assert two.num_blocks() == 2
    assert two.count() == 6


def test_from_pandas_keeps_a_meaningful_index_as_a_column():
    frame = pd.DataFrame({"v": [1, 2]}, index=pd.Index(["x", "y"], name="key"))
    assert data.from_pandas(frame).take_all() == [{"v": 1, "key": "x"}, {"v": 2, "key": "y"}]


def test_from_arrow_accepts_tables_batches_and_lists_with_unified_types():
    first = pa.table({"a": [1, 2], "b": pa.nulls(2)})
    second = pa.record_batch({"a": [3], "b": ["text"]})
    ds = data.from_arrow([first, second])
    assert ds.schema().field("b").type == pa.string()
    assert [row["a"] for row in ds.take_all()] == [1, 2, 3]
    assert data.from_arrow(second).take_all() == [{"a": 3, "b": "text"}]
    with pytest.raises(TypeError, match="RecordBatches"):
        data.from_arrow([{"a": 1}])


def test_from_numpy_one_and_two_dimensions():
    assert data.from_numpy(np.array([4, 5])).take_all() == [{"data": 4}, {"data": 5}]
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    batch = data.from_numpy(matrix).take_batch(3, batch_format="numpy")
    np.testing.assert_array_equal(batch["data"], matrix)


def image_dataset() -> datasets.Dataset:
    images = pa.array(
        [{"bytes": bytes([i]) * 4, "path": f"{i}.png"} for i in range(6)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table({"image": images, "caption": [f"c{i}" for i in range(6)]})
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset(table).cast(features)


def test_from_huggingface_streams_arrow_and_keeps_image_structs():
    hf = image_dataset().select([5, 1, 3])
    ds = data.from_huggingface(hf)
    assert ds.count() == 3
    assert "not run yet" in ds.stats()
    rows = ds.take_all()
    assert [row["caption"] for row in rows] == ["c5", "c1", "c3"]
    assert rows[0]["image"] == {"bytes": b"\x05" * 4, "path": "5.png"}


def test_from_huggingface_iterable_dataset_and_bad_inputs():
    streamed = data.from_huggingface(image_dataset().to_iterable_dataset())
    assert [row["caption"] for row in streamed.take_all()] == [f"c{i}" for i in range(6)]
    with pytest.raises(TypeError, match="one split"):
        data.from_huggingface(datasets.DatasetDict({"train": image_dataset()}))
    with pytest.raises(TypeError, match="datasets.Dataset"):
        data.from_huggingface([1, 2])


def test_range_is_lazy_and_counted_without_running():
    ds = data.range(300_000)
    assert ds.count() == 300_000
    assert ds.num_blocks() == 3
    assert "not run yet" in ds.stats()
    assert ds.take(3) == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert [row["id"] for row in data.range(5, override_num_blocks=2).take_all()] == list(range(5))
    with pytest.raises(ValueError, match="n >= 0"):
        data.range(-1)
