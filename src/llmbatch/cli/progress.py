"""A progress bar over a processor's output: rows/s, output tokens/s, errors and time left."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from tqdm import tqdm

if TYPE_CHECKING:
    from llmbatch.data import Dataset
    from llmbatch.llm.processor import Processor

Stream = Iterator[pa.Table]


def progress_bar(processor: Processor, total: int | None) -> Callable[[Stream], Stream]:
    """A stream transform that shows a bar on stderr, advancing as `processor`'s output rows
    pass; `total` (rows expected, when known) gives the time left."""

    def track(tables: Stream) -> Stream:
        bar: Any = tqdm(total=total, unit="row", desc="llmbatch", file=sys.stderr, smoothing=0.1)
        with bar:
            for table in tables:
                bar.update(table.num_rows)
                summary = processor.summary()
                if summary is not None:
                    bar.set_postfix_str(
                        f"{summary.output_tokens_per_s:.0f} tok/s, {summary.error_rows} errors",
                        refresh=False,
                    )
                yield table

    return track


def with_progress(dataset: Dataset, processor: Processor, total: int | None) -> Dataset:
    """`dataset` (an output of `processor`) with a progress bar (see `progress_bar`)."""
    return dataset.transform(progress_bar(processor, total), "progress")


def quiet_library_progress_bars() -> None:
    """The command's bar is the only one: transformers' and the Hub's own bars (weight loading,
    GGUF conversion, downloads) are turned off."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
