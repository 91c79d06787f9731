"""`llmbatch run-batch -i requests.jsonl -o results.jsonl --model M [engine args]`: vLLM's batch
runner over OpenAI batch files, resumable.

Request lines become processor rows (`batch_requests`) and processed rows output lines
(`batch_responses`). The output lines are committed in shards by the resumable writer into a
work folder, so a killed run goes on where it stopped and never writes a line twice; once every
line is done the shards are joined, in input order, into the output file (or uploaded to the
output URL with an HTTP PUT) and the work folder is removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmbatch.cli.batch_file import read_batch_file, upload
from llmbatch.cli.batch_requests import RequestReader
from llmbatch.cli.batch_responses import output_line
from llmbatch.cli.progress import progress_bar
from llmbatch.cli.watching import add_dashboard_arguments, dashboard_fields, keep_report
from llmbatch.data.checkpoint import OutputConflictError
from llmbatch.data.dataset import resumable_job
from llmbatch.data.identity import digest
from llmbatch.data.resume import committed_files, rows_to_process, write_resumable
from llmbatch.data.writers import TEXT_COLUMN, TEXT_FORMAT
from llmbatch.engine.args import EngineArgs
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig
from llmbatch.llm.columns import ERROR

logger = logging.getLogger("llmbatch")

# Engine arguments taken from the command line, with vLLM's option names (--max-model-len, ...).
ENGINE_OPTIONS = [f.name for f in dataclasses.fields(EngineArgs) if f.name != "model"]
_ENGINE_HELP = {
    "tokenizer": "Another tokenizer source than the model.",
    "dtype": "auto, float32, bfloat16 or float16.",
    "seed": "Seed of the sampling of requests that give no seed.",
    "max_model_len": "Longest prompt + answer; default: the model's, capped by the KV cache.",
    "max_num_batched_tokens": "Tokens per engine step.",
    "max_num_seqs": "Sequences running at once.",
    "enable_chunked_prefill": "Split long prompts over steps.",
    "enable_prefix_caching": "Reuse the KV cache of shared prompt prefixes.",
    "reserve_output_kv": "Admit requests only while the KV cache keeps room for running outputs.",
    "gpu_memory_utilization": "Share of GPU memory the engine may fill.",
    "block_size": "Tokens per KV cache block (a power of two).",
    "kv_cache_dtype": "auto, fp8 / fp8_e4m3 or fp8_e5m2.",
    "enforce_eager": "No CUDA graphs.",
    "cuda_graph_max_tokens": "Steps with prompt tokens replay CUDA graphs up to this many tokens.",
    "async_scheduling": "Launch step N+1 before step N's tokens are read back.",
    "tensor_parallel_size": "GPUs one model is sharded over.",
    "pipeline_parallel_size": "1 only.",
    "kv_cache_memory_bytes": "KV cache size (on CPU).",
    "num_gpu_blocks_override": "A fixed number of KV cache blocks.",
    "trust_remote_code": "Let transformers run the model's own code.",
    "revision": "The model's revision on the Hub.",
    "load_format": "auto, safetensors, pt, or dummy (random weights).",
    "max_logprobs": "Largest logprobs / top_logprobs a request may ask for.",
    "device": "auto, cpu, cuda or cuda:N.",
    "attention_backend": "auto, torch or triton.",
    "runner": "auto, generate or pooling (embeddings, classification).",
    "convert": "auto, none, embed or classify: what a pooling runner makes of the model.",
    "task": "The older single name: generate, embed, classify or score.",
    "enable_lora": "Requests may name LoRA adapters.",
    "max_loras": "LoRA adapters on the device at once.",
    "max_lora_rank": "Largest LoRA rank.",
    "max_cpu_loras": "LoRA adapters kept in host memory.",
    "quantization": "The checkpoint's quantization (read from it when left out), or fp8: "
    "quantize a full-precision checkpoint at load.",
}
_OUTPUT_FORMAT_VERSION = "openai-batch-output-1"


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `llmbatch run-batch`, named as vLLM's ``run-batch`` names them."""
    parser.add_argument(
        "-i",
        "--input-file",
        required=True,
        help="The path or URL of a single input file (JSON lines in OpenAI's batch format). "
        "Local paths, or http(s) URLs read with GET.",
    )
    parser.add_argument(
        "-o",
        "--output-file",
        required=True,
        help="The path or URL of a single output file. Local paths, or http(s) URLs written "
        "with PUT once every line is done.",
    )
    parser.add_argument(
        "--output-tmp-dir",
        default=None,
        help="The folder that keeps the finished lines until the output is complete (default: "
        "next to a local output file; the system's temporary folder for an output URL).",
    )
    parser.add_argument(
        "--model", required=True, help="The model: a folder, a .gguf file or a Hub id."
    )
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="The model name(s) requests may give in 'model' and answers report (default: --model).",
    )
    parser.add_argument(
        "--response-role",
        default="assistant",
        help="The role of the answers' messages (chat requests).",
    )
    parser.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="Engine replicas, one per GPU (or per tensor-parallel group).",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="Lines per table through the stages, and per committed shard of finished lines.",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
    add_dashboard_arguments(parser)
    engine = parser.add_argument_group("engine arguments (vLLM's names; see README: Engine)")
    hints = typing.get_type_hints(EngineArgs)
    for field in dataclasses.fields(EngineArgs):
        if field.name == "model":
            continue
        option = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        text = f"{_ENGINE_HELP.get(field.name, '')} (default: {field.default})".strip()
        if _accepts(kind, bool):
            engine.add_argument(
                option, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            value_type = int if _accepts(kind, int) else float if _accepts(kind, float) else str
            engine.add_argument(option, type=value_type, default=None, help=text)


def _accepts(kind: Any, wanted: type) -> bool:
    return kind is wanted or wanted in typing.get_args(kind)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Options may be written with underscores (``--max_model_len``), as vLLM accepts them."""
    normalized = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        normalized.append(arg)
    return normalized


def check_unknown(parser: argparse.ArgumentParser, extras: list[str]) -> None:
    """Unrecognized arguments are an error, with the nearest known option when there is one."""
    if not extras:
        return
    known = [s for action in parser._actions for s in action.option_strings]
    hints = []
    for extra in extras:
        if extra.startswith("-"):
            close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1)
            if close:
                hints.append(f"{extra.split('=', 1)[0]} -> did you mean {close[0]}?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    parser.error(message + (f" ({'; '.join(hints)})" if hints else ""))


def run_batch_command(args: argparse.Namespace) -> int:
    """Runs the batch; returns the exit status."""
    engine_kwargs = {
        name: getattr(args, name) for name in ENGINE_OPTIONS if getattr(args, name) is not None
    }
    if not {"runner", "convert", "task"} & set(engine_kwargs):
        engine_kwargs["task"] = "auto"  # the checkpoint says whether it generates or pools
    config = vLLMEngineProcessorConfig(
        model_source=args.model,
        engine_kwargs=engine_kwargs,
        batch_size=args.batch_size,
        concurrency=args.data_parallel_size,
        **dashboard_fields(args),
    )
    output = args.output_file
    if not _is_url(output):
        folder = Path(output).expanduser().absolute().parent
        if not folder.is_dir():
            raise FileNotFoundError(f"the output file's folder {str(folder)!r} does not exist")
    lines = read_batch_file(args.input_file)
    work = _work_folder(args)
    served = tuple(args.served_model_name or [args.model])
    model_name = served[0]

    def max_model_len() -> int:
        return processor.engine.config.max_model_len

    def pooling_task() -> str | None:
        pooler = processor.engine.config.pooler
        return None if pooler is None else pooler.task

    reader = RequestReader(served, max_model_len, pooling_task)
    processor = build_llm_processor(config, preprocess=reader)
    with processor:
        job = resumable_job(processor(lines))
        assert job is not None
        process, identity = job.process, job.identity

        def to_lines(blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
            decode = _decoder(processor)
            for table in process(blocks):
                rows = table.to_pylist()
                yield pa.table(
                    {
                        TEXT_COLUMN: [
                            json.dumps(
                                output_line(row, model_name, args.response_role, decode),
                                ensure_ascii=False,
                            )
                            for row in rows
                        ],
                        ERROR: pa.array([row.get(ERROR) for row in rows], pa.string()),
                    }
                )

        job = dataclasses.replace(
            job,
            process=to_lines,
            identity=lambda: digest(
                identity(), model_name, args.response_role, _OUTPUT_FORMAT_VERSION
            ),
        )
        if not args.no_progress:
            total = None if _is_url(args.input_file) else lines.count()

            def with_bar(blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
                return progress_bar(processor, rows_to_process(work, total))(to_lines(blocks))

            job = dataclasses.replace(job, process=with_bar)
        try:
            report = write_resumable(job, work, TEXT_FORMAT)
        except OutputConflictError:
            logger.warning(
                "%s holds the unfinished lines of an earlier run with other settings or input; "
                "starting over",
                work,
            )
            report = write_resumable(job, work, TEXT_FORMAT, overwrite=True)
    files = committed_files(work)
    assert files is not None
    _join(files, output)
    keep_report(work, output)
    shutil.rmtree(work)
    print(
        f"wrote {report.total_rows} lines to {output} ({report.error_rows} error lines; "
        f"{report.rows_already_committed} were done by an earlier run)",
        file=sys.stderr,
    )
    summary = processor.summary()
    if summary is not None:
        print(summary.format(), file=sys.stderr)
    return 0


def _decoder(processor: Any) -> Any:
    cache: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in cache:
            cache[token_id] = processor.engine.tokenizer.decode([token_id])
        return cache[token_id]

    return decode


def _work_folder(args: argparse.Namespace) -> str:
    """Where the finished lines wait: named by the output, so that rerunning the same command
    finds them."""
    output = args.output_file
    key = hashlib.sha256(output.encode()).hexdigest()[:16]
    if args.output_tmp_dir is not None:
        return os.path.join(args.output_tmp_dir, f"llmbatch-run-batch-{key}")
    if _is_url(output):
        return os.path.join(tempfile.gettempdir(), f"llmbatch-run-batch-{key}")
    path = Path(output).expanduser().absolute()
    return str(path.parent / f".{path.name}.llmbatch-parts")


def _join(files: list[str], output: str) -> None:
    """The shards, in order, as the output file (replaced whole) or uploaded to the URL."""
    if _is_url(output):
        upload(files, output)
        return
    target = Path(output).expanduser()
    temporary = target.with_name(f".{target.name}.tmp")
    with open(temporary, "wb") as out:
        for name in files:
            with open(name, "rb") as shard:
                shutil.copyfileobj(shard, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)
