"""Nothing a dataset holds changes without a word: types survive every operation, and arguments
Ray Data rejects are rejected here too, before anything runs."""

from __future__ import annotations

import datetime
import fractions

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pytest

from llmbatch import data


class Point:
    """A class Arrow knows nothing about."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_drop_columns_with_a_repeated_name_is_an_error_and_drops_exactly_the_named():
    ds = data.from_items([{"a": 1, "b": 2, "c": 3}])
    with pytest.raises(ValueError, match=r"\['a'\] named more than once"):
        ds.drop_columns(["a", "a"])
    assert ds.drop_columns(["a", "c"]).take_all() == [{"b": 2}]


def test_map_keeps_timestamps_to_the_nanosecond():
    stamps = pd.to_datetime(["2024-01-02 03:04:05.123456789", "2024-05-06 07:08:09.000000001"])
    ds = data.from_pandas(pd.DataFrame({"t": stamps, "d": stamps - stamps[0]}))
    mapped = ds.map(lambda row: {"t": row["t"], "d": row["d"], "later": row["t"] + row["d"]})
    table = pa.concat_tables(mapped.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert table.schema.field("t").type == pa.timestamp("ns")
    assert table.schema.field("d").type == pa.duration("ns")
    frame = mapped.to_pandas()
    assert list(frame["t"]) == list(stamps)
    assert frame["t"][0].nanosecond == 789
    assert frame["later"][1] == stamps[1] + (stamps[1] - stamps[0])


def test_map_rows_with_different_keys_are_an_error_naming_the_keys():
    ds = data.range(4).map(lambda row: {"id": row["id"]} if row["id"] < 2 else {"other": 1})
    with pytest.raises(ValueError, match=r"different columns: \['other'\] after \['id'\]"):
        ds.take_all()
    spread = data.range(4, override_num_blocks=2).flat_map(
        lambda row: [{"id": row["id"]}] if row["id"] < 2 else [{"id": 1, "extra": 2}]
    )
    with pytest.raises(ValueError, match="different columns"):
        spread.take_all()


def test_numpy_arrays_in_rows_come_back_with_their_shape_and_dtype():
    def tensors(row):
        i = row["id"]
        return {
            "image": np.full((2, 3), i, dtype=np.uint8),
            "ragged": np.arange(i + 1, dtype=np.float32),
            "matrix": np.eye(2, dtype=np.float64) * i,
        }

    rows = data.range(3, override_num_blocks=2).map(tensors).materialize().take_all()
    for i, row in enumerate(rows):
        assert isinstance(row["image"], np.ndarray)
        assert (row["image"].shape, row["image"].dtype) == ((2, 3), np.uint8)
        np.testing.assert_array_equal(row["image"], np.full((2, 3), i, dtype=np.uint8))
        assert (row["ragged"].shape, row["ragged"].dtype) == ((i + 1,), np.float32)
        np.testing.assert_array_equal(row["matrix"], np.eye(2) * i)

    batch = data.range(3).map(tensors).take_batch(3)
    assert batch["image"].shape == (3, 2, 3) and batch["image"].dtype == np.uint8
    assert [a.shape for a in batch["ragged"]] == [(1,), (2,), (3,)]


def test_tensor_columns_survive_parquet_files(tmp_path):
    rows = [{"v": np.arange(4, dtype=np.int16).reshape(2, 2) + i} for i in range(3)]
    rows.append({"v": None})
    data.from_items(rows).write_parquet(tmp_path)
    back = data.read_parquet(tmp_path).take_all()
    for original, row in zip(rows[:3], back[:3]):
        assert row["v"].dtype == np.int16
        np.testing.assert_array_equal(row["v"], original["v"])
    assert back[3]["v"] is None


def test_other_python_objects_survive_a_round_trip_through_blocks():
    values = [Point(1, 2), {1, 2, 3}, fractions.Fraction(1, 3), None, complex(1, 2)]
    ds = data.from_items([{"value": v} for v in values], override_num_blocks=2)
    again = ds.map(lambda row: {"value": row["value"], "kind": type(row["value"]).__name__})
    assert [row["value"] for row in again.take_all()] == values
    assert list(ds.to_pandas()["value"]) == values


def test_values_of_clashing_arrow_kinds_are_still_an_error():
    with pytest.raises(data.SchemaConflictError, match="'v'"):
        data.from_items([{"v": 1}, {"v": "one"}])


def test_map_batches_without_zero_copy_gives_writable_batches():
    def double(batch):
        batch["id"] *= 2
        return batch

    ds = data.range(6, override_num_blocks=2)
    assert [r["id"] for r in ds.map_batches(double, zero_copy_batch=False).take_all()] == [
        0,
        2,
        4,
        6,
        8,
        10,
    ]
    with pytest.raises(ValueError, match="read-only"):
        ds.map_batches(double).take_all()


def test_add_column_replaces_a_column_in_place_and_broadcasts_scalars():
    ds = data.from_items([{"a": 1, "b": 2}, {"a": 3, "b": 4}])
    replaced = ds.add_column("a", lambda frame: frame["a"] * 10)
    assert replaced.take_all() == [{"a": 10, "b": 2}, {"a": 30, "b": 4}]
    tagged = ds.add_column("tag", lambda batch: "x", batch_format="pyarrow")
    assert [row["tag"] for row in tagged.take_all()] == ["x", "x"]
    numbered = ds.add_column("n", lambda batch: np.int64(7), batch_format="numpy")
    assert [row["n"] for row in numbered.take_all()] == [7, 7]


def test_numpy_integers_are_accepted_wherever_an_int_is():
    n = np.int64(10)
    ds = data.range(n, override_num_blocks=np.int32(2))
    assert ds.limit(np.int64(3)).count() == 3
    assert ds.repartition(np.int64(5)).num_blocks() == 5
    assert len(ds.take(np.int16(4))) == 4
    assert len(next(ds.iter_batches(batch_size=np.int64(4)))["id"]) == 4
    with pytest.raises(ValueError, match="integer"):
        ds.limit(True)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda ds: ds.select_columns(["a", "a"]), ValueError, "more than once"),
        (lambda ds: ds.select_columns([1]), TypeError, "strings"),
        (lambda ds: ds.select_columns({"a"}), TypeError, "column name or a list"),
        (lambda ds: ds.rename_columns({}), ValueError, "at least one"),
        (lambda ds: ds.rename_columns([]), ValueError, "at least one"),
        (lambda ds: ds.rename_columns({"a": "x", "b": "x"}), ValueError, "more than once"),
        (lambda ds: ds.rename_columns({"a": 1}), TypeError, "strings"),
        (lambda ds: ds.rename_columns("a"), TypeError, "dict"),
    ],
)
def test_column_arguments_are_checked_as_ray_checks_them(call, error, match):
    with pytest.raises(error, match=match):
        call(data.from_items([{"a": 1, "b": 2}]))


def test_renaming_onto_an_existing_column_is_an_error_when_it_runs():
    with pytest.raises(ValueError, match=r"two columns the name\(s\) \['b'\]"):
        data.from_items([{"a": 1, "b": 2}]).rename_columns({"a": "b"}).take_all()


def test_more_blocks_than_rows_gives_no_empty_blocks():
    assert data.from_items([1, 2, 3], override_num_blocks=10).num_blocks() == 3
    assert data.range(2, override_num_blocks=8).num_blocks() == 2
    sizes = [len(b) for b in data.range(2, override_num_blocks=8).iter_batches(batch_size=None)]
    assert sizes == [1, 1]


def test_iter_batches_without_a_format_yields_the_blocks_themselves():
    batches = list(data.range(10, override_num_blocks=2).iter_batches(batch_format=None))
    assert all(isinstance(batch, pa.Table) for batch in batches)


def test_reader_arguments_that_cannot_work_are_clear_errors(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x\n1\n")
    with pytest.raises(ValueError, match="block_size"):
        data.read_csv(path, read_options=pacsv.ReadOptions(block_size=0))
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(ValueError, match="block_size"):
        data.read_json(tmp_path / "a.jsonl", read_options=pajson.ReadOptions(block_size=-1))


def test_dates_and_times_keep_their_types_through_map():
    rows = [{"day": datetime.date(2024, 2, 29), "at": datetime.time(12, 30, 1, 5)}]
    mapped = data.from_items(rows).map(lambda row: row).take_all()
    assert mapped == rows
