import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from llmbatch import data
from llmbatch.data.blocks import rebatch


def counted(ds: data.Dataset) -> tuple[data.Dataset, list[int]]:
    """``ds`` behind a stage that records the size of every block pulled through it."""
    pulled: list[int] = []

    def count(stream):
        for table in stream:
            pulled.append(table.num_rows)
            yield table

    return ds.transform(count, "count"), pulled


def block_sizes(ds: data.Dataset) -> list[int]:
    return [len(block) for block in ds.iter_batches(batch_size=None, batch_format="pyarrow")]


def ids(ds: data.Dataset) -> list[int]:
    return [row["id"] for row in ds.take_all()]


def test_nothing_runs_until_consumed():
    calls = []
    ds = data.range(10).map(lambda row: calls.append(row) or row).filter(lambda row: True)
    assert calls == []
    assert ds.count() == 10
    assert len(calls) == 10


def test_limit_stops_pulling_upstream_once_enough_rows_passed():
    ds, pulled = counted(data.range(1_000_000, override_num_blocks=100))
    assert ids(ds.limit(25_000)) == list(range(25_000))
    assert pulled == [10_000, 10_000, 10_000]


def test_limit_over_a_large_csv_reads_only_its_first_blocks(customers_csv):
    ds = data.read_csv(customers_csv, read_options=pacsv.ReadOptions(block_size=16 << 10))
    limited = ds.limit(10)
    assert [row["Index"] for row in limited.take_all()] == list(range(1, 11))
    assert limited.stats().splitlines()[0].startswith("read_csv(1 file): 1 blocks,")
    assert ds.num_blocks() > 10


