"""A processor's chain of stages, preprocess to postprocess, and running it over a stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import pyarrow as pa

from llmbatch.llm.config import LLMProcessorConfig
from llmbatch.llm.engine_holder import EngineHolder
from llmbatch.llm.engine_stage import EngineStage
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


def build_stages(
    config: LLMProcessorConfig,
    preprocess: RowFn | None,
    postprocess: RowFn | None,
    engine: EngineHolder,
    start_run: Callable[[], RunStats],
    current_stats: Callable[[], RunStats],
) -> list[Stage]:
    """preprocess -> chat template -> tokenize -> engine -> detokenize -> postprocess, as the
    config turns them on; the stages share `engine`."""
    has_image = config.has_image
    text_processor: Any = engine.processor if has_image else engine.tokenizer
    stages: list[Stage] = [
        PreprocessStage(preprocess, config.batch_size, has_image),
        ChatTemplateStage(
            text_processor, config.apply_chat_template, config.chat_template, has_image
        ),
    ]
    if config.tokenize:
        stages.append(
            TokenizeStage(
                engine.tokenizer,
                config.apply_chat_template,
                engine.processor if has_image else None,
            )
        )
    stages.append(
        EngineStage(
            acquire=engine.acquire,
            release=engine.release,
            current_stats=current_stats,
            batch_size=config.batch_size,
            max_pending_requests=config.max_pending_requests
            or (IMAGE_PENDING_REQUESTS if has_image else None),
            max_concurrent_batches=config.max_concurrent_batches,
        )
    )
    if config.detokenize:
        stages.append(DetokenizeStage(engine.tokenizer))
    stages.append(OutputStage(postprocess, start_run, config.max_error_rate))
    return stages


def run_stages(stages: list[Stage], blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The stages applied in order to a stream of blocks."""
    stream: Iterable[pa.Table] = blocks
    for stage in stages:
        stream = stage(iter(stream))
    yield from stream
