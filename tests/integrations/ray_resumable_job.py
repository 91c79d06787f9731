"""A processor over a Ray Dataset written with llmbatch's writers, as a job of its own process:
``python ray_resumable_job.py MODEL CSV OUT``; prints the write's report as JSON."""

from __future__ import annotations

import dataclasses
import json
import sys

import ray

import llmbatch.data
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

ENGINE = {"kv_cache_memory_bytes": 16 << 20, "max_model_len": 128, "device": "cpu"}


def preprocess(row):
    return {
        "messages": [{"role": "user", "content": f"Say {row['First Name']}."}],
        "sampling_params": {"temperature": 0, "max_tokens": 3},
    }


def postprocess(row):
    return {"Index": row["Index"], "answer": row["generated_text"]}


def main(model: str, csv: str, out: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = LLMProcessorConfig(model_source=model, engine_kwargs=ENGINE, batch_size=2)
    processor = build_llm_processor(config, preprocess=preprocess, postprocess=postprocess)
    rows = ray.data.read_csv(csv, override_num_blocks=3)
    report = llmbatch.data.write_parquet(processor(rows), out, max_rows_per_file=2)
    print(json.dumps(dataclasses.asdict(report)))
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