def test_rows_keep_input_order_through_every_stage():
    ds = (
        data.range(1000, override_num_blocks=7)
        .map(lambda row: {"id": row["id"], "half": row["id"] // 2})
        .filter(lambda row: row["id"] % 3 != 0)
        .flat_map(lambda row: [row, row])
        .map_batches(lambda batch: batch, batch_size=64)
        .repartition(target_num_rows_per_block=100)
    )
    expected = [i for i in range(1000) if i % 3 != 0 for _ in range(2)]
    assert ids(ds) == expected


def test_repartition_with_known_row_count_gives_exactly_k_balanced_blocks():
    ds = data.from_items(list(range(10))).repartition(num_blocks=4)
    assert ds.num_blocks() == 4
    assert block_sizes(ds) == [3, 3, 2, 2]
    assert [row["item"] for row in ds.take_all()] == list(range(10))
    assert data.from_items([1, 2]).repartition(4).materialize().num_blocks() == 4


def test_repartition_counts_a_csv_source_first(customers_csv):
    ds = data.read_csv(customers_csv).map(lambda row: row).repartition(num_blocks=4)
    assert block_sizes(ds) == [750, 750, 750, 750]
    assert ds.num_blocks() == 4
    limited = data.read_csv(customers_csv).limit(1001).repartition(num_blocks=2)
    assert block_sizes(limited) == [501, 500]


def test_repartition_after_filter_and_limit_uses_the_limit_as_bound():
    ds = data.range(100).filter(lambda row: row["id"] < 30).limit(50).repartition(num_blocks=5)
    assert ds.num_blocks() == 5
    assert block_sizes(ds) == [10, 10, 10]
    assert ids(ds) == list(range(30))


def test_repartition_of_unknown_row_count_warns_and_keeps_blocks():
    source = data.range(100, override_num_blocks=4).map_batches(lambda batch: batch)
    with pytest.warns(UserWarning, match="unknown"):
        ds = source.repartition(num_blocks=2)
    assert block_sizes(ds) == [25, 25, 25, 25]


def test_repartition_by_rows_per_block_and_bad_arguments():
    assert block_sizes(data.range(20).repartition(target_num_rows_per_block=7)) == [7, 7, 6]
    assert data.range(20).repartition(target_num_rows_per_block=7).num_blocks() == 3
    with pytest.raises(ValueError, match="shuffle"):
        data.range(5).repartition(2, shuffle=True)
    with pytest.raises(ValueError, match="exactly one"):
        data.range(5).repartition(2, target_num_rows_per_block=2)
    with pytest.raises(ValueError, match="num_blocks"):
        data.range(5).repartition(0)


def test_materialize_runs_upstream_once():
    ds, pulled = counted(data.range(100, override_num_blocks=4))
    materialized = ds.map(lambda row: {"id": row["id"] * 2}).materialize()
    assert pulled == [25] * 4
    assert materialized.count() == 100
    assert ids(materialized)[:3] == [0, 2, 4]
    assert ids(materialized.filter(lambda row: row["id"] < 10)) == [0, 2, 4, 6, 8]
    assert materialized.materialize() is materialized
    assert materialized.num_blocks() == 4
    assert pulled == [25] * 4
    assert (
        repr(materialized) == "MaterializedDataset(num_blocks=4, num_rows=100, schema={id: int64})"
    )
    assert "count: 4 blocks, 100 rows" in materialized.stats()


@pytest.mark.parametrize(
    ("batch_format", "batch_type"),
    [("default", dict), ("numpy", dict), ("pandas", pd.DataFrame), ("pyarrow", pa.Table)],
)
def test_map_batches_formats(batch_format, batch_type):
    seen = []

    def double(batch):
        seen.append(type(batch))
        if isinstance(batch, dict):
            assert isinstance(batch["id"], np.ndarray)
            return {"id": batch["id"] * 2}
        if isinstance(batch, pd.DataFrame):
            return batch.assign(id=batch["id"] * 2)
        return pa.table({"id": pa.compute.multiply(batch["id"], 2)})

    ds = data.range(10).map_batches(double, batch_format=batch_format, batch_size=4)
    assert ids(ds) == [i * 2 for i in range(10)]
    assert all(issubclass(kind, batch_type) for kind in seen)


def test_map_batches_batch_sizes_follow_block_groups():
    sizes = []

    def record(batch):
        sizes.append(len(batch["id"]))
        return batch

    data.range(100, override_num_blocks=1).map_batches(record, batch_size=30).materialize()
    assert sizes == [30, 30, 30, 10]
    sizes.clear()
    data.range(100, override_num_blocks=10).map_batches(record, batch_size=25).materialize()
    assert sizes == [25, 5, 25, 5, 25, 5, 10]
    sizes.clear()
    data.range(100, override_num_blocks=4).map_batches(record, batch_format="pyarrow").materialize()
    assert sizes == [25] * 4


def test_map_batches_callable_class_is_built_once_per_run_with_arguments():
    built = []

    class AddOffset:
        def __init__(self, offset):
            built.append(offset)
            self.offset = offset

        def __call__(self, batch, scale):
            return {"id": batch["id"] * scale + self.offset}

    ds = data.range(50, override_num_blocks=5).map_batches(
        AddOffset,
        batch_size=10,
        fn_constructor_args=[1000],
        fn_kwargs={"scale": 10},
        compute="actors",
        concurrency=2,
        num_gpus=1,
    )
    assert ids(ds)[:3] == [1000, 1010, 1020]
    assert built == [1000]
    ds.count()
    assert built == [1000, 1000]


def test_map_batches_may_yield_several_batches():
    def split(batch):
        yield {"id": batch["id"][:1]}
        yield {"id": batch["id"][1:]}

    assert ids(data.range(6).map_batches(split, batch_size=3)) == list(range(6))


def test_map_batches_errors_are_clear():
    with pytest.raises(TypeError, match="'nothing'.*got NoneType"):

        def nothing(batch):
            return None

        data.range(3).map_batches(nothing).take_all()
    with pytest.raises(ValueError, match="different lengths"):
        data.range(3).map_batches(lambda b: {"a": [1], "b": [1, 2]}).take_all()
    with pytest.raises(ValueError, match="batch_format"):
        data.range(3).map_batches(lambda b: b, batch_format="polars")
    with pytest.raises(TypeError, match="num_tpus"):
        data.range(3).map_batches(lambda b: b, num_tpus=1)
    with pytest.raises(ValueError, match="class"):
        data.range(3).map_batches(lambda b: b, fn_constructor_args=[1])


def test_map_accepts_mixed_and_nested_values_per_row():
    def describe(row):
        i = row["id"]
        return {"id": i, "note": None if i % 2 else f"n{i}", "meta": {"tags": ["a"] * i, "i": i}}

    rows = data.range(4).map(describe).take_all()
    assert rows[1] == {"id": 1, "note": None, "meta": {"tags": ["a"], "i": 1}}
    assert rows[2]["note"] == "n2"


def test_types_are_unified_across_blocks():
    ds = data.range(20, override_num_blocks=2).map(
        lambda row: {
            "v": None if row["id"] < 10 else "x",
            "n": row["id"] if row["id"] < 10 else 0.5,
        }
    )
    materialized = ds.materialize()
    assert materialized.schema().field("v").type == pa.string()
    assert materialized.schema().field("n").type == pa.float64()
    assert ds.to_pandas()["v"].isna().tolist() == [True] * 10 + [False] * 10


def test_conflicting_types_name_the_column():
    across_blocks = data.range(20, override_num_blocks=2).map(
        lambda row: {"v": row["id"] if row["id"] < 10 else "text"}
    )
    with pytest.raises(data.SchemaConflictError, match="'v'"):
        across_blocks.materialize()
    within_block = data.range(4).map(lambda row: {"w": row["id"] if row["id"] < 2 else "text"})
    with pytest.raises(data.SchemaConflictError, match="'w'"):
        within_block.take_all()


def test_map_flat_map_and_filter_check_what_functions_return():
    with pytest.raises(TypeError, match="must return a dict"):
        data.range(2).map(lambda row: row["id"]).take_all()
    with pytest.raises(TypeError, match="list of dicts"):
        data.range(2).flat_map(lambda row: row).take_all()
    assert ids(data.range(3).flat_map(lambda row: [row] * row["id"])) == [1, 2, 2]
    assert ids(data.range(10).filter(lambda row: row["id"] % 4 == 0)) == [0, 4, 8]


def test_map_callable_class_and_arguments():
    class Tag:
        def __init__(self, tag):
            self.tag = tag

        def __call__(self, row, suffix):
            return {**row, "tag": self.tag + suffix}

    ds = data.range(2).map(Tag, fn_constructor_kwargs={"tag": "t"}, fn_args=["!"], num_cpus=0.5)
    assert ds.take_all() == [{"id": 0, "tag": "t!"}, {"id": 1, "tag": "t!"}]


def test_column_operations():
    ds = data.from_items([{"First Name": "Ada", "age": 36, "city": "London"}])
    assert ds.select_columns(["city", "First Name"]).take_all() == [
        {"city": "London", "First Name": "Ada"}
    ]
    assert ds.drop_columns("age").columns() == ["First Name", "city"]
    assert ds.rename_columns({"First Name": "first"}).columns() == ["first", "age", "city"]
    assert ds.rename_columns(["a", "b", "c"]).columns() == ["a", "b", "c"]
    added = ds.add_column("next_age", lambda frame: frame["age"] + 1)
    assert added.take_all()[0]["next_age"] == 37
    with pytest.raises(KeyError, match="'missing'"):
        ds.select_columns(["missing"])
    with pytest.raises(ValueError, match="3 columns"):
        ds.rename_columns(["only_one"]).take_all()


def test_missing_columns_of_a_file_are_named_when_it_runs(customers_csv):
    ds = data.read_csv(customers_csv).select_columns(["Customer Id", "Email address"])
    with pytest.raises(KeyError, match="'Email address'"):
        ds.take(1)


def test_taking_rows_and_batches(capsys):
    ds = data.range(30, override_num_blocks=3)
    assert ds.take(2) == [{"id": 0}, {"id": 1}]
    assert len(ds.take_all()) == 30
    with pytest.raises(ValueError, match="more than 10 rows"):
        ds.take_all(limit=10)
    np.testing.assert_array_equal(ds.take_batch(4)["id"], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        ds.filter(lambda row: False).take_batch()
    batches = list(ds.iter_batches(batch_size=7, batch_format="pandas"))
    assert [len(batch) for batch in batches] == [7, 7, 7, 7, 2]
    kept = [len(batch["id"]) for batch in ds.iter_batches(batch_size=7, drop_last=True)]
    assert kept == [7, 7, 7, 7]
    assert [row["id"] for row in ds.iter_rows()] == list(range(30))
    ds.show(2)
    assert capsys.readouterr().out == "{'id': 0}\n{'id': 1}\n"
    assert ds.to_pandas()["id"].tolist() == list(range(30))
    with pytest.raises(ValueError, match="more than 5 rows"):
        ds.to_pandas(limit=5)


def test_schema_count_blocks_repr_and_stats(customers_csv):
    ds = data.read_csv(customers_csv)
    assert repr(ds) == "Dataset(num_rows=?, schema=Unknown schema)"
    assert ds.schema().field("Subscription Date").type == pa.date32()
    assert ds.count() == 3000
    assert ds.num_blocks() == 1
    assert repr(data.range(3)) == "Dataset(num_rows=3, schema={id: int64})"
    mapped = data.range(3).map(lambda row: row)
    assert mapped.schema(fetch_if_missing=False) is None
    mapped.take_all()
    assert mapped.stats().splitlines()[1].startswith("map(<lambda>): 1 blocks, 3 rows")


def test_transform_sees_the_stream_and_may_buffer_and_change_columns():
    def pairs(stream):
        for table in rebatch(stream, 2):
            yield pa.table({"first": table["id"][:1], "size": [len(table)]})

    ds = data.range(7, override_num_blocks=3).transform(pairs, "pairs")
    assert ds.take_all() == [
        {"first": 0, "size": 2},
        {"first": 2, "size": 2},
        {"first": 4, "size": 2},
        {"first": 6, "size": 1},
    ]
    assert ds.stats().splitlines()[-1].startswith("pairs: 4 blocks, 4 rows")


def test_transform_preserving_rows_keeps_the_block_layout_and_count():
    def upper_in_threes(stream):
        for table in rebatch(stream, 3):
            yield table.append_column("double", pa.compute.multiply(table["id"], 2))

    ds = (
        data.range(10)
        .repartition(num_blocks=2)
        .transform(upper_in_threes, "llm", preserves_rows=True)
    )
    assert ds.count() == 10
    assert block_sizes(ds) == [5, 5]
    assert [row["double"] for row in ds.take_all()] == [i * 2 for i in range(10)]


def test_transform_that_breaks_its_row_promise_is_an_error():
    def drop_last_row(stream):
        for table in stream:
            yield table.slice(0, len(table) - 1)

    with pytest.raises(ValueError, match="one row per input row"):
        data.range(5).transform(drop_last_row, "lossy", preserves_rows=True).take_all()
    with pytest.raises(TypeError, match="pyarrow Tables"):
        data.range(5).transform(lambda stream: ({"id": 1} for _ in stream), "bad").take_all()
