"""`build_llm_processor` and the Processor it returns: a chain of stages over a Dataset."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.data.checkpoint import ResumableJob, crash_point, resumable
from llmbatch.data.identity import code_identity, digest, value_identity
from llmbatch.integrations.ray import is_ray_dataset, process_ray_dataset
from llmbatch.llm.config import LLMProcessorConfig
from llmbatch.llm.engine_stage import EngineStage
from llmbatch.llm.replicas import start_engine
from llmbatch.llm.summary import RunStats, RunSummary
from llmbatch.llm.tokenizer_stages import ChatTemplateStage, DetokenizeStage, TokenizeStage
from llmbatch.llm.user_stages import OutputStage, PreprocessStage, RowFn

if TYPE_CHECKING:
    from llmbatch.data import Dataset
    from llmbatch.engine.llm_engine import LLMEngine

logger = logging.getLogger("llmbatch")

# Rows with images in the engine at once by default: each holds its pixels on the host until its
# prompt is encoded (about 7 MB a COCO-sized picture for Qwen2.5-VL), so the default of twice
# max_num_seqs would hold gigabytes.
IMAGE_PENDING_REQUESTS = 256


class ModelLoadError(ValueError):
    """The model could not be loaded; raised before any row is read by a resumable write."""


def model_identity(model_source: str) -> list[Any]:
    """The model's name, and for a local file or folder its files' sizes and times."""
    path = Path(model_source).expanduser()
    if not path.exists():
        return [model_source]
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [model_source, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def engine_args(config: LLMProcessorConfig) -> dict[str, Any]:
    """The engine kwargs with the model, checked now so a typo fails before any row is read."""
    from llmbatch.engine.config import EngineConfig

    kwargs = {**config.engine_kwargs, "model": config.model_source}
    EngineConfig.from_kwargs(**kwargs)
    return kwargs


class _EngineHolder:
    """Loads the engine on first use and lends it to one run at a time; closes it when a run
    ends unless `keep_loaded` is set."""

    def __init__(self, config: LLMProcessorConfig, current_stats: Callable[[], RunStats]) -> None:
        self._config = config
        self._current_stats = current_stats
        self._engine: LLMEngine | None = None
        self._processor: Any = None
        self._lock = threading.Lock()
        self._processor_lock = threading.Lock()
        self._supersede_current: Callable[[], None] | None = None
        self.keep_loaded = False

    def load(self) -> LLMEngine:
        """The engine; loading it counts as the current run's start-up time. With has_image the
        model's processor is loaded first, so a model without images fails before its engine
        loads."""
        if self._config.has_image:
            self.processor()
        with self._lock:
            if self._engine is None:
                started = time.perf_counter()
                self._engine = start_engine(engine_args(self._config), self._config.concurrency)
                self._current_stats().engine_startup_s += time.perf_counter() - started
            return self._engine

    def tokenizer(self) -> Any:
        return self.load().tokenizer

    def processor(self) -> Any:
        """The model's processor (image processor, tokenizer and chat template)."""
        with self._processor_lock:
            if self._processor is None:
                self._processor = image_processor_of(self._config)
            return self._processor

    def acquire(self, supersede: Callable[[], None]) -> LLMEngine:
        """The engine for a new run; a run still holding it is told to stop (`supersede`)."""
        engine = self.load()
        if self._supersede_current is not None:
            self._supersede_current()
        self._supersede_current = supersede
        return engine

    def release(self, supersede: Callable[[], None]) -> None:
        """A run is over: it no longer needs stopping when the next one starts, and the engine
        is closed unless it is kept loaded."""
        if self._supersede_current == supersede:
            self._supersede_current = None
            if not self.keep_loaded:
                self.close()

    def close(self) -> None:
        with self._lock:
            if self._supersede_current is not None:
                self._supersede_current()
                self._supersede_current = None
            if self._engine is not None:
                self._engine.close()
                self._engine = None


