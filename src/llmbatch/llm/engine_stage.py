"""The engine stage: keeps the engine's queue full from the row stream and hands rows on in
input order as soon as every earlier row is done."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.engine.outputs import RequestOutput, RequestRejected
from llmbatch.llm.columns import (
    ERROR,
    GENERATION_TYPES,
    LOGPROBS,
    LOGPROBS_TYPE,
    LORA,
    MODEL,
    MULTI_MODAL,
    PER_SAMPLE_COLUMNS,
    POOLING_PARAMS,
    PROMPT,
    PROMPT_TOKEN_IDS,
    RAY_GENERATION_TYPES,
    SAMPLING_PARAMS,
    TOKENIZATION_KWARGS,
    as_table,
    column_values,
    drop_intermediate_columns,
    errors_of,
    format_error,
    set_column,
)
from llmbatch.llm.lora_rows import RowAdapters
from llmbatch.llm.pooling_rows import pooling_columns, pooling_params_of
from llmbatch.llm.prefetch import Prefetcher
from llmbatch.llm.summary import RunStats

if TYPE_CHECKING:
    from llmbatch.engine.lora_request import LoRARequest
    from llmbatch.engine.multimodal import MultiModalInputs
    from llmbatch.engine.pooling_outputs import PoolingRequestOutput
    from llmbatch.engine.pooling_params import PoolingParams
    from llmbatch.engine.sampling_params import SamplingParams
    from llmbatch.runtime.client import EngineClient

_run_ids = itertools.count()


@dataclass(slots=True)
class _Slot:
    """One row in the stage's order window."""

    request_id: str
    number: int
    prompt: str | list[int] | None = None
    params: SamplingParams | PoolingParams | None = None
    multi_modal: MultiModalInputs | None = None
    lora: LoRARequest | None = None
    error: str | None = None
    output: RequestOutput | PoolingRequestOutput | None = None
    submitted_at: float = 0.0
    seconds: float | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.output is not None


def sampling_params_of(value: Any) -> SamplingParams:
    """A row's ``sampling_params`` value (a dict, or None for the defaults) as SamplingParams."""
    from llmbatch.engine.sampling_params import SamplingParams

    if value is None:
        return SamplingParams()
    if not isinstance(value, dict):
        raise TypeError(f"'sampling_params' must be a dict, got {type(value).__name__}")
    # Arrow structs give keys that other rows set (and this one did not) as None.
    return SamplingParams.from_dict({k: v for k, v in value.items() if v is not None})


ParamsParser = Callable[[Any], "SamplingParams"]


class Superseded(RuntimeError):
    """Raised by a run's output when a later run of the same processor took over the engine."""


class EngineStage:
    """Feeds the engine continuously and emits ``batch_size`` tables in input order.

    At most ``max_pending_requests`` requests are inside the engine at once; once
    ``max_concurrent_batches * batch_size`` finished rows wait for an earlier row, no new rows are
    read until the head of the order is done. Memory therefore stays bounded whatever the row
    lengths. `parse_params` turns a row's ``sampling_params`` into the engine's; with
    `ray_columns`, rows also get ``prompt_token_ids``, ``request_id`` and ``params`` as Ray
    Data LLM 2.60 writes them. On a pooling model, rows give ``pooling_params`` and get
    ``embeddings`` or ``probs``. A row's ``lora`` (or ``model``, when it is not `model_source`)
    names its LoRA adapter (`llm/lora_rows.py`; names under `adapters_root`).
    """

    name = "engine"

    def __init__(
        self,
        acquire: Callable[[Callable[[], None]], EngineClient],
        release: Callable[[Callable[[], None]], None],
        current_stats: Callable[[], RunStats],
        batch_size: int,
        max_pending_requests: int | None,
        max_concurrent_batches: int,
        parse_params: ParamsParser | None = None,
        ray_columns: bool = False,
        model_source: str | None = None,
        adapters_root: str | None = None,
    ) -> None:
        self.acquire = acquire
        self.release = release
        self.current_stats = current_stats
        self.batch_size = batch_size
        self.max_pending_requests = max_pending_requests
        self.max_waiting = max_concurrent_batches * batch_size
        self.parse_params = parse_params or sampling_params_of
        self.ray_columns = ray_columns
        self.model_source = model_source
        self.adapters_root = adapters_root

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        run = _Run(self, blocks)
        try:
            yield from run.execute()
        finally:
            run.shut_down()


