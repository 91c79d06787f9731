"""Column names the stages read and write, per-row errors, and Arrow helpers they share."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from llmbatch.engine.structured_outputs_params import StructuredOutputsParams

MESSAGES = "messages"
PROMPT = "prompt"
SAMPLING_PARAMS = "sampling_params"
PROMPT_TOKEN_IDS = "prompt_token_ids"
ERROR = "error"
# Ray Data LLM 2.60's error column (with should_continue_on_error=True): "" for a good row.
INFERENCE_ERROR = "__inference_error__"
TOKENIZATION_KWARGS = "tokenization_kwargs"
MULTIMODAL_DATA = "multimodal_data"
# The HTTP processor's request and answer.
PAYLOAD = "payload"
HTTP_RESPONSE = "http_response"
# A row's decoded images (after preprocess) and processed image inputs (after tokenize).
IMAGES = "__llmbatch_images"
MULTI_MODAL = "__llmbatch_multi_modal"
# Read by the engine stage and dropped there: they never reach postprocess or the output.
INTERMEDIATE_COLUMNS = (PROMPT_TOKEN_IDS, IMAGES, MULTI_MODAL)

GENERATION_TYPES: dict[str, pa.DataType] = {
    "generated_text": pa.string(),
    "generated_tokens": pa.list_(pa.int64()),
    "num_input_tokens": pa.int64(),
    "num_generated_tokens": pa.int64(),
    "finish_reason": pa.string(),
    "time_taken_llm": pa.float64(),
}
# A list (one entry per sample) on tables where a row asked for n > 1 answers
PER_SAMPLE_COLUMNS = ("generated_text", "generated_tokens", "num_generated_tokens", "finish_reason")
# Written as Ray Data LLM 2.60 writes them (processors built with build_processor).
RAY_GENERATION_TYPES: dict[str, pa.DataType] = {
    "prompt_token_ids": pa.list_(pa.int64()),
    "request_id": pa.int64(),
    "params": pa.string(),
}
# A pooling model's rows: a row's optional pooling params, and its answer (an embedding or
# class probabilities) in place of the generation columns.
POOLING_PARAMS = "pooling_params"
POOLING_TYPES: dict[str, pa.DataType] = {
    "embeddings": pa.list_(pa.float32()),
    "probs": pa.list_(pa.float32()),
}
POOLING_COLUMN_OF_TASK = {"embed": "embeddings", "classify": "probs"}
# The LoRA adapter a row runs with: a folder in ``lora``, or (Ray Data LLM's convention) an
# adapter named in ``model`` when it is not the processor's model.
MODEL = "model"
LORA = "lora"
# Only on tables where a row asked for logprobs in its sampling params.
LOGPROBS = "logprobs"
LOGPROBS_TYPE = pa.list_(
    pa.list_(
        pa.struct(
            [
                ("token_id", pa.int64()),
                ("logprob", pa.float64()),
                ("rank", pa.int64()),
                ("decoded_token", pa.string()),
            ]
        )
    )
)

_ERROR_SEPARATOR = ": "


def format_error(stage: str, exc: BaseException) -> str:
    """The text of an error row: the stage that failed, the exception type and its message."""
    return f"{stage}{_ERROR_SEPARATOR}{type(exc).__name__}{_ERROR_SEPARATOR}{exc}"


def error_kind(error: str) -> str:
    """The stage name at the start of an error row's text."""
    return error.split(_ERROR_SEPARATOR, 1)[0]


def errors_of(table: pa.Table) -> list[str | None]:
    """The error column of a table as Python values (all None when it has none yet). An empty
    error is no error: Ray Data LLM writes "" for good rows, and ported code passes that on."""
    if ERROR not in table.column_names:
        return [None] * table.num_rows
    return [error or None for error in table.column(ERROR).to_pylist()]


def set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Replace column `name` in place, or append it when the table has none."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def with_errors(table: pa.Table, errors: Sequence[str | None]) -> pa.Table:
    """The table with its error column set to `errors` (one entry per row)."""
    return set_column(table, ERROR, pa.array(errors, type=pa.string()))


def column_values(table: pa.Table, name: str) -> list[Any]:
    """A column as Python values; all None when the table has no such column."""
    if name not in table.column_names:
        return [None] * table.num_rows
    return table.column(name).to_pylist()


def to_arrow(name: str, values: list[Any]) -> pa.Array:
    """Python values as an Arrow array, with an error naming the column when they do not fit."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        kinds = sorted({type(v).__name__ for v in values if v is not None})
        raise TypeError(
            f"column {name!r} holds values Arrow cannot store together "
            f"(Python types: {', '.join(kinds)}): {exc}. Return one type per column "
            "(e.g. str(...) every value) from preprocess/postprocess"
        ) from exc


def storable_sampling_params(value: Any) -> Any:
    """A row's sampling params with their structured-output constraint in a form every row can
    share in one Arrow column: a JSON schema (a dict, or a pydantic model class) as JSON text.
    Nothing is checked here: the engine checks each request and rejects a bad one as an error
    row."""
    if not isinstance(value, dict):
        return value
    for key in ("structured_outputs", "guided_decoding"):
        spec = value.get(key)
        if isinstance(spec, StructuredOutputsParams):
            spec = spec.to_record()
        elif isinstance(spec, dict):
            spec = {name: _as_json_text(name, item) for name, item in spec.items()}
        else:
            continue
        value = {**value, key: spec}
    return value


def _as_json_text(name: str, value: Any) -> Any:
    if name not in ("json", "structural_tag"):
        return value
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        value = value.model_json_schema()
    return json.dumps(value) if isinstance(value, dict | list | bool) else value


def drop_intermediate_columns(table: pa.Table) -> pa.Table:
    """The table without the columns that only carry a row's request to the engine."""
    present = [name for name in INTERMEDIATE_COLUMNS if name in table.column_names]
    return table.drop_columns(present) if present else table


def split_table(table: pa.Table, max_rows: int) -> Iterable[pa.Table]:
    """Zero-copy slices of at most `max_rows` rows."""
    for start in range(0, table.num_rows, max_rows):
        yield table.slice(start, max_rows)


def as_table(block: pa.Table | pa.RecordBatch) -> pa.Table:
    """A stream block as a Table (the stream may hand out record batches)."""
    return pa.Table.from_batches([block]) if isinstance(block, pa.RecordBatch) else block
