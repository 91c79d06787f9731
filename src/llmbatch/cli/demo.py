"""The Ray Data LLM tutorial on SmolLM2-135M-Instruct and a generated customers table."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch.cli.progress import with_progress
from llmbatch.llm.config import vLLMEngineProcessorConfig
from llmbatch.llm.processor import build_llm_processor
from llmbatch.llm.summary import RunSummary

SHOWN_COLUMNS = ("Customer Id", "Subscription Date", "resp", "num_generated_tokens", "error")
# MM-DD-YYYY: the format the tutorial's prompt asks for, as a regex its answers must match
DATE_REGEX = r"(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])-[0-9]{4}"


@dataclass(slots=True)
class DemoSettings:
    """How big the demo is: short on a CPU, the tutorial's sizes on a GPU."""

    num_rows: int
    max_tokens: int
    batch_size: int
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    constrain: bool = True
    """Answers must match DATE_REGEX (structured outputs); False runs the tutorial as written."""

    @classmethod
    def for_device(cls, on_gpu: bool) -> DemoSettings:
        engine_kwargs: dict[str, Any] = dict(
            max_model_len=4096,
            enable_chunked_prefill=True,
            max_num_batched_tokens=1024,
            gpu_memory_utilization=0.85,
        )
        if on_gpu:
            return cls(10_000, 150, 256, engine_kwargs)
        # SmolLM2 needs ~46 KiB of KV cache per token: 1 GiB holds every row of the demo.
        return cls(64, 32, 16, {**engine_kwargs, "kv_cache_memory_bytes": 1 << 30})


@dataclass(slots=True)
class DemoResult:
    rows: list[dict[str, Any]]
    summary: RunSummary


def preprocess(row: dict[str, Any], max_tokens: int, constrain: bool) -> dict[str, Any]:
    sampling_params: dict[str, Any] = dict(temperature=0.3, max_tokens=max_tokens, detokenize=False)
    if constrain:
        sampling_params["structured_outputs"] = dict(regex=DATE_REGEX)
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": f"Convert this date:\n{row['Subscription Date']}\n\n as the format:MM-DD-YYYY",
            },
        ],
        sampling_params=sampling_params,
    )


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"resp": row["generated_text"], **row}


def run_demo(
    settings: DemoSettings, output: str | None, model_source: str | None = None
) -> DemoResult:
    """Runs the tutorial over generated customers; writes Parquet to `output` if given."""
    from llmbatch import data
    from llmbatch._fixtures.customers import write_customers_csv
    from llmbatch._fixtures.smollm2 import smollm2_gguf_path

    with tempfile.TemporaryDirectory(prefix="llmbatch-demo-") as folder:
        csv_path = str(Path(folder) / "customers.csv")
        write_customers_csv(csv_path, num_rows=settings.num_rows, seed=0)
        config = vLLMEngineProcessorConfig(
            model_source=model_source or smollm2_gguf_path(),
            engine_kwargs=settings.engine_kwargs,
            batch_size=settings.batch_size,
        )
        with build_llm_processor(
            config,
            preprocess=lambda row: preprocess(row, settings.max_tokens, settings.constrain),
            postprocess=postprocess,
        ) as processor:
            output_rows = processor(data.read_csv(csv_path))
            processed = with_progress(output_rows, processor, settings.num_rows).materialize()
            summary = processor.summary()
    if output is not None:
        processed.write_parquet(output)
    shown = [{k: row[k] for k in SHOWN_COLUMNS if k in row} for row in processed.take(3)]
    assert summary is not None
    return DemoResult(rows=shown, summary=summary)
