import datetime
import re

import pyarrow as pa
import pyarrow.compute as pc

from llmbatch import data
from llmbatch._fixtures import customers


def test_schema_matches_the_public_customers_files():
    table = next(customers.generate_customers(10))
    assert table.column_names == [
        "Index",
        "Customer Id",
        "First Name",
        "Last Name",
        "Company",
        "City",
        "Country",
        "Phone 1",
        "Phone 2",
        "Email",
        "Subscription Date",
        "Website",
    ]
    assert table.schema == customers.CUSTOMERS_SCHEMA
    assert table["Index"].to_pylist() == list(range(1, 11))


def test_same_seed_gives_same_rows_whatever_the_batch_size():
    whole = pa.concat_tables(customers.generate_customers(40_000, seed=3, batch_size=40_000))
    pieces = list(customers.generate_customers(40_000, seed=3, batch_size=7_000))
    assert [len(piece) for piece in pieces] == [7_000] * 5 + [5_000]
    assert pa.concat_tables(pieces).equals(whole)
    assert pa.concat_tables(customers.generate_customers(100, seed=3)).equals(whole.slice(0, 100))
    other_seed = pa.concat_tables(customers.generate_customers(100, seed=4))
    assert not other_seed.equals(whole.slice(0, 100))


def test_values_are_distinct_and_well_formed():
    table = pa.concat_tables(customers.generate_customers(20_000, seed=1))
    ids = table["Customer Id"]
    assert pc.count_distinct(ids).as_py() == 20_000
    assert all(re.fullmatch(r"[0-9a-fA-F]{15}", value) for value in ids.to_pylist()[:1000])
    for column in ("First Name", "Last Name", "City", "Country", "Company", "Phone 1", "Email"):
        assert pc.count_distinct(table[column]).as_py() > 20, column
    assert all("@" in email for email in table["Email"].to_pylist()[:1000])
    days = table["Subscription Date"].to_pylist()
    assert min(days) >= datetime.date(2020, 1, 1)
    assert max(days) <= datetime.date(2022, 12, 31)
    assert all(site.startswith(("http://", "https://")) for site in table["Website"].to_pylist())


def test_csv_file_reads_back_with_its_column_names(tmp_path):
    path = tmp_path / "customers-500.csv"
    customers.write_customers_csv(path, 500, seed=2)
    ds = data.read_csv(path)
    assert ds.take_all() == pa.concat_tables(customers.generate_customers(500, seed=2)).to_pylist()
    assert [p.name for p in tmp_path.iterdir()] == ["customers-500.csv"]
