"""Job files: their sections, the user message template, and the errors a wrong file gets."""

from __future__ import annotations

import pytest
import yaml

from llmbatch.cli.job import JobError, JobSpec, PromptSpec

JOB = {
    "input": {"path": "customers.csv", "limit": 10},
    "processor": {"model_source": "some/model", "engine_kwargs": {"max_model_len": 4096}},
    "prompt": {
        "system": "You are a helpful assistant.",
        "user": "Convert this date:\n{Subscription Date}\n\n as the format:MM-DD-YYYY",
    },
    "sampling_params": {"temperature": 0.3, "max_tokens": 150},
    "output": {"path": "out", "format": "csv"},
}


def job(**changes):
    spec = {**JOB, **changes}
    return JobSpec.from_dict(spec)


def test_a_job_file_is_read_into_its_sections(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    spec = JobSpec.from_yaml(path)
    assert (spec.input.path, spec.input.format, spec.input.limit) == ("customers.csv", "csv", 10)
    assert spec.processor.engine_kwargs == {"max_model_len": 4096}
    assert (spec.output.path, spec.output.format) == ("out", "csv")


def test_the_user_template_fills_columns_with_spaces_in_their_names():
    spec = job()
    request = spec.preprocess({"Subscription Date": "2021-03-04", "Index": 1})
    assert request["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Convert this date:\n2021-03-04\n\n as the format:MM-DD-YYYY"},
    ]
    assert request["sampling_params"] == {"temperature": 0.3, "max_tokens": 150}


def test_double_braces_are_literal_and_missing_values_are_empty():
    prompt = PromptSpec(user="{{json}} {a}|{b b}")
    assert prompt.columns == ["a", "b b"]
    assert prompt.render({"a": 1, "b b": None}) == "{json} 1|"
    assert prompt.messages({"a": 1, "b b": 2}) == [{"role": "user", "content": "{json} 1|2"}]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"inputs": {}}, r"job: unknown key\(s\) 'inputs'; accepted: input, processor"),
        ({"input": {"path": "rows.txt"}}, "set input.format to one of csv, parquet, json"),
        ({"input": {"path": "rows.csv", "limit": 0}}, "input.limit must be a positive integer"),
        ({"input": {"path": "rows.csv", "sep": ";"}}, r"input: unknown key\(s\) 'sep'"),
        ({"output": {"path": "out", "format": "xlsx"}}, "output.format='xlsx'; accepted"),
        (
            {"processor": {"model_source": "m", "batch": 3}},
            r"processor: .*unknown field\(s\) 'batch'",
        ),
        ({"sampling_params": {"temprature": 0.3}}, r"sampling_params: unknown sampling parameter"),
        ({"sampling_params": {"max_tokens": 0}}, "max_tokens must be at least 1"),
        ({"prompt": {"system": "s"}}, "prompt: .*missing 1 required positional argument: 'user'"),
        ({"prompt": "hello"}, "prompt must be a mapping"),
    ],
)
def test_a_wrong_job_gets_an_error_saying_what_to_change(changes, expected):
    with pytest.raises(JobError, match=expected):
        job(**changes)


def test_a_missing_section_is_named():
    spec = dict(JOB)
    del spec["output"]
    with pytest.raises(JobError, match=r"missing section\(s\) output"):
        JobSpec.from_dict(spec)


def test_an_unreadable_or_invalid_file_is_named(tmp_path):
    with pytest.raises(JobError, match="cannot read the job file"):
        JobSpec.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed")
    with pytest.raises(JobError, match="is not valid YAML"):
        JobSpec.from_yaml(bad)
