"""A processor's chain of stages, preprocess to postprocess, and running it over a stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, Protocol

import pyarrow as pa

from llmbatch.llm.config import EngineProcessorConfig, StagePlan
from llmbatch.llm.engine_holder import EngineHolder
from llmbatch.llm.engine_stage import EngineStage
from llmbatch.llm.error_policy import ErrorPolicy
from llmbatch.llm.http_config import HttpRequestProcessorConfig
from llmbatch.llm.http_stage import HttpRequestStage
from llmbatch.llm.sglang import sglang_sampling_params_of
from llmbatch.llm.summary import RunStats
from llmbatch.llm.tokenizer_stages import ChatTemplateStage, DetokenizeStage, TokenizeStage
from llmbatch.llm.user_stages import OutputStage, PreprocessStage, RowFn

# Rows with images in the engine at once by default: each holds its pixels on the host until its
# prompt is encoded (about 7 MB a COCO-sized picture for Qwen2.5-VL), so the default of twice
# max_num_seqs would hold gigabytes.
IMAGE_PENDING_REQUESTS = 256


class Stage(Protocol):
    """Reads a stream of Arrow tables and yields tables, reading and writing named columns."""

    name: str

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterable[pa.Table]: ...


def build_engine_stages(
    config: EngineProcessorConfig,
    plan: StagePlan,
    preprocess: RowFn | None,
    postprocess: RowFn | None,
    engine: EngineHolder,
    start_run: Callable[[], RunStats],
    current_stats: Callable[[], RunStats],
) -> list[Stage]:
    """preprocess -> chat template -> tokenize -> engine -> detokenize -> postprocess, as the
    plan turns them on; the stages share `engine`."""
    has_image = plan.has_image
    parse_params = sglang_sampling_params_of if plan.sampling_params == "sglang" else None
    chat_tokenizer: Any = engine.processor if has_image else engine.tokenizer
    if plan.chat_template_source is not None:
        chat_tokenizer = partial(engine.tokenizer_of, plan.chat_template_source, has_image)
    stages: list[Stage] = [
        PreprocessStage(preprocess, config.batch_size, has_image, parse_params),
        ChatTemplateStage(
            chat_tokenizer,
            plan.chat_template,
            plan.chat_template_text,
            has_image,
            plan.chat_template_kwargs,
        ),
    ]
    if plan.tokenize:
        stages.append(
            TokenizeStage(
                _tokenizer(engine, plan.tokenize_source),
                plan.chat_template,
                engine.processor if has_image else None,
            )
        )
    stages.append(
        EngineStage(
            acquire=engine.acquire,
            release=engine.release,
            current_stats=current_stats,
            batch_size=config.batch_size,
            max_pending_requests=config.max_pending_requests  # type: ignore[attr-defined]
            or (IMAGE_PENDING_REQUESTS if has_image else None),
            max_concurrent_batches=config.max_concurrent_batches,  # type: ignore[attr-defined]
            parse_params=parse_params,
            ray_columns=plan.ray_columns,
            model_source=config.model_source,  # type: ignore[attr-defined]
            adapters_root=getattr(config, "dynamic_lora_loading_path", None),
        )
    )
    if plan.detokenize:
        stages.append(DetokenizeStage(_tokenizer(engine, plan.detokenize_source)))
    policy = ErrorPolicy(plan.stop_on_error, plan.error_column)
    if policy.error_column:
        stages.append(policy.expose)
    stages.append(OutputStage(postprocess, start_run, config.max_error_rate))  # type: ignore[attr-defined]
    return _with_error_policy(stages, policy)


def build_http_stages(
    config: HttpRequestProcessorConfig,
    preprocess: RowFn | None,
    postprocess: RowFn | None,
    start_run: Callable[[], RunStats],
    current_stats: Callable[[], RunStats],
) -> list[Stage]:
    """preprocess -> HTTP request -> postprocess."""
    return [
        PreprocessStage(preprocess, config.batch_size),
        HttpRequestStage(config, current_stats),
        OutputStage(postprocess, start_run, config.max_error_rate),
    ]


def _tokenizer(engine: EngineHolder, source: str | None) -> Callable[[], Any]:
    return engine.tokenizer if source is None else partial(engine.tokenizer_of, source)


def _with_error_policy(stages: list[Stage], policy: ErrorPolicy) -> list[Stage]:
    return [policy.mark, *stages, policy.apply] if policy.active else stages


def run_stages(stages: list[Stage], blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The stages applied in order to a stream of blocks."""
    stream: Iterable[pa.Table] = blocks
    for stage in stages:
        stream = stage(iter(stream))
    yield from stream
