import gzip
import json
import shutil
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from llmbatch import data


def write_csv_parts(table: pa.Table, folder: Path, parts: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-table.num_rows // parts)
    paths = []
    for index in range(parts):
        path = folder / f"part-{index}.csv"
        pacsv.write_csv(table.slice(index * size, size), path)
        paths.append(path)
    return paths


def test_read_csv_keeps_rows_in_order_with_spaced_column_names(customers_csv, customers_table):
    ds = data.read_csv(customers_csv)
    assert ds.columns() == customers_table.column_names
    assert "Subscription Date" in ds.columns()
    assert ds.take_all() == customers_table.to_pylist()


def test_read_csv_is_lazy(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a\n1\n")
    ds = data.read_csv(path)
    path.write_text("a\n2\n3\n")
    assert ds.take_all() == [{"a": 2}, {"a": 3}]


def test_read_csv_of_folder_glob_and_list_keeps_file_order(tmp_path, customers_table):
    table = customers_table.slice(0, 90)
    folder = tmp_path / "parts"
    paths = write_csv_parts(table, folder, parts=3)
    (folder / "README.txt").write_text("not data")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-9.csv.tmp").write_text("half a file")
    expected = table.to_pylist()

    with pytest.raises(ValueError, match=r"README\.txt is not a CSV file .*file_extensions"):
        data.read_csv(folder).take_all()
    assert data.read_csv(folder, file_extensions=["csv"]).take_all() == expected
    assert data.read_csv(str(folder / "part-*.csv")).take_all() == expected
    reversed_rows = data.read_csv(paths[::-1]).take_all()
    assert reversed_rows == expected[60:] + expected[30:60] + expected[:30]


def test_read_csv_recursive_glob_and_folder(tmp_path, customers_table):
    table = customers_table.slice(0, 40)
    write_csv_parts(table.slice(0, 20), tmp_path / "a", parts=1)
    write_csv_parts(table.slice(20, 20), tmp_path / "b" / "deeper", parts=1)
    expected = table.to_pylist()
    assert data.read_csv(str(tmp_path / "**" / "*.csv")).take_all() == expected
    assert data.read_csv(tmp_path).take_all() == expected
    assert data.read_csv(str(tmp_path / "*" / "*.csv")).take_all() == expected[:20]


def test_read_csv_decompresses_gzip(tmp_path, customers_csv, customers_table):
    path = tmp_path / "customers.csv.gz"
    with open(customers_csv, "rb") as source, gzip.open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    assert data.read_csv(path).take_all() == customers_table.to_pylist()


def test_read_csv_passes_pyarrow_options(tmp_path):
    path = tmp_path / "semicolons.txt"
    path.write_text("id;Sign Up;note\n001;2021-02-03;x\n002;2021-02-04;y\n")
    ds = data.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=";"),
        convert_options=pacsv.ConvertOptions(
            column_types={"id": pa.string()}, include_columns=["id", "Sign Up"]
        ),
    )
    assert ds.schema().names == ["id", "Sign Up"]
    assert ds.schema().field("Sign Up").type == pa.date32()
    assert [row["id"] for row in ds.take_all()] == ["001", "002"]


def test_read_csv_with_block_size_gives_blocks_of_that_size(customers_csv):
    ds = data.read_csv(customers_csv, read_options=pacsv.ReadOptions(block_size=64 << 10))
    assert ds.num_blocks() > 3
    assert ds.count() == 3000


def test_include_paths_names_each_rows_file(tmp_path, customers_table):
    paths = write_csv_parts(customers_table.slice(0, 10), tmp_path, parts=2)
    rows = data.read_csv(paths, include_paths=True).take_all()
    assert [row["path"] for row in rows] == [str(paths[0])] * 5 + [str(paths[1])] * 5


def test_read_csv_of_header_only_file_has_columns_and_no_rows(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("a,b\n")
    ds = data.read_csv(path)
    assert ds.count() == 0
    assert ds.columns() == ["a", "b"]


def test_missing_inputs_raise_errors_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        data.read_csv(tmp_path / "nothing.csv")
    with pytest.raises(FileNotFoundError, match=r"\*\.csv"):
        data.read_csv(str(tmp_path / "*.csv"))
    (tmp_path / "notes.txt").write_text("x\n")
    with pytest.raises(FileNotFoundError, match=r"No files ending in \.csv"):
        data.read_csv(tmp_path, file_extensions=["csv"])
    assert data.read_csv(tmp_path).take_all() == []
    with pytest.raises(ValueError, match="No paths"):
        data.read_csv([])


def test_csv_type_change_after_first_block_names_the_column(tmp_path):
    path = tmp_path / "late.csv"
    path.write_text("name,score\n" + "a,1\n" * 5000 + "b,high\n")
    ds = data.read_csv(path, read_options=pacsv.ReadOptions(block_size=4096))
    with pytest.raises(ValueError, match="'score'.*column_types"):
        ds.take_all()
    fixed = data.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=4096),
        convert_options=pacsv.ConvertOptions(column_types={"score": pa.string()}),
    )
    assert fixed.take_all()[-1] == {"name": "b", "score": "high"}