class Processor:
    """Runs an LLM over a Dataset: ``processor(ds)`` returns a lazy Dataset of results.

    Stages, each reading and writing named columns: preprocess -> chat template -> tokenize ->
    engine -> detokenize -> postprocess. A run loads the engine and closes it when the run ends,
    so its (GPU) memory is free for whatever runs next, as Ray Data LLM's actors end with their
    job. Open as a context manager (``with build_llm_processor(...) as processor:``), the
    processor keeps its engine loaded across runs until the block exits. Consume one output at
    a time: starting a new run stops a run still in progress.
    """

    def __init__(
        self,
        config: LLMProcessorConfig,
        preprocess: RowFn | None = None,
        postprocess: RowFn | None = None,
    ) -> None:
        if not isinstance(config, LLMProcessorConfig):
            raise TypeError(
                "build_llm_processor needs a vLLMEngineProcessorConfig or LLMProcessorConfig, "
                f"got {type(config).__name__}"
            )
        for name, fn in (("preprocess", preprocess), ("postprocess", postprocess)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function of one row (dict), got {fn!r}")
        engine_args(config)
        self.config = config
        self.preprocess = preprocess
        self.postprocess = postprocess
        self._engine = _EngineHolder(config, self._current_stats)
        self._stats: RunStats | None = None
        _warn_single_host_fields(config)

    def __call__(self, dataset: Dataset) -> Dataset:
        """The processed rows of `dataset`, lazily: nothing runs until the result is consumed.

        A Ray Dataset gives a Ray Dataset, whose engine replicas are Ray actors."""
        if is_ray_dataset(dataset):
            return process_ray_dataset(self, dataset)
        _check_dataset(dataset)
        config = self.config
        holder = self._engine
        has_image = config.has_image
        stages: list[Any] = [
            PreprocessStage(self.preprocess, config.batch_size, has_image),
            ChatTemplateStage(
                holder.processor if has_image else holder.tokenizer,
                config.apply_chat_template,
                config.chat_template,
                has_image,
            ),
        ]
        if config.tokenize:
            stages.append(
                TokenizeStage(
                    holder.tokenizer,
                    config.apply_chat_template,
                    holder.processor if has_image else None,
                )
            )
        stages.append(
            EngineStage(
                acquire=holder.acquire,
                release=holder.release,
                current_stats=self._current_stats,
                batch_size=config.batch_size,
                max_pending_requests=config.max_pending_requests
                or (IMAGE_PENDING_REQUESTS if has_image else None),
                max_concurrent_batches=config.max_concurrent_batches,
            )
        )
        if config.detokenize:
            stages.append(DetokenizeStage(holder.tokenizer))
        stages.append(OutputStage(self.postprocess, self._start_run, config.max_error_rate))
        source = dataset
        for stage in stages:
            dataset = dataset.transform(stage, stage.name)
        return resumable(dataset, ResumableJob(source, self, self._identity, self._prepare))

    def summary(self) -> RunSummary | None:
        """The latest run's summary (live while it runs); None before any run."""
        return self._stats.summary() if self._stats is not None else None

    @property
    def engine(self) -> LLMEngine:
        """The engine, loaded now if it is not loaded (the end of a run closes it unless the
        processor is open as a context manager)."""
        return self._engine.load()

    def close(self) -> None:
        """Releases the engine and its memory; a later run loads it again."""
        self._engine.close()

    def __enter__(self) -> Processor:
        self._engine.keep_loaded = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._engine.keep_loaded = False
        self.close()

    def _identity(self) -> str:
        """What decides this processor's output, for resumable writes."""
        return digest(
            value_identity(self.config),
            model_identity(self.config.model_source),
            code_identity(self.preprocess),
            code_identity(self.postprocess),
        )

    def _prepare(self) -> None:
        self._engine.load()
        crash_point("engine_loaded")

    def _start_run(self) -> RunStats:
        self._stats = RunStats()
        return self._stats

    def _current_stats(self) -> RunStats:
        return self._stats if self._stats is not None else self._start_run()


def build_llm_processor(
    config: LLMProcessorConfig,
    preprocess: RowFn | None = None,
    postprocess: RowFn | None = None,
) -> Processor:
    """A Processor running `config`'s model over a Dataset's rows.

    `preprocess(row) -> dict` adds the request columns (``messages`` or ``prompt``, and
    ``sampling_params`` with vLLM's names); `postprocess(row) -> dict` shapes each result row.
    A row whose functions raise, whose request is invalid or whose prompt is too long becomes an
    error row (its ``error`` column says why) and the run goes on.
    """
    return Processor(config, preprocess=preprocess, postprocess=postprocess)


def image_processor_of(config: LLMProcessorConfig) -> Any:
    """The processor of `config`'s model (``AutoProcessor``); a ValueError when it has no image
    processor."""
    from llmbatch.models.processor import load_processor
    from llmbatch.models.source import resolve_model_folder

    kwargs = config.engine_kwargs
    folder = resolve_model_folder(config.model_source, kwargs.get("revision"), with_weights=False)
    processor = load_processor(folder, trust_remote_code=bool(kwargs.get("trust_remote_code")))
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"has_image=True, but the model {config.model_source!r} has no image processor "
            f"(its AutoProcessor is a {type(processor).__name__}): use a vision-language model "
            "such as Qwen/Qwen2.5-VL-3B-Instruct, or set has_image=False for text-only rows"
        )
    return processor


def _check_dataset(dataset: object) -> None:
    from llmbatch.data import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"a processor takes an llmbatch.data.Dataset, got {type(dataset).__name__}; "
            "wrap rows with llmbatch.data.from_items, from_pandas or from_arrow"
        )


def _warn_single_host_fields(config: LLMProcessorConfig) -> None:
    notes = []
    if config.accelerator_type is not None:
        notes.append(
            f"accelerator_type={config.accelerator_type!r} has no effect: the engine uses the "
            "local device (engine_kwargs['device'], default 'auto')"
        )
    if config.runtime_env is not None:
        notes.append("runtime_env has no effect in one process: set its env vars before starting")
    if notes:
        logger.warning("; ".join(notes))
