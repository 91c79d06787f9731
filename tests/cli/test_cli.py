"""The `llmbatch` command end to end: a YAML job on real files, and the demo."""

from __future__ import annotations

import json
import re

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from llmbatch import SamplingParams
from llmbatch._fixtures.customers import write_customers_csv
from llmbatch.cli import main

ENGINE_KWARGS = {"max_model_len": 1024, "kv_cache_memory_bytes": 64 << 20}
SYSTEM = "You are a helpful assistant."
USER = "Convert this date:\n{Subscription Date}\n\n as the format:MM-DD-YYYY"
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def customers_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "customers.csv"
    write_customers_csv(str(path), num_rows=20, seed=3)
    return path


def write_job(folder, customers_csv, model_source, **changes):
    job = {
        "input": {"path": str(customers_csv), "limit": 10},
        "processor": {
            "model_source": model_source,
            "engine_kwargs": ENGINE_KWARGS,
            "batch_size": 2,
        },
        "prompt": {"system": SYSTEM, "user": USER},
        "sampling_params": {"temperature": 0.0, "max_tokens": MAX_TOKENS},
        "output": {"path": str(folder / "not-used"), "format": "csv"},
        **changes,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_run_writes_the_engines_answers_for_each_row(tmp_path, customers_csv, smollm2_dir, capsys):
    from llmbatch import LLM

    job = write_job(tmp_path, customers_csv, smollm2_dir)
    out = tmp_path / "out"
    assert main(["run", str(job), "--limit", "3", "--output", str(out), "--no-progress"]) == 0

    assert not (tmp_path / "not-used").exists()
    files = sorted(out.glob("*.csv"))
    rows = [row for path in files for row in pacsv.read_csv(path).to_pylist()]
    originals = pacsv.read_csv(customers_csv).slice(0, 3).to_pylist()
    assert [row["Customer Id"] for row in rows] == [row["Customer Id"] for row in originals]
    messages = [
        [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": USER.replace("{Subscription Date}", str(row["Subscription Date"])),
            },
        ]
        for row in originals
    ]
    with LLM(smollm2_dir, **ENGINE_KWARGS) as llm:
        expected = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    for row, output, conversation in zip(rows, expected, messages):
        assert json.loads(row["messages"]) == conversation
        assert json.loads(row["generated_tokens"]) == output.token_ids
        assert (row["generated_text"] or "") == output.text
        assert row["error"] in (None, "")
    printed = capsys.readouterr().out
    assert f"wrote 3 rows to {out} (csv)" in printed
    assert "error rows       0" in printed


def test_run_names_what_is_wrong_in_a_job(tmp_path, customers_csv, capsys):
    job = write_job(tmp_path, customers_csv, "some/model", outputs={"path": "x"})
    assert main(["run", str(job)]) == 1
    assert "unknown key(s) 'outputs'" in capsys.readouterr().err


def test_run_names_template_columns_the_input_lacks(tmp_path, customers_csv, capsys):
    job = write_job(tmp_path, customers_csv, "some/model", prompt={"user": "{Subscription}"})
    assert main(["run", str(job)]) == 1
    err = capsys.readouterr().err
    assert "names column(s) 'Subscription' that the input lacks" in err
    assert "Subscription Date" in err


def test_arguments_are_checked(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "job.yaml", "--limit", "0"])
    assert info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_demo_prints_three_rows_and_the_summary(tmp_path, smollm2_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--rows", "3", "--max-tokens", "4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("--- row")] == [
        "--- row 0",
        "--- row 1",
        "--- row 2",
    ]
    assert re.search(r"^Subscription Date: \d{4}-\d\d-\d\d$", printed, re.MULTILINE)
    assert "rows             3" in printed
    table = pq.read_table(out)
    assert table.num_rows == 3
    assert table.column("resp").to_pylist() == table.column("generated_text").to_pylist()
    assert all(n and n <= 4 for n in table.column("num_generated_tokens").to_pylist())