def test_read_csv_from_http_url(http_folder, customers_csv, customers_table):
    folder, base_url = http_folder
    shutil.copy(customers_csv, folder / "customers.csv")
    with open(customers_csv, "rb") as source, gzip.open(folder / "customers.csv.gz", "wb") as out:
        shutil.copyfileobj(source, out)
    expected = customers_table.to_pylist()
    assert data.read_csv(f"{base_url}/customers.csv").take_all() == expected
    assert data.read_csv(f"{base_url}/customers.csv.gz").take(3) == expected[:3]
    assert data.read_csv(f"{base_url}/customers.csv").limit(5).take_all() == expected[:5]


def test_unreadable_urls_raise_errors_naming_the_url(http_folder):
    _, base_url = http_folder
    missing = data.read_csv(f"{base_url}/missing.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv.*404"):
        missing.take(1)
    closed_port = data.read_csv("http://127.0.0.1:9/data.csv")
    with pytest.raises(OSError, match="127.0.0.1:9/data.csv"):
        closed_port.take(1)


def test_read_parquet_from_http_url(http_folder, customers_table):
    folder, base_url = http_folder
    pq.write_table(customers_table, folder / "customers.parquet")
    ds = data.read_parquet(f"{base_url}/customers.parquet", columns=["Index", "Email"])
    assert ds.take_all() == customers_table.select(["Index", "Email"]).to_pylist()


def test_fsspec_urls_and_filesystems(customers_table):
    memory = fsspec.filesystem("memory")
    table = customers_table.slice(0, 50)
    for index in range(2):
        with memory.open(f"/shop/part-{index}.csv", "wb") as file:
            pacsv.write_csv(table.slice(index * 25, 25), file)
    expected = table.to_pylist()
    assert data.read_csv("memory://shop").take_all() == expected
    assert data.read_csv("memory://shop/part-*.csv").take_all() == expected
    assert data.read_csv("/shop", filesystem=memory).take_all() == expected
    rows = data.read_csv("memory://shop/part-1.csv", include_paths=True).take(1)
    assert rows[0]["path"] == memory.unstrip_protocol("/shop/part-1.csv")


def test_pyarrow_filesystem_is_used_for_paths(tmp_path, customers_table):
    pacsv.write_csv(customers_table.slice(0, 5), tmp_path / "rows.csv")
    ds = data.read_csv(str(tmp_path / "rows.csv"), filesystem=pafs.LocalFileSystem())
    assert ds.take_all() == customers_table.slice(0, 5).to_pylist()


def test_uninstalled_fsspec_protocol_names_the_url():
    with pytest.raises(ValueError, match="nosuchproto://bucket/x.csv"):
        data.read_csv("nosuchproto://bucket/x.csv")


def test_read_json_lines_unifies_types_across_blocks(tmp_path):
    rows = [{"id": i, "note": None, "meta": {"a": i}} for i in range(300)]
    rows += [{"id": 300, "note": "late", "meta": {"a": 1, "b": "new"}, "extra": [1, 2]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    ds = data.read_json(path, read_options=pajson.ReadOptions(block_size=2048))
    assert ds.num_blocks() > 2
    result = ds.materialize()
    assert result.schema().field("note").type == pa.string()
    assert result.schema().field("meta").type == pa.struct([("a", pa.int64()), ("b", pa.string())])
    assert result.take_all()[0] == {
        "id": 0,
        "note": None,
        "meta": {"a": 0, "b": None},
        "extra": None,
    }
    assert result.take_all()[-1] == {**rows[-1], "extra": [1, 2]}


def test_read_json_array_file_and_gzip_lines(tmp_path):
    rows = [{"x": 1, "y": "a"}, {"x": 2, "y": None}]
    (tmp_path / "array.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "lines.jsonl.gz", "wt") as file:
        file.write("\n".join(json.dumps(row) for row in rows))
    assert data.read_json(tmp_path / "array.json").take_all() == rows
    assert data.read_json(tmp_path / "lines.jsonl.gz").take_all() == rows
    assert data.read_json(tmp_path).take_all() == rows + rows


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        data.read_json(path).take_all()


def test_read_parquet_columns_and_blocks(tmp_path, customers_table):
    pq.write_table(customers_table, tmp_path / "customers.parquet", row_group_size=1000)
    ds = data.read_parquet(tmp_path, columns=["Customer Id", "Subscription Date"])
    assert ds.num_blocks() == 3
    assert ds.take_all() == customers_table.select(["Customer Id", "Subscription Date"]).to_pylist()
    with pytest.raises(KeyError, match="Nope"):
        data.read_parquet(tmp_path, columns=["Nope"]).take(1)


def test_parquet_count_comes_from_metadata(tmp_path, customers_table):
    pq.write_table(customers_table, tmp_path / "customers.parquet")
    ds = data.read_parquet(tmp_path / "customers.parquet")
    assert ds.count() == 3000
    assert "not run yet" in ds.stats()
    assert ds.limit(10).count() == 10
