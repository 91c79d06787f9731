"""`build_llm_processor` and the Processor it returns: a chain of stages over a Dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.data.checkpoint import crash_point
from llmbatch.data.dataset import Dataset, resumable
from llmbatch.data.identity import code_identity, digest, value_identity
from llmbatch.integrations.ray import is_ray_dataset
from llmbatch.llm.config import LLMProcessorConfig
from llmbatch.llm.engine_holder import EngineHolder, recovery_policy
from llmbatch.llm.ray_resume import resumable_ray
from llmbatch.llm.ray_stages import process_ray_dataset
from llmbatch.llm.stages import Stage, build_stages, run_stages
from llmbatch.llm.summary import RunStats, RunSummary
from llmbatch.llm.user_stages import RowFn

if TYPE_CHECKING:
    from llmbatch.engine.args import EngineArgs
    from llmbatch.runtime.client import EngineClient

logger = logging.getLogger("llmbatch")


def model_identity(model_source: str) -> list[Any]:
    """The model's name, and for a local file or folder its files' sizes and times."""
    path = Path(model_source).expanduser()
    if not path.exists():
        return [model_source]
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [model_source, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def engine_args_of(config: LLMProcessorConfig) -> EngineArgs:
    """The config's engine arguments with its model, checked now so that a typo fails before
    any row is read."""
    from llmbatch.engine.args import EngineArgs

    return EngineArgs.from_kwargs(**config.engine_kwargs, model=config.model_source)


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
        self.config = config
        self.engine_args = engine_args_of(config)
        self.preprocess = preprocess
        self.postprocess = postprocess
        self._engine = EngineHolder(
            self.engine_args,
            config.concurrency,
            config.has_image,
            self._current_stats,
            recovery_policy(config),
        )
        self._stats: RunStats | None = None
        _warn_single_host_fields(config)

    def __call__(self, dataset: Dataset) -> Dataset:
        """The processed rows of `dataset`, lazily: nothing runs until the result is consumed.

        A Ray Dataset gives a Ray Dataset, whose engine replicas are Ray actors; written with
        ``llmbatch.data.write_parquet`` (or ``write_json``, ``write_csv``) it resumes."""
        if is_ray_dataset(dataset):
            return resumable_ray(
                lambda rows: process_ray_dataset(
                    self.config, self.engine_args, self.preprocess, self.postprocess, rows
                ),
                dataset,
                self._identity,
            )
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"a processor takes an llmbatch.data.Dataset, got {type(dataset).__name__}; "
                "wrap rows with llmbatch.data.from_items, from_pandas or from_arrow"
            )
        stages = self._stages()
        output = dataset
        for stage in stages:
            output = output.transform(stage, stage.name)
        return resumable(
            output,
            dataset,
            lambda blocks: run_stages(stages, blocks),
            self._identity,
            self._prepare,
        )

    def summary(self) -> RunSummary | None:
        """The latest run's summary (live while it runs); None before any run."""
        return self._stats.summary() if self._stats is not None else None

    @property
    def engine(self) -> EngineClient:
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

    def _stages(self) -> list[Stage]:
        return build_stages(
            self.config,
            self.preprocess,
            self.postprocess,
            self._engine,
            self._start_run,
            self._current_stats,
        )

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
