"""Bad rows in real files reach the output as error rows without the model seeing them; a tiny
KV cache, empty inputs and unwritable outputs behave as a user expects."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import llmbatch.data as data
from llmbatch.cli.job import JobError, JobSpec, read_input, run_job
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

ENGINE = {"kv_cache_memory_bytes": 16 << 20, "max_model_len": 96, "max_num_seqs": 4}


def _request(row):
    return {
        "messages": [{"role": "user", "content": f"Name a {row['word'].lower()}"}],
        "sampling_params": {"temperature": 0, "max_tokens": 2},
    }


def _date_request(row):
    month, day, year = row["Subscription Date"].split("-")
    return {
        "messages": [{"role": "user", "content": f"Say {year}/{month}/{day}"}],
        "sampling_params": {"temperature": 0, "max_tokens": 2},
    }


@pytest.fixture(scope="module")
def config(smollm2_dir):
    return LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=ENGINE, batch_size=2)


@pytest.fixture(scope="module")
def processor(config):
    with build_llm_processor(config, preprocess=_request) as processor:
        yield processor


def _read(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_malformed_csv_lines_pass_through_as_error_rows_without_the_model(processor, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,word\n1,apple\n2,pear,extra\n3\n")
    requests_before = processor.engine.stats.num_requests
    processor(data.read_csv(csv)).write_parquet(tmp_path / "out")
    rows = _read(tmp_path / "out")
    assert [row["id"] for row in rows] == [1, None, None]
    assert rows[0]["error"] is None and rows[0]["generated_text"]
    assert "line 3 of" in rows[1]["error"] and "line 4 of" in rows[2]["error"]
    assert rows[1]["generated_text"] is None
    assert processor.engine.stats.num_requests == requests_before + 1
    summary = processor.summary()
    assert summary.rows == 3 and summary.error_rows == 2
    assert summary.errors_by_kind == {"read_csv": 2}


def test_a_number_where_preprocess_expects_text_is_an_error_row(processor, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,word\n1,42\n2,7\n")
    processor(data.read_csv(csv)).write_parquet(tmp_path / "out")
    rows = _read(tmp_path / "out")
    assert [row["word"] for row in rows] == [42, 7]
    for row in rows:
        assert row["error"].startswith("preprocess: AttributeError: 'int' object")
        assert "lower" in row["error"]


def test_a_null_date_is_an_error_row_naming_the_exception(config, tmp_path):
    lines = tmp_path / "customers.jsonl"
    lines.write_text(
        '{"Customer Id": "a1", "Subscription Date": "03-14-2021"}\n'
        '{"Customer Id": "a2", "Subscription Date": null}\n'
    )
    with build_llm_processor(config, preprocess=_date_request) as processor:
        processor(data.read_json(lines)).write_parquet(tmp_path / "out")
    good, bad = _read(tmp_path / "out")
    assert good["error"] is None and good["generated_text"]
    assert bad["Customer Id"] == "a2"
    assert bad["error"].startswith("preprocess: AttributeError") and "split" in bad["error"]


def _long_request(row):
    return {
        "messages": [{"role": "user", "content": f"Write about a {row['word']}"}],
        "sampling_params": {"temperature": 0, "max_tokens": 8},
    }


def test_a_tiny_kv_cache_preempts_and_gives_the_same_output(config, tmp_path):
    rows = [{"word": word} for word in ("cat", "tree", "river")]
    # Blocks of 4 tokens: three 34-token prompts fill 16 blocks, so growing answers preempt.
    small_blocks = {"max_model_len": 64, "block_size": 4, "max_num_seqs": 4}
    budgets = {
        "tiny": {**small_blocks, "num_gpu_blocks_override": 16},
        "large": {**small_blocks, "kv_cache_memory_bytes": 16 << 20},
    }
    answers, preemptions = {}, {}
    for name, engine_kwargs in budgets.items():
        budget = LLMProcessorConfig(
            model_source=config.model_source, engine_kwargs=engine_kwargs, batch_size=3
        )
        with build_llm_processor(budget, preprocess=_long_request) as processor:
            processor(data.from_items(rows)).write_parquet(tmp_path / name)
            preemptions[name] = processor.engine.stats.num_preemptions
            assert processor.summary().preemptions == preemptions[name]
            assert f"preemptions      {preemptions[name]}\n" in processor.summary().format()
        answers[name] = [
            (r["word"], r["generated_text"], r["error"]) for r in _read(tmp_path / name)
        ]
    assert preemptions["tiny"] > 0 and preemptions["large"] == 0
    assert answers["tiny"] == answers["large"]
    assert all(error is None and text for _, text, error in answers["tiny"])


def test_an_empty_dataset_writes_an_empty_output(processor, tmp_path):
    processor(data.from_items([])).write_parquet(tmp_path / "out")
    assert data.read_parquet(tmp_path / "out").count() == 0
    summary = processor.summary()
    assert summary is None or summary.rows == 0


def _job(tmp_path: Path, csv: Path, model: str) -> JobSpec:
    return JobSpec.from_dict(
        {
            "input": {"path": str(csv)},
            "processor": {"model_source": model, "engine_kwargs": ENGINE},
            "prompt": {"user": "Name a {word}"},
            "sampling_params": {"temperature": 0, "max_tokens": 2},
            "output": {"path": str(tmp_path / "out"), "format": "parquet"},
        }
    )


def test_an_empty_csv_file_gives_an_empty_output_and_a_summary_of_0_rows(smollm2_dir, tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_bytes(b"")
    spec = _job(tmp_path, csv, smollm2_dir)
    spec.prompt.user = "Say hello"
    result = run_job(spec, show_progress=False)
    assert result.summary.rows == 0 and result.report.total_rows == 0
    assert data.read_parquet(tmp_path / "out").count() == 0


def test_an_output_path_under_a_file_fails_before_any_model_work(config, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    calls = []

    def preprocess(row):
        calls.append(row)
        return _request(row)

    with build_llm_processor(config, preprocess=preprocess) as fresh:
        with pytest.raises(PermissionError, match="cannot create the output folder"):
            fresh(data.from_items([{"word": "a"}])).write_parquet(blocker / "out")
        assert fresh.summary() is None
    assert calls == []


def test_a_job_names_a_wrong_on_bad_lines_and_passes_a_right_one_to_the_reader(tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,word\n1,apple\n2,pear,extra\n")
    spec = {
        "input": {"path": str(csv), "on_bad_lines": "drop"},
        "processor": {"model_source": "unused"},
        "prompt": {"user": "Name a {word}"},
        "output": {"path": str(tmp_path / "out")},
    }
    with pytest.raises(JobError, match="input.on_bad_lines='drop'; accepted: error_row, fail"):
        JobSpec.from_dict(spec)
    spec["input"]["on_bad_lines"] = "fail"
    with pytest.raises(ValueError, match="Row #3"):
        read_input(JobSpec.from_dict(spec).input).take_all()
