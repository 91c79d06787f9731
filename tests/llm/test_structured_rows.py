"""Structured outputs through the processor: a constraint in a row's sampling_params (as Ray Data
LLM passes it) shapes that row's answer; rows of different schemas share a table; a bad schema is
an error row while the other rows finish."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import llmbatch.data as data
from llmbatch._fixtures.customers import write_customers_csv
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

jsonschema = pytest.importorskip("jsonschema")
DATE = r"\d{2}-\d{2}-\d{4}"
CUSTOMER = {
    "type": "object",
    "properties": {
        "first_name": {"type": "string", "maxLength": 20},
        "year": {"type": "integer"},
        "tier": {"enum": ["gold", "silver", "bronze"]},
    },
    "required": ["first_name", "year", "tier"],
}


@pytest.fixture(scope="module")
def processor(smollm2_dir, engine_kwargs):
    config = LLMProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=16
    )
    with build_llm_processor(config, preprocess=lambda row: row["request"]) as processor:
        yield processor


@pytest.fixture(scope="module")
def customers(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("customers") / "customers.csv"
    write_customers_csv(str(path), num_rows=64, seed=11)
    return data.read_csv(str(path)).take_all()


def date_request(row: dict, tutorial_messages, constrained: bool = True) -> dict:
    params: dict = {"temperature": 0.3, "max_tokens": 16, "seed": 1}
    if constrained:
        params["structured_outputs"] = {"regex": DATE}
    return {"messages": tutorial_messages(row), "sampling_params": params}


def test_every_date_of_the_tutorial_task_matches_the_regex(processor, customers, tutorial_messages):
    rows = [{"request": date_request(row, tutorial_messages)} for row in customers]
    out = processor(data.from_items(rows)).take_all()
    assert len(out) == 64 and all(row["error"] is None for row in out)
    assert all(re.fullmatch(DATE, row["generated_text"]) for row in out)
    free = [{"request": date_request(row, tutorial_messages, False)} for row in customers[:8]]
    # without the constraint the small model rarely answers in the format
    texts = [row["generated_text"] for row in processor(data.from_items(free)).take_all()]
    assert sum(bool(re.fullmatch(DATE, t)) for t in texts) < len(texts)


def test_json_rows_of_different_schemas_and_a_bad_schema_in_one_batch(
    smollm2_dir, engine_kwargs, customers
):
    pydantic = pytest.importorskip("pydantic")

    class Tier(pydantic.BaseModel):
        tier: str

    schemas = [
        CUSTOMER,
        {"type": "object", "properties": {"city": {"type": ["string", "null"]}}},
        Tier,
        {"type": "not-a-type"},
    ]

    def request(row: dict) -> dict:
        i = row["i"]
        prompt = f"Describe the customer {row['First Name']} from {row['City']} as JSON."
        spec = {"json": schemas[i % 4], "disable_any_whitespace": True}
        key = "guided_decoding" if i == 5 else "structured_outputs"
        params = {"temperature": 0, "max_tokens": 48, key: spec}
        return {"messages": [{"role": "user", "content": prompt}], "sampling_params": params}

    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=4)
    rows = [{"i": i, **customer} for i, customer in enumerate(customers[:12])]
    with pytest.warns(FutureWarning, match="guided_decoding is deprecated"):
        out = build_llm_processor(config, preprocess=request)(data.from_items(rows)).take_all()
    assert [row["i"] for row in out] == list(range(12))
    for row in out:
        if row["i"] % 4 == 3:
            assert row["error"].startswith("engine: RequestRejected: structured outputs json")
            assert "not-a-type" in row["error"]
            continue
        assert row["error"] is None
        if row["finish_reason"] == "stop":
            schema = schemas[row["i"] % 4]
            schema = schema.model_json_schema() if isinstance(schema, type) else schema
            jsonschema.validate(json.loads(row["generated_text"]), schema)


def test_a_job_file_constrains_every_row(tmp_path, smollm2_dir):
    import yaml

    from llmbatch.cli import main

    csv = tmp_path / "customers.csv"
    write_customers_csv(str(csv), num_rows=6, seed=2)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(CUSTOMER))
    job = {
        "input": {"path": str(csv)},
        "processor": {"model_source": smollm2_dir, "engine_kwargs": {"max_model_len": 512}},
        "prompt": {"user": "Describe {First Name} from {City} as JSON."},
        "sampling_params": {"temperature": 0, "max_tokens": 48},
        "structured_outputs": {"json_file": str(schema_file), "disable_any_whitespace": True},
        "output": {"path": str(tmp_path / "out"), "format": "json"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 0
    files = sorted((tmp_path / "out").glob("[0-9]*.json"))
    lines = [json.loads(line) for f in files for line in f.open()]
    assert len(lines) == 6
    for line in lines:
        if line["finish_reason"] == "stop":
            jsonschema.validate(json.loads(line["generated_text"]), CUSTOMER)
        assert line["generated_text"].startswith('{"')


def test_a_bad_job_constraint_fails_before_any_row_runs(tmp_path: Path):
    from llmbatch.cli.job import JobError, JobSpec

    job = {
        "input": {"path": "rows.csv"},
        "processor": {"model_source": "any/model"},
        "prompt": {"user": "hi"},
        "structured_outputs": {"regex": "(unclosed"},
        "output": {"path": "out"},
    }
    with pytest.raises(JobError, match="structured_outputs: structured outputs regex is invalid"):
        JobSpec.from_dict(job)
    job["structured_outputs"] = {"json_file": str(tmp_path / "missing.json")}
    with pytest.raises(JobError, match="structured_outputs.json_file: cannot read"):
        JobSpec.from_dict(job)
