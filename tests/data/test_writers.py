import base64
import datetime
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmbatch import data


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize(
    ("write", "read"), [("write_parquet", "read_parquet"), ("write_csv", "read_csv")]
)
def test_round_trip_keeps_rows_types_and_spaced_names(
    tmp_path, customers_csv, customers_table, write, read
):
    getattr(data.read_csv(customers_csv), write)(tmp_path / "out")
    back = getattr(data, read)(tmp_path / "out")
    assert back.schema() == customers_table.schema
    assert back.take_all() == customers_table.to_pylist()


def test_json_lines_round_trip(tmp_path, customers_table):
    ds = data.from_arrow(customers_table).drop_columns("Subscription Date")
    ds.write_json(tmp_path / "out")
    assert data.read_json(tmp_path / "out").take_all() == ds.take_all()


def test_json_lines_store_nested_values_dates_and_bytes(tmp_path):
    row = {
        "meta": {"tags": ["a", "b"], "score": 0.5},
        "day": datetime.date(2021, 3, 4),
        "raw": b"\x00\xff",
        "text": "naïve",
    }
    data.from_items([row]).write_json(tmp_path / "out")
    (file,) = (tmp_path / "out").iterdir()
    assert json.loads(file.read_text(encoding="utf-8")) == {
        **row,
        "day": "2021-03-04",
        "raw": base64.b64encode(b"\x00\xff").decode(),
    }


def test_one_file_per_block_named_in_input_order(tmp_path):
    data.range(100, override_num_blocks=4).write_parquet(tmp_path / "blocks")
    names = files_in(tmp_path / "blocks")
    assert len(names) == 4
    rows = [row for name in names for row in pq.read_table(tmp_path / "blocks" / name).to_pylist()]
    assert [row["id"] for row in rows] == list(range(100))


def test_repartition_sets_the_number_of_files(tmp_path, customers_csv):
    data.read_csv(customers_csv).limit(1000).repartition(num_blocks=3).write_csv(tmp_path / "out")
    assert len(files_in(tmp_path / "out")) == 3
    assert data.read_csv(tmp_path / "out").count() == 1000
    data.range(2).repartition(num_blocks=4).write_parquet(tmp_path / "few")
    assert len(files_in(tmp_path / "few")) == 2


def test_min_and_max_rows_per_file(tmp_path):
    data.range(100, override_num_blocks=4).write_parquet(tmp_path / "joined", min_rows_per_file=50)
    assert len(files_in(tmp_path / "joined")) == 2
    data.range(100).write_json(tmp_path / "split", max_rows_per_file=30)
    sizes = [
        len((tmp_path / "split" / name).read_text().splitlines())
        for name in files_in(tmp_path / "split")
    ]
    assert sizes == [30, 30, 30, 10]
    with pytest.raises(ValueError, match="larger than"):
        data.range(3).write_csv(tmp_path / "bad", min_rows_per_file=10, max_rows_per_file=5)


def test_empty_dataset_writes_its_schema(tmp_path):
    data.range(10).filter(lambda row: False).write_parquet(tmp_path / "empty")
    back = data.read_parquet(tmp_path / "empty")
    assert back.count() == 0
    assert back.columns() == ["id"]


def test_a_column_that_gains_a_type_starts_a_new_parquet_file(tmp_path):
    ds = data.range(20, override_num_blocks=2).map(
        lambda row: {"id": row["id"], "note": None if row["id"] < 10 else "late"}
    )
    ds.write_parquet(tmp_path / "out", min_rows_per_file=100)
    back = data.read_parquet(tmp_path / "out").materialize()
    assert back.schema().field("note").type == pa.string()
    assert [row["note"] for row in back.take_all()] == [None] * 10 + ["late"] * 10


def test_csv_stores_nested_columns_as_json_text(tmp_path):
    ds = data.from_items([{"id": 1, "meta": {"a": 1}, "tokens": [1, 2]}])
    ds.write_csv(tmp_path / "out")
    (row,) = data.read_csv(tmp_path / "out").take_all()
    assert json.loads(row["meta"]) == {"a": 1} and json.loads(row["tokens"]) == [1, 2]


def test_failed_write_leaves_only_complete_files(tmp_path):
    def fail_on_third_block(row):
        if row["id"] == 25:
            raise RuntimeError("boom")
        return row

    ds = data.range(40, override_num_blocks=4).map(fail_on_third_block)
    with pytest.raises(RuntimeError, match="boom"):
        ds.write_parquet(tmp_path / "out")
    names = files_in(tmp_path / "out")
    assert len(names) == 2
    assert all(not name.startswith(".") for name in names)
    assert [row["id"] for row in data.read_parquet(tmp_path / "out").take_all()] == list(range(20))


def test_writing_twice_adds_files_and_a_file_path_is_refused(tmp_path):
    data.range(5).write_csv(tmp_path / "out")
    data.range(5).write_csv(tmp_path / "out")
    assert data.read_csv(tmp_path / "out").count() == 10
    (tmp_path / "file.csv").write_text("a\n")
    with pytest.raises(FileExistsError, match="file.csv"):
        data.range(5).write_csv(tmp_path / "file.csv")


def test_parquet_options_reach_pyarrow(tmp_path):
    data.range(5).write_parquet(tmp_path / "out", compression="zstd")
    (name,) = files_in(tmp_path / "out")
    metadata = pq.ParquetFile(tmp_path / "out" / name).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_write_to_fsspec_url(tmp_path):
    folder = f"/written-{tmp_path.name}"
    data.range(10, override_num_blocks=2).write_json(f"memory://{folder}")
    assert len(fsspec.filesystem("memory").ls(folder)) == 2
    assert data.read_json(f"memory://{folder}").count() == 10


def test_an_interrupt_after_the_rename_surfaces_as_itself(tmp_path):
    from llmbatch.data.files import OutputFolder

    folder = OutputFolder.create(tmp_path / "out")

    def interrupted(temporary: str) -> None:
        # as if Ctrl-C landed once the file was renamed: the temporary is gone
        Path(temporary).unlink()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with folder.atomic_file("part.json", before_rename=interrupted) as stream:
            stream.write(b"{}")
    assert files_in(tmp_path / "out") == []
