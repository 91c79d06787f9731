"""Bad input ends as a clear error or an error row, and nothing else is lost."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import llmbatch.data as data
from llmbatch.data.checkpoint import OutputConflictError
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

ENGINE = {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 64}


def _request(row):
    return {
        "messages": [{"role": "user", "content": f"Name {row['word']}"}],
        "sampling_params": {"temperature": 0, "max_tokens": 2},
    }


@pytest.fixture(scope="module")
def processor(smollm2_dir):
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=ENGINE, batch_size=4)
    with build_llm_processor(config, preprocess=_request) as processor:
        yield processor


def _read(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_missing_column_becomes_an_error_row_naming_the_columns(processor, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n1,a\n")
    processor(data.read_csv(csv)).write_parquet(tmp_path / "out")
    (row,) = _read(tmp_path / "out")
    assert row["error"].startswith("preprocess: KeyError")
    assert "'word'" in row["error"] and "'id', 'text'" in row["error"]
    assert row["id"] == 1


def test_header_only_csv_gives_an_empty_output(processor, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,word\n")
    processor(data.read_csv(csv)).write_parquet(tmp_path / "out")
    assert data.read_parquet(tmp_path / "out").count() == 0
    assert processor.summary() is None or processor.summary().rows == 0


def test_prompt_longer_than_max_model_len_is_an_error_row(processor, tmp_path):
    rows = [{"word": "x"}, {"word": "long " * 200}]
    processor(data.from_items(rows)).write_parquet(tmp_path / "out")
    short, long = _read(tmp_path / "out")
    assert short["error"] is None
    assert long["error"].startswith("engine:") and "max_model_len" in long["error"]


def test_another_job_into_the_same_folder_is_an_error_unless_overwrite(processor, tmp_path):
    processor(data.from_items([{"word": "a"}])).write_parquet(tmp_path / "out")
    other = processor(data.from_items([{"word": "b"}]))
    with pytest.raises(OutputConflictError, match="overwrite=True"):
        other.write_parquet(tmp_path / "out")
    assert _read(tmp_path / "out")[0]["word"] == "a"
    processor(data.from_items([{"word": "b"}])).write_parquet(tmp_path / "out", overwrite=True)
    assert [r["word"] for r in _read(tmp_path / "out")] == ["b"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_fails_before_the_model_runs(processor, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="cannot write"):
        processor(data.from_items([{"word": "a"}])).write_parquet(locked)


def test_csv_output_stores_nested_columns_as_json(processor, tmp_path):
    processor(data.from_items([{"word": "a"}])).write_csv(tmp_path / "out")
    (row,) = data.read_csv(tmp_path / "out").take_all()
    assert row["messages"].startswith('[{"role": "user"')


def test_max_error_rate_stops_the_job(smollm2_dir, tmp_path):
    config = LLMProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=ENGINE, batch_size=4, max_error_rate=0.5
    )
    rows = data.from_items([{"other": i} for i in range(40)])
    with build_llm_processor(config, preprocess=_request) as processor:
        with pytest.raises(RuntimeError, match="max_error_rate=0.5"):
            processor(rows).write_parquet(tmp_path / "out")


def test_missing_model_file_fails_before_reading_rows(tmp_path):
    config = LLMProcessorConfig(model_source=str(tmp_path / "nope.gguf"))
    read = []
    rows = data.from_items([{"word": "a"}]).map(lambda row: read.append(row) or row)
    with pytest.raises((FileNotFoundError, ValueError), match="nope.gguf"):
        build_llm_processor(config, preprocess=_request)(rows).write_parquet(tmp_path / "out")
    assert read == []


def test_unknown_engine_setting_is_an_error(smollm2_dir):
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs={"max_num_seq": 4})
    with pytest.raises((TypeError, ValueError), match="max_num_seq"):
        build_llm_processor(config)


def test_invalid_sampling_params_become_error_rows(processor, tmp_path):
    def bad(row):
        return {"prompt": "hi", "sampling_params": {"temperature": -1}}

    with build_llm_processor(processor.config, preprocess=bad) as other:
        other(data.from_items([{"word": "a"}])).write_parquet(tmp_path / "out")
    (row,) = _read(tmp_path / "out")
    assert row["error"].startswith("sampling_params:") and "temperature" in row["error"]
