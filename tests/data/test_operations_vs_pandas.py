"""The operations people use around an LLM stage, each held against pandas computing the same
thing on the same rows (the customers table, with nulls and NaN added)."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llmbatch import data
from llmbatch.data import spill


@pytest.fixture(scope="module")
def frame(customers_table) -> pd.DataFrame:
    table = customers_table.slice(0, 600).select(["Index", "Country", "First Name", "Company"])
    frame = table.to_pandas()
    rng = np.random.default_rng(5)
    frame["score"] = rng.normal(50, 10, len(frame)).round(2)
    frame.loc[rng.choice(len(frame), 40, replace=False), "score"] = np.nan
    frame["group"] = frame["Index"] % 7
    frame["bucket"] = np.where(frame["Index"] % 3 == 0, "a", "b")
    return frame


@pytest.fixture(scope="module")
def ds(frame) -> data.Dataset:
    return data.from_pandas(frame).repartition(6).materialize()


@pytest.fixture
def spilling(monkeypatch):
    """Rows beyond 20 kB go to memory-mapped temporary files, as data beyond memory would."""
    monkeypatch.setattr(spill, "SPILL_THRESHOLD_BYTES", 20_000)


def as_frame(dataset: data.Dataset) -> pd.DataFrame:
    return dataset.to_pandas().reset_index(drop=True)


def test_union_is_rows_of_each_in_turn(ds, frame):
    left, right = ds.limit(100), ds.filter(expr="group == 3")
    expected = pd.concat([frame.head(100), frame[frame["group"] == 3]], ignore_index=True)
    pd.testing.assert_frame_equal(as_frame(left.union(right)), expected)
    assert left.union(right, left).count() == 200 + len(frame[frame["group"] == 3])
    assert data.range(5).union(data.range(3)).count() == 8


def test_zip_puts_rows_side_by_side_and_renames_repeated_columns(ds, frame):
    other = data.range(len(frame), override_num_blocks=4).map(lambda r: {"Index": r["id"] * 2})
    zipped = as_frame(ds.select_columns(["Index", "score"]).zip(other))
    expected = pd.DataFrame(
        {"Index": frame["Index"], "score": frame["score"], "Index_1": np.arange(len(frame)) * 2}
    )
    pd.testing.assert_frame_equal(zipped, expected)
    with pytest.raises(ValueError, match="same number of rows"):
        ds.zip(data.range(3)).take_all()
    shorter = data.range(len(frame) - 1).map(lambda r: r)
    with pytest.raises(ValueError, match="same number of rows"):
        ds.zip(shorter).take_all()


@pytest.mark.parametrize(
    ("key", "descending"),
    [
        ("score", False),
        ("score", True),
        (["Country", "score"], [False, True]),
        ("First Name", False),
    ],
)
def test_sort_orders_rows_as_pandas_does(ds, frame, key, descending, spilling):
    keys = [key] if isinstance(key, str) else key
    flags = descending if isinstance(descending, list) else [descending] * len(keys)
    expected = frame.sort_values(
        keys, ascending=[not flag for flag in flags], kind="stable", na_position="last"
    ).reset_index(drop=True)
    result = ds.sort(key, descending=descending)
    pd.testing.assert_frame_equal(as_frame(result), expected)
    assert result.num_blocks() >= 2


def test_sort_boundaries_cut_the_output_into_blocks(ds, frame):
    blocks = list(ds.sort("score", boundaries=[40, 50, 60]).iter_batches(batch_size=None))
    scores = [block["score"] for block in blocks]
    assert [len(block) for block in scores] == [
        int((frame["score"] < 40).sum()),
        int(frame["score"].between(40, 50, inclusive="left").sum()),
        int(frame["score"].between(50, 60, inclusive="left").sum()),
        int((frame["score"] >= 60).sum() + frame["score"].isna().sum()),
    ]
    with pytest.raises(ValueError, match="increasing"):
        ds.sort("score", boundaries=[5, 1])
    with pytest.raises(ValueError, match="needs a key"):
        ds.sort(None)
    with pytest.raises(ValueError, match="one per key"):
        ds.sort(["a", "b"], descending=[True])


@pytest.mark.parametrize("name", ["sum", "min", "max", "mean", "std"])
def test_groupby_aggregates_match_pandas(ds, frame, name, spilling):
    result = as_frame(getattr(ds.groupby("group"), name)("score"))
    expected = getattr(frame.groupby("group")["score"], name)().reset_index()
    assert list(result.columns) == ["group", f"{name}(score)"]
    assert result["group"].tolist() == expected["group"].tolist()
    np.testing.assert_allclose(result[f"{name}(score)"], expected["score"], rtol=1e-9)


def test_groupby_count_and_several_keys(ds, frame):
    counted = as_frame(ds.groupby(["bucket", "group"]).count())
    expected = frame.groupby(["bucket", "group"]).size().reset_index(name="count()")
    pd.testing.assert_frame_equal(counted, expected)
    means = as_frame(ds.groupby("bucket").mean(["score", "Index"]))
    expected = frame.groupby("bucket")[["score", "Index"]].mean().reset_index()
    np.testing.assert_allclose(means["mean(score)"], expected["score"])
    np.testing.assert_allclose(means["mean(Index)"], expected["Index"])


def test_std_takes_ddof_and_ignore_nulls_false_makes_a_null(ds, frame):
    result = as_frame(ds.groupby("group").std("score", ddof=0))
    expected = frame.groupby("group")["score"].std(ddof=0)
    np.testing.assert_allclose(result["std(score)"], expected.to_numpy())
    with_nulls = ds.groupby("group").sum("score", ignore_nulls=False).take_all()
    has_nan = frame.groupby("group")["score"].apply(lambda s: s.isna().any())
    assert [row["sum(score)"] is None for row in with_nulls] == has_nan.tolist()


def test_map_groups_sees_each_group_whole_in_key_order(ds, frame, spilling):
    def summarise(batch):
        return {"group": batch["group"][:1], "n": np.array([len(batch["Index"])])}

    result = as_frame(ds.groupby("group").map_groups(summarise))
    expected = frame.groupby("group").size().reset_index(name="n")
    pd.testing.assert_frame_equal(result, expected)

    def top(frame_group):
        return frame_group.nlargest(2, "score")[["group", "Index", "score"]]

    mine = as_frame(ds.groupby("group").map_groups(top, batch_format="pandas"))
    theirs = pd.concat([top(group) for _, group in frame.groupby("group")], ignore_index=True)
    pd.testing.assert_frame_equal(mine, theirs)


def test_dataset_aggregates_match_pandas(ds, frame):
    assert ds.sum("Index") == frame["Index"].sum()
    assert ds.min("score") == frame["score"].min()
    assert ds.max("First Name") == frame["First Name"].max()
    assert math.isclose(ds.mean("score"), frame["score"].mean())
    assert math.isclose(ds.std("score"), frame["score"].std())
    assert math.isclose(ds.std("score", ddof=0), frame["score"].std(ddof=0))
    both = ds.sum(["Index", "group"])
    assert both == {"sum(Index)": frame["Index"].sum(), "sum(group)": frame["group"].sum()}
    assert ds.sum("score", ignore_nulls=False) is None
    assert data.range(0).sum("id") is None
    assert data.range(0).mean(["id"]) == {"mean(id)": None}


def test_unique_matches_pandas(ds, frame, spilling):
    assert ds.unique("Country") == frame["Country"].unique().tolist()
    assert sorted(ds.unique("group")) == sorted(frame["group"].unique().tolist())
    with_null = data.from_items([{"v": 1}, {"v": None}, {"v": 1}])
    assert with_null.unique("v") == [1, None]
    assert with_null.unique("v", ignore_nulls=True) == [1]


def test_random_shuffle_is_a_permutation_repeatable_with_a_seed(ds, frame, spilling):
    shuffled = as_frame(ds.random_shuffle(seed=3))
    assert shuffled["Index"].tolist() != frame["Index"].tolist()
    pd.testing.assert_frame_equal(
        shuffled.sort_values("Index").reset_index(drop=True), frame.reset_index(drop=True)
    )
    assert as_frame(ds.random_shuffle(seed=3))["Index"].tolist() == shuffled["Index"].tolist()
    assert as_frame(ds.random_shuffle(seed=4))["Index"].tolist() != shuffled["Index"].tolist()


def test_random_sample_keeps_about_the_fraction_in_order(ds, frame):
    sample = as_frame(ds.random_sample(0.3, seed=1))
    assert 0.2 * len(frame) < len(sample) < 0.4 * len(frame)
    assert sample["Index"].is_monotonic_increasing
    assert set(sample["Index"]) <= set(frame["Index"])
    assert as_frame(ds.random_sample(0.3, seed=1))["Index"].tolist() == sample["Index"].tolist()
    assert ds.random_sample(0.0).count() == 0 and ds.random_sample(1.0).count() == len(frame)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ds.random_sample(1.5)


def test_split_and_split_at_indices_match_numpy(ds, frame):
    pieces = ds.split(4)
    expected = np.array_split(frame["Index"].to_numpy(), 4)
    assert [p.to_pandas()["Index"].tolist() for p in pieces] == [e.tolist() for e in expected]
    equal = ds.split(7, equal=True)
    assert {piece.count() for piece in equal} == {len(frame) // 7}
    cut = ds.split_at_indices([10, 10, 250, 10_000])
    numpy_cut = np.split(frame["Index"].to_numpy(), [10, 10, 250, 10_000])
    assert [p.to_pandas()["Index"].tolist() for p in cut] == [c.tolist() for c in numpy_cut]
    with pytest.raises(ValueError, match="sorted"):
        ds.split_at_indices([5, 2])
    with pytest.raises(ValueError, match="integer >= 0"):
        ds.split_at_indices([-1])


def test_train_test_split_as_ray_cuts_it(ds, frame):
    train, test = ds.train_test_split(0.25)
    assert train.count() == int(len(frame) * 0.75) and test.count() == len(frame) - train.count()
    assert test.to_pandas()["Index"].tolist() == frame["Index"].tolist()[train.count() :]
    train, test = ds.train_test_split(100, shuffle=True, seed=2)
    assert test.count() == 100
    assert sorted(train.to_pandas()["Index"].tolist() + test.to_pandas()["Index"].tolist()) == (
        sorted(frame["Index"].tolist())
    )
    train, test = ds.train_test_split(0.2, stratify="bucket")
    test_frame = test.to_pandas()
    for bucket, rows in frame.groupby("bucket"):
        assert (test_frame["bucket"] == bucket).sum() == int(len(rows) * 0.2)
    assert test_frame["Index"].is_monotonic_increasing
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ds.train_test_split(1.5)


@pytest.mark.parametrize(
    ("expr", "query"),
    [
        (
            "score > 50 and Country != 'Chile'",
            lambda f: (f["score"] > 50) & (f["Country"] != "Chile"),
        ),
        (pc.field("score") > 50, lambda f: f["score"] > 50),
        ("group in (1, 2) or score is None", lambda f: f["group"].isin([1, 2]) | f["score"].isna()),
        ("not (Index % 2 == 0)", lambda f: f["Index"] % 2 != 0),
        ("40 <= score < 55", lambda f: (f["score"] >= 40) & (f["score"] < 55)),
    ],
)
def test_filter_expressions_match_pandas(ds, frame, expr, query):
    expected = frame[query(frame)].reset_index(drop=True)
    pd.testing.assert_frame_equal(as_frame(ds.filter(expr=expr)), expected)


def test_filter_takes_ray_expressions_and_rejects_what_it_cannot_read(ds, frame):
    from ray.data.expressions import col

    assert ds.filter(expr=col("group") == 3).count() == int((frame["group"] == 3).sum())
    with pytest.raises(ValueError, match="not supported"):
        ds.filter(expr="len(Country) > 3")
    with pytest.raises(ValueError, match="exactly one"):
        ds.filter()


def test_show_size_bytes_input_files_and_stats(ds, frame, tmp_path):
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        ds.show(2)
    assert buffer.getvalue().splitlines()[0].startswith("{'Index': 1,")
    assert len(buffer.getvalue().splitlines()) == 2
    blocks = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert ds.size_bytes() == sum(block.nbytes for block in blocks)
    whole = pa.Table.from_pandas(frame, preserve_index=False).nbytes
    assert abs(ds.size_bytes() - whole) < 0.01 * whole
    path = tmp_path / "rows.csv"
    frame.head(5).to_csv(path, index=False)
    read = data.read_csv(path).union(data.read_csv(path))
    assert read.input_files() == [str(path)]
    assert read.size_bytes() > 0
    assert ds.input_files() == []
    stats = read.stats()
    assert "read_csv(1 file): 1 blocks, 5 rows" in stats and "union(2 datasets)" in stats


def test_holding_every_row_spills_to_memory_mapped_files(spilling):
    words = data.range(20_000, override_num_blocks=20).map_batches(
        lambda batch: {"text": [f"row {i} " * 4 for i in batch["id"]]}
    )
    before = pa.total_allocated_bytes()
    table, blocks = spill.collect(words.iter_batches(batch_size=None, batch_format="pyarrow"))
    held = pa.total_allocated_bytes() - before
    assert (table.num_rows, blocks) == (20_000, 20)
    assert table.nbytes > 500_000 and held < 100_000
    rows = spill.RowGatherer(table).take(np.array([19_999, 3, 10_000]))
    assert rows.column("text").to_pylist() == [f"row {i} " * 4 for i in (19_999, 3, 10_000)]
