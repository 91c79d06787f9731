"""A batch job described in YAML: where the rows come from, how each becomes a chat request,
which model runs it, and where the results go."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from llmbatch.cli.progress import progress_bar
from llmbatch.data.csv_checks import BAD_LINE_CHOICES
from llmbatch.llm.config import LLMProcessorConfig
from llmbatch.llm.summary import RunStats, RunSummary

if TYPE_CHECKING:
    from llmbatch.data import Dataset
    from llmbatch.data.resume import WriteReport

FORMATS = ("csv", "parquet", "json")
_EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
}
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class JobError(ValueError):
    """A job file that cannot run as written; the message says what to change."""


def _check_keys(section: str, given: dict[str, Any], accepted: list[str]) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise JobError(
            f"{section}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise JobError(f"{name} must be a mapping, got {type(value).__name__} ({value!r})")
    return value


def _section(cls: type, name: str, value: Any) -> Any:
    _mapping(name, value)
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(name, value, names)
    try:
        return cls(**value)
    except TypeError as exc:
        raise JobError(f"{name}: {exc}") from exc


def _check_path(section: str, path: Any) -> None:
    if not isinstance(path, str) or not path:
        raise JobError(f"{section}.path must be a non-empty path or URL, got {path!r}")


def format_of(path: str, given: str | None, section: str) -> str:
    """The file format: `given`, or the one the path's extension names."""
    if given is not None:
        if given not in FORMATS:
            raise JobError(f"{section}.format={given!r}; accepted: {', '.join(FORMATS)}")
        return given
    suffix = Path(path.split("?", 1)[0]).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise JobError(
            f"{section}.format is not given and {path!r} has no known extension; "
            f"set {section}.format to one of {', '.join(FORMATS)}"
        )
    return _EXTENSIONS[suffix]


@dataclass(slots=True)
class InputSpec:
    """Rows to read: a file, folder, glob or URL; `limit` keeps the first rows only;
    `on_bad_lines` (CSV) is as in `llmbatch.data.read_csv`."""

    path: str
    format: str | None = None
    limit: int | None = None
    on_bad_lines: str = "error_row"

    def __post_init__(self) -> None:
        _check_path("input", self.path)
        self.format = format_of(self.path, self.format, "input")
        if self.on_bad_lines not in BAD_LINE_CHOICES:
            raise JobError(
                f"input.on_bad_lines={self.on_bad_lines!r}; accepted: {', '.join(BAD_LINE_CHOICES)}"
            )
        if self.on_bad_lines != "error_row" and self.format != "csv":
            raise JobError("input.on_bad_lines applies to CSV input only; remove it")
        limit = self.limit
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise JobError(f"input.limit must be a positive integer, got {limit!r}")


@dataclass(slots=True)
class OutputSpec:
    """A folder that receives the result files."""

    path: str
    format: str = "parquet"

    def __post_init__(self) -> None:
        _check_path("output", self.path)
        format_of(self.path, self.format, "output")