class _Run:
    """One consumption of the stage's output: its requests, order window and prefetch thread."""

    def __init__(self, stage: EngineStage, blocks: Iterator[pa.Table]) -> None:
        self.stage = stage
        self.stats = stage.current_stats()
        self.superseded = False
        self.engine = stage.acquire(self.supersede)
        self.max_pending = (
            stage.max_pending_requests
            or 2 * self.engine.config.max_num_seqs * self.engine.num_replicas
        )
        pooler = getattr(self.engine.config, "pooler", None)
        self.pooling_task: str | None = None if pooler is None else pooler.task
        self.adapters = RowAdapters(stage.model_source or "", stage.adapters_root)
        self.prefix = f"r{next(_run_ids)}-"
        self.counter = itertools.count()
        self.tables: deque[pa.Table] = deque()
        self.order: deque[_Slot] = deque()
        self.unsubmitted: deque[_Slot] = deque()
        self.in_flight: dict[str, _Slot] = {}
        depth = max(2, -(-self.max_pending // stage.batch_size))
        self.feed: Prefetcher[tuple[pa.Table, list[_Slot]]] = Prefetcher(
            self.prepare(blocks), depth=depth
        )

    def supersede(self) -> None:
        self.superseded = True
        self.abort_in_flight()

    def abort_in_flight(self) -> None:
        for request_id in self.in_flight:
            self.engine.abort_request(request_id)
        self.in_flight.clear()

    def shut_down(self) -> None:
        self.feed.close()
        if not self.superseded:
            self.abort_in_flight()
            self.stage.release(self.supersede)

    def prepare(self, blocks: Iterator[pa.Table]) -> Iterator[tuple[pa.Table, list[_Slot]]]:
        """Runs in the prefetch thread: each table's rows as requests, with their params parsed."""
        from llmbatch.engine.multimodal import MultiModalInputs

        for block in blocks:
            table = as_table(block)
            errors = errors_of(table)
            token_ids = column_values(table, PROMPT_TOKEN_IDS)
            prompts = column_values(table, PROMPT)
            params = column_values(table, SAMPLING_PARAMS)
            multi_modal = column_values(table, MULTI_MODAL)
            tokenization = column_values(table, TOKENIZATION_KWARGS)
            pooling = column_values(table, POOLING_PARAMS)
            models, loras = column_values(table, MODEL), column_values(table, LORA)
            slots = []
            for i in range(table.num_rows):
                number = next(self.counter)
                slot = _Slot(request_id=f"{self.prefix}{number}", number=number, error=errors[i])
                if slot.error is None and tokenization[i] is not None and token_ids[i] is None:
                    slot.error = format_error(
                        TOKENIZATION_KWARGS,
                        ValueError(
                            "the row gives tokenization_kwargs but the tokenize stage is off"
                        ),
                    )
                if slot.error is None:
                    slot.prompt = token_ids[i] if token_ids[i] is not None else prompts[i]
                    slot.multi_modal = MultiModalInputs.from_record(multi_modal[i])
                    try:
                        slot.params = (
                            self.stage.parse_params(params[i])
                            if self.pooling_task is None
                            else pooling_params_of(pooling[i], params[i])
                        )
                    except (TypeError, ValueError) as exc:
                        name = SAMPLING_PARAMS if self.pooling_task is None else POOLING_PARAMS
                        slot.error = format_error(name, exc)
                if slot.error is None:
                    try:
                        slot.lora = self.adapters.of(models[i], loras[i])
                    except (TypeError, ValueError) as exc:
                        slot.error = format_error(LORA, exc)
                slots.append(slot)
            yield drop_intermediate_columns(table), slots

    def execute(self) -> Iterator[pa.Table]:
        batch_size = self.stage.batch_size
        while True:
            if self.superseded:
                raise Superseded(
                    "another run of the same processor took over its engine; consume one "
                    "processor output at a time (materialize() it to reuse the rows)"
                )
            self.top_up()
            if self.in_flight:
                self.collect(self.engine.step())
            ready = self.num_ready()
            while ready >= batch_size:
                yield self.emit(batch_size)
                ready -= batch_size
            if self.feed.exhausted and not self.in_flight and not self.unsubmitted:
                if self.order:
                    yield self.emit(len(self.order))
                return

    def num_waiting(self) -> int:
        return len(self.order) - len(self.in_flight) - len(self.unsubmitted)

    def top_up(self) -> None:
        while len(self.in_flight) < self.max_pending:
            if self.unsubmitted:
                self.submit(self.unsubmitted.popleft())
                continue
            if self.num_waiting() >= self.stage.max_waiting:
                return
            chunk = self.feed.get(block=not self.in_flight)
            if chunk is None:
                return
            table, slots = chunk
            self.tables.append(table)
            self.order.extend(slots)
            self.unsubmitted.extend(slot for slot in slots if slot.error is None)

    def submit(self, slot: _Slot) -> None:
        try:
            self.engine.add_request(
                slot.request_id,
                slot.prompt,
                slot.params,
                multi_modal=slot.multi_modal,
                lora_request=slot.lora,
            )
        except ValueError as exc:
            slot.error = format_error(self.stage.name, exc)
            return
        slot.submitted_at = time.perf_counter()
        self.in_flight[slot.request_id] = slot

    def collect(self, outputs: list[RequestOutput | RequestRejected]) -> None:
        now = time.perf_counter()
        for output in outputs:
            slot = self.in_flight.pop(output.request_id, None)
            if slot is None:
                continue
            if isinstance(output, RequestRejected):
                slot.error = format_error(self.stage.name, output)
                continue
            slot.output = output
            slot.seconds = now - slot.submitted_at
            self.stats.input_tokens += output.num_prompt_tokens
            if isinstance(output, RequestOutput):  # a pooling model's output has no tokens
                self.stats.output_tokens += len(output.token_ids)
            self.stats.cached_input_tokens += output.num_cached_tokens
            self.stats.preemptions += output.num_preemptions

    def num_ready(self) -> int:
        ready = 0
        for slot in self.order:
            if not slot.done:
                break
            ready += 1
        return ready

    def emit(self, num_rows: int) -> pa.Table:
        slots = [self.order.popleft() for _ in range(num_rows)]
        table = self.take_rows(num_rows)
        if self.pooling_task is not None:
            outputs = [s.output if s.error is None else None for s in slots]
            columns = pooling_columns(self.pooling_task, outputs, [s.seconds for s in slots])
            for name, values in columns.items():
                table = set_column(table, name, values)
            return set_column(table, ERROR, pa.array([s.error for s in slots], type=pa.string()))
        per_sample = any(s.params is not None and s.params.n > 1 for s in slots)
        for name, values in _generation_columns(slots, per_sample).items():
            kind = GENERATION_TYPES[name]
            if per_sample and name in PER_SAMPLE_COLUMNS:
                kind = pa.list_(kind)
            table = set_column(table, name, pa.array(values, type=kind))
        if self.stage.ray_columns:
            for name, values in _ray_columns(slots).items():
                table = set_column(table, name, pa.array(values, type=RAY_GENERATION_TYPES[name]))
        if any(s.params is not None and s.params.logprobs is not None for s in slots):
            kind = pa.list_(LOGPROBS_TYPE) if per_sample else LOGPROBS_TYPE
            table = set_column(table, LOGPROBS, pa.array(_logprobs(slots, per_sample), type=kind))
        return set_column(table, ERROR, pa.array([s.error for s in slots], type=pa.string()))

    def take_rows(self, num_rows: int) -> pa.Table:
        pieces = []
        while num_rows > 0:
            head = self.tables[0]
            if head.num_rows <= num_rows:
                pieces.append(self.tables.popleft())
                num_rows -= head.num_rows
            else:
                pieces.append(head.slice(0, num_rows))
                self.tables[0] = head.slice(num_rows)
                num_rows = 0
        if len(pieces) == 1:
            return pieces[0]
        return pa.concat_tables(pieces, promote_options="permissive")


def _logprobs(slots: list[_Slot], per_sample: bool) -> list[Any]:
    """Per generated token, the top tokens' and the sampled token's log-probabilities (a list
    of them per sample when rows have several)."""

    def steps(logprobs: Any) -> Any:
        if logprobs is None:
            return None
        return [
            [
                {
                    "token_id": token,
                    "logprob": entry.logprob,
                    "rank": entry.rank,
                    "decoded_token": entry.decoded_token,
                }
                for token, entry in step.items()
            ]
            for step in logprobs
        ]

    values = []
    for slot in slots:
        if slot.output is None:
            values.append(None)
        elif per_sample:
            values.append([steps(c.logprobs) for c in slot.output.outputs])
        else:
            values.append(steps(slot.output.logprobs))
    return values


def _ray_columns(slots: list[_Slot]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in RAY_GENERATION_TYPES}
    for slot in slots:
        done = slot.error is None and slot.output is not None
        columns["prompt_token_ids"].append(list(slot.output.prompt_token_ids) if done else None)
        columns["request_id"].append(slot.number if done else None)
        columns["params"].append(repr(slot.params) if done else None)
    return columns


def _generation_columns(slots: list[_Slot], per_sample: bool) -> dict[str, list[Any]]:
    """The engine's columns; with ``per_sample`` the answer's columns hold one entry per sample
    (a list, for rows that asked for n > 1 answers)."""
    columns: dict[str, list[Any]] = {name: [] for name in GENERATION_TYPES}
    for slot in slots:
        out = slot.output
        if slot.error is not None or out is None:
            for values in columns.values():
                values.append(None)
            continue
        samples = out.outputs if per_sample else out.outputs[:1]
        texts = [c.text if slot.params.detokenize else None for c in samples]
        answers = {
            "generated_text": texts,
            "generated_tokens": [list(c.token_ids) for c in samples],
            "num_generated_tokens": [len(c.token_ids) for c in samples],
            "finish_reason": [c.finish_reason for c in samples],
        }
        for name, value in answers.items():
            columns[name].append(value if per_sample else value[0])
        columns["num_input_tokens"].append(out.num_prompt_tokens)
        columns["time_taken_llm"].append(slot.seconds)
    return columns