@dataclass(slots=True)
class PromptSpec:
    """Chat messages of each row: an optional system prompt and a user message in which
    ``{column}`` is replaced by the row's value (``{{`` and ``}}`` give literal braces)."""

    user: str
    system: str | None = None

    def __post_init__(self) -> None:
        for name in ("user", "system"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise JobError(f"prompt.{name} must be text, got {type(value).__name__}")

    @property
    def columns(self) -> list[str]:
        """The columns the user message names."""
        return [m.group(1) for m in _FIELD.finditer(self.user) if m.group(1) is not None]

    def render(self, row: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return match.group(0)[0]
            value = row[match.group(1)]
            return "" if value is None else str(value)

        return _FIELD.sub(replace, self.user)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*system, {"role": "user", "content": self.render(row)}]


@dataclass(slots=True)
class JobSpec:
    """A whole job; see `JobSpec.from_yaml` for the file layout."""

    input: InputSpec
    processor: LLMProcessorConfig
    prompt: PromptSpec
    output: OutputSpec
    sampling_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> JobSpec:
        """Reads a job file with the sections input, processor, prompt, sampling_params,
        structured_outputs (optional) and output."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise JobError(f"cannot read the job file {os.fspath(path)!r}: {exc}") from exc
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise JobError(f"{os.fspath(path)!r} is not valid YAML: {exc}") from exc
        return cls.from_dict(spec)

    @classmethod
    def from_dict(cls, spec: Any) -> JobSpec:
        if not isinstance(spec, dict):
            raise JobError(f"a job is a mapping of sections, got {type(spec).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        _check_keys("job", spec, [*names, "structured_outputs"])
        missing = [name for name in ("input", "processor", "prompt", "output") if name not in spec]
        if missing:
            raise JobError(f"job: missing section(s) {', '.join(missing)}")
        sampling_params = spec.get("sampling_params") or {}
        if not isinstance(sampling_params, dict):
            raise JobError("sampling_params must be a mapping of vLLM sampling parameter names")
        try:
            processor = LLMProcessorConfig(**_mapping("processor", spec["processor"]))
        except (TypeError, ValueError) as exc:
            raise JobError(f"processor: {exc}") from exc
        from llmbatch.engine.sampling_params import SamplingParams

        if spec.get("structured_outputs") is not None:
            if "structured_outputs" in sampling_params:
                raise JobError(
                    "give structured_outputs either as a section or in sampling_params, not both"
                )
            sampling_params = {
                **sampling_params,
                "structured_outputs": structured_outputs_of(spec["structured_outputs"]),
            }
        try:
            SamplingParams.from_dict(sampling_params)
        except (TypeError, ValueError) as exc:
            raise JobError(f"sampling_params: {exc}") from exc
        return cls(
            input=_section(InputSpec, "input", spec["input"]),
            processor=processor,
            prompt=_section(PromptSpec, "prompt", spec["prompt"]),
            output=_section(OutputSpec, "output", spec["output"]),
            sampling_params=sampling_params,
        )

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        """The chat request of one input row."""
        return {
            "messages": self.prompt.messages(row),
            "sampling_params": dict(self.sampling_params),
        }


def structured_outputs_of(section: Any) -> dict[str, Any]:
    """The job's ``structured_outputs`` section as a constraint every row shares: the keys of
    `llmbatch.StructuredOutputsParams`, with ``json_file`` and ``grammar_file`` read from files.
    The constraint is checked now, so a bad schema fails before any row runs."""
    from llmbatch.engine.structured_outputs import checked_grammar
    from llmbatch.engine.structured_outputs_params import StructuredOutputsParams

    section = dict(_mapping("structured_outputs", section))
    for key, target in (("json_file", "json"), ("grammar_file", "grammar")):
        if key in section:
            if target in section:
                raise JobError(f"structured_outputs: give {target} or {key}, not both")
            path = section.pop(key)
            try:
                section[target] = Path(path).read_text()
            except (OSError, TypeError) as exc:
                raise JobError(f"structured_outputs.{key}: cannot read {path!r}: {exc}") from exc
    try:
        params = StructuredOutputsParams.from_dict(section)
        checked_grammar(params)
    except (TypeError, ValueError) as exc:
        raise JobError(f"structured_outputs: {exc}") from exc
    return params.to_record()


def read_input(spec: InputSpec) -> Dataset:
    """The input rows as a Dataset, with the limit applied."""
    from llmbatch import data

    if spec.format == "csv":
        dataset = data.read_csv(spec.path, on_bad_lines=spec.on_bad_lines)
    else:
        dataset = {"parquet": data.read_parquet, "json": data.read_json}[spec.format](spec.path)
    return dataset.limit(spec.limit) if spec.limit is not None else dataset


@dataclass(slots=True, frozen=True)
class JobResult:
    """A finished job: the processor's summary of this run and what the write committed."""

    summary: RunSummary
    report: WriteReport


def run_job(
    spec: JobSpec,
    show_progress: bool = True,
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
) -> JobResult:
    """Reads, processes and writes, resuming an interrupted run of the same job into the same
    output folder; ``overwrite`` replaces another job's output, ``retry_failed`` re-runs the
    error rows of a finished one."""
    from llmbatch.data.dataset import resumable_job
    from llmbatch.data.resume import rows_to_process, write_resumable
    from llmbatch.llm.processor import build_llm_processor

    dataset = read_input(spec.input)
    columns = dataset.columns() or []
    missing = [c for c in spec.prompt.columns if c not in columns]
    if missing and columns:
        raise JobError(
            f"prompt.user names column(s) {', '.join(map(repr, missing))} that the input lacks; "
            f"its columns: {', '.join(columns)}"
        )
    total = spec.input.limit
    if "://" not in spec.input.path:
        total = dataset.count()
    with build_llm_processor(spec.processor, preprocess=spec.preprocess) as processor:
        job = resumable_job(processor(dataset))
        assert job is not None
        if show_progress:
            process = job.process

            def process_with_bar(blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
                # Called once the write has claimed the folder, so the committed rows are known.
                remaining = rows_to_process(spec.output.path, total)
                return progress_bar(processor, remaining)(process(blocks))

            job = dataclasses.replace(job, process=process_with_bar)
        report = write_resumable(
            job,
            spec.output.path,
            spec.output.format,
            overwrite=overwrite,
            retry_failed=retry_failed,
        )
        # A write with nothing left to do never runs the processor.
        return JobResult(processor.summary() or RunStats().summary(), report)
