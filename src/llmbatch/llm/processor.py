"""`build_processor` (Ray Data LLM 2.56+), `build_llm_processor` (its older name) and the
Processor they return: a chain of stages over a Dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.data.checkpoint import crash_point
from llmbatch.data.dataset import Dataset, resumable
from llmbatch.data.identity import code_identity, digest, value_identity
from llmbatch.integrations.ray import is_ray_dataset
from llmbatch.llm.config import EngineProcessorConfig, ProcessorConfig
from llmbatch.llm.engine_holder import EngineHolder, recovery_policy
from llmbatch.llm.http_config import HttpRequestProcessorConfig
from llmbatch.llm.monitoring import SHOWN_STAGES, TOKEN_STAGE, monitor_for
from llmbatch.llm.ray_resume import resumable_ray
from llmbatch.llm.ray_stages import process_ray_dataset
from llmbatch.llm.stages import Stage, build_engine_stages, build_http_stages, run_stages
from llmbatch.llm.summary import RunStats, RunSummary
from llmbatch.llm.user_stages import RowFn

if TYPE_CHECKING:
    from llmbatch.engine.args import EngineArgs
    from llmbatch.runtime.client import EngineClient

logger = logging.getLogger("llmbatch")

_RESERVED_BUILDER_KWARGS = (
    "preprocess",
    "postprocess",
    "preprocess_map_kwargs",
    "postprocess_map_kwargs",
)
_ENGINE_BUILDER_KWARGS = ("chat_template_kwargs",)


def model_identity(model_source: str) -> list[Any]:
    """The model's name, and for a local file or folder its files' sizes and times."""
    path = Path(model_source).expanduser()
    if not path.exists():
        return [model_source]
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [model_source, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def engine_args_of(config: EngineProcessorConfig) -> EngineArgs:
    """The config's engine arguments with its model, checked now so that a typo fails before
    any row is read."""
    from llmbatch.engine.args import EngineArgs

    return EngineArgs.from_kwargs(
        **config.engine_kwargs_with_vllm_names(),
        model=config.model_source,  # type: ignore[attr-defined]
    )


class Processor:
    """Runs an LLM (or an HTTP endpoint) over a Dataset: ``processor(ds)`` returns a lazy
    Dataset of results.

    Stages, each reading and writing named columns: preprocess -> chat template -> tokenize ->
    engine -> detokenize -> postprocess (with `HttpRequestProcessorConfig`: preprocess -> HTTP
    request -> postprocess). A run loads the engine and closes it when the run ends, so its
    (GPU) memory is free for whatever runs next, as Ray Data LLM's actors end with their job.
    Open as a context manager (``with build_processor(...) as processor:``), the processor keeps
    its engine loaded across runs until the block exits. Consume one output at a time: starting
    a new run stops a run still in progress.
    """

    def __init__(
        self,
        config: ProcessorConfig,
        preprocess: RowFn | None = None,
        postprocess: RowFn | None = None,
        *,
        chat_template_kwargs: dict[str, Any] | None = None,
        ray_outputs: bool = False,
    ) -> None:
        if not isinstance(config, ProcessorConfig):
            raise TypeError(
                "a processor needs a vLLMEngineProcessorConfig, SGLangEngineProcessorConfig or "
                f"HttpRequestProcessorConfig, got {type(config).__name__}"
            )
        for name, fn in (("preprocess", preprocess), ("postprocess", postprocess)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function of one row (dict), got {fn!r}")
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
            raise TypeError(
                f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}"
            )
        self.config = config
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.builder_options = {
            "chat_template_kwargs": chat_template_kwargs,
            "ray_outputs": ray_outputs,
        }
        self._stats: RunStats | None = None
        self._engine: EngineHolder | None = None
        self.engine_args: EngineArgs | None = None
        if isinstance(config, EngineProcessorConfig):
            self.engine_args = engine_args_of(config)
            self.plan = config.stage_plan(
                ray_outputs=ray_outputs, chat_template_kwargs=chat_template_kwargs
            )
            self._engine = EngineHolder(
                self.engine_args,
                config.concurrency,
                self.plan.has_image,
                self._current_stats,
                recovery_policy(config),
                on_close=lambda engine: self.monitor.engine_closing(engine),
            )
        elif not isinstance(config, HttpRequestProcessorConfig):
            raise TypeError(f"{type(config).__name__} is not a processor config llmbatch runs")
        self.monitor = monitor_for(self)
        self._source_rows: Any = None

    def __call__(self, dataset: Dataset) -> Dataset:
        """The processed rows of `dataset`, lazily: nothing runs until the result is consumed.

        A Ray Dataset gives a Ray Dataset, whose stages run in Ray actors; written with
        ``llmbatch.data.write_parquet`` (or ``write_json``, ``write_csv``) it resumes."""
        if is_ray_dataset(dataset):
            if self.config.dashboard:  # type: ignore[attr-defined]
                logger.warning("dashboard=True has no effect on a Ray Dataset: see Ray's dashboard")
            return resumable_ray(
                lambda rows: process_ray_dataset(self, rows), dataset, self._identity
            )
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"a processor takes an llmbatch.data.Dataset, got {type(dataset).__name__}; "
                "wrap rows with llmbatch.data.from_items, from_pandas or from_arrow"
            )
        stages = self.monitor.wrap(self.stages(), SHOWN_STAGES, TOKEN_STAGE)
        self._source_rows = dataset.count_if_known
        output = dataset
        for stage in stages:
            output = output.transform(stage, stage.name)
        return resumable(
            output,
            dataset,
            lambda blocks: run_stages(stages, blocks),
            self._identity,
            self.prepare,
            watch=self.monitor.watch_write,
        )

    def summary(self) -> RunSummary | None:
        """The latest run's summary (live while it runs); None before any run."""
        return self._stats.summary() if self._stats is not None else None

    @property
    def dashboard_url(self) -> str | None:
        """The live dashboard's address once it is served (``dashboard=True``), else None."""
        return self.monitor.url

    @property
    def loaded_engine(self) -> EngineClient | None:
        """The engine if it is loaded now (None for the HTTP processor), without loading it."""
        return None if self._engine is None else self._engine.loaded

    @property
    def engine(self) -> EngineClient:
        """The engine, loaded now if it is not loaded (the end of a run closes it unless the
        processor is open as a context manager)."""
        return self._engine_holder().load()

    def list_stage_names(self) -> list[str]:
        """The stages' names, in order (preprocess and postprocess included)."""
        return [stage.name for stage in self.stages()]

    def log_input_column_names(self) -> None:
        """Logs the columns the first stage reads when there is no preprocess."""
        if isinstance(self.config, HttpRequestProcessorConfig):
            needed = "payload: the JSON object to POST"
        else:
            needed = (
                "messages: a list of {'role', 'content'} chat messages, or prompt: text; "
                "sampling_params (optional): a dict of sampling parameters"
            )
        logger.info("The processor reads, from each row (or its preprocess): %s", needed)

    def close(self) -> None:
        """Releases the engine and its memory (a later run loads it again) and stops the
        dashboard."""
        if self._engine is not None:
            self._engine.close()
        self.monitor.close()

    def __enter__(self) -> Processor:
        if self._engine is not None:
            self._engine.keep_loaded = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._engine is not None:
            self._engine.keep_loaded = False
        self.close()

    def stages(self) -> list[Stage]:
        """A new chain of the processor's stages (sharing its engine)."""
        if self._engine is None:
            return build_http_stages(
                self.config,  # type: ignore[arg-type]
                self.preprocess,
                self.postprocess,
                self._start_run,
                self._current_stats,
            )
        stages = build_engine_stages(
            self.config,  # type: ignore[arg-type]
            self.plan,
            self.preprocess,
            self.postprocess,
            self._engine,
            self._start_run,
            self._current_stats,
        )
        if getattr(self.config, "log_engine_metrics", False):
            stages.append(_LogSummary(self._current_stats))
        return stages

    def _engine_holder(self) -> EngineHolder:
        if self._engine is None:
            raise TypeError(f"a processor of {type(self.config).__name__} runs no engine")
        return self._engine

    def _identity(self) -> str:
        """What decides this processor's output, for resumable writes."""
        if isinstance(self.config, HttpRequestProcessorConfig):
            config = value_identity(self.config.identity())
            model: list[Any] = []
        else:
            config = value_identity(self.config)
            model = model_identity(self.config.model_source)  # type: ignore[attr-defined]
        return digest(
            config,
            value_identity(self.builder_options),
            model,
            code_identity(self.preprocess),
            code_identity(self.postprocess),
        )

    def prepare(self) -> None:
        """Loads what a run needs (the engine) now, so that a missing or broken model fails
        before any row is read. The dashboard, when asked for, is served first, so the model's
        loading shows there."""
        self._serve_dashboard()
        if self._engine is not None:
            self._engine.load()
            crash_point("engine_loaded")

    def _start_run(self) -> RunStats:
        previous = self._stats
        if previous is None or previous.rows or previous.finished_at is not None:
            self._stats = RunStats()
        # else the run began when its engine loaded (prepare), and its stats hold that time
        self.monitor.start_run(self._source_rows)
        self._serve_dashboard()
        return self._stats

    def _serve_dashboard(self) -> None:
        config = self.config
        if config.dashboard:  # type: ignore[attr-defined]
            self.monitor.serve(config.dashboard_host, config.dashboard_port)  # type: ignore[attr-defined]

    def _current_stats(self) -> RunStats:
        return self._stats if self._stats is not None else self._start_run()


class _LogSummary:
    """Logs a run's summary when it ends (``log_engine_metrics``)."""

    name = "log_summary"

    def __init__(self, current_stats: Any) -> None:
        self._current_stats = current_stats

    def __call__(self, blocks: Any) -> Any:
        yield from blocks
        logger.info("run summary:\n%s", self._current_stats().summary().format())


def build_processor(
    config: ProcessorConfig,
    preprocess: RowFn | None = None,
    postprocess: RowFn | None = None,
    preprocess_map_kwargs: dict[str, Any] | None = None,
    postprocess_map_kwargs: dict[str, Any] | None = None,
    builder_kwargs: dict[str, Any] | None = None,
) -> Processor:
    """A Processor for `config` (Ray Data LLM 2.56+'s builder).

    `preprocess(row) -> dict` adds the request columns (``messages`` or ``prompt``, and
    ``sampling_params``; for HTTP, ``payload``); `postprocess(row) -> dict` shapes each result
    row. ``builder_kwargs`` may hold ``chat_template_kwargs`` (engine configs), used when the
    chat template stage gives none. ``preprocess_map_kwargs`` / ``postprocess_map_kwargs``
    (Ray's resources for those maps) have no effect: the functions run where the stages run.

    As in Ray Data LLM, a row that fails stops the run unless the config sets
    ``should_continue_on_error=True``, and rows carry ``prompt_token_ids``, ``request_id`` and
    ``params``.
    """
    return _build(
        "build_processor",
        config,
        preprocess,
        postprocess,
        preprocess_map_kwargs,
        postprocess_map_kwargs,
        builder_kwargs,
        ray_outputs=True,
    )


def build_llm_processor(
    config: ProcessorConfig,
    preprocess: RowFn | None = None,
    postprocess: RowFn | None = None,
    preprocess_map_kwargs: dict[str, Any] | None = None,
    postprocess_map_kwargs: dict[str, Any] | None = None,
    builder_kwargs: dict[str, Any] | None = None,
) -> Processor:
    """A Processor running `config` over a Dataset's rows (Ray Data LLM's builder before 2.56).

    A row whose functions raise, whose request is invalid or whose prompt is too long becomes an
    error row (its ``error`` column says why) and the run goes on, unless the config sets
    ``should_continue_on_error=False``. The arguments are those of `build_processor`.
    """
    return _build(
        "build_llm_processor",
        config,
        preprocess,
        postprocess,
        preprocess_map_kwargs,
        postprocess_map_kwargs,
        builder_kwargs,
        ray_outputs=False,
    )


def _build(
    builder: str,
    config: ProcessorConfig,
    preprocess: RowFn | None,
    postprocess: RowFn | None,
    preprocess_map_kwargs: dict[str, Any] | None,
    postprocess_map_kwargs: dict[str, Any] | None,
    builder_kwargs: dict[str, Any] | None,
    *,
    ray_outputs: bool,
) -> Processor:
    options = _builder_options(builder, config, builder_kwargs)
    map_kwargs = {"preprocess_map_kwargs": preprocess_map_kwargs}
    map_kwargs["postprocess_map_kwargs"] = postprocess_map_kwargs
    for name, value in map_kwargs.items():
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{builder}: {name} must be a dict, got {type(value).__name__}")
    processor = Processor(config, preprocess, postprocess, ray_outputs=ray_outputs, **options)
    unused = [name for name, value in map_kwargs.items() if value]
    _warn_single_host_fields(config, unused)
    return processor


def _builder_options(
    builder: str, config: ProcessorConfig, builder_kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    if builder_kwargs is None:
        return {}
    if not isinstance(builder_kwargs, dict):
        raise TypeError(f"{builder}: builder_kwargs must be a dict, got {builder_kwargs!r}")
    reserved = sorted(set(_RESERVED_BUILDER_KWARGS) & set(builder_kwargs))
    if reserved:
        raise ValueError(
            f"builder_kwargs cannot contain {reserved}: these are arguments of {builder} "
            "itself; pass them directly"
        )
    accepted = _ENGINE_BUILDER_KWARGS if isinstance(config, EngineProcessorConfig) else ()
    unknown = sorted(set(builder_kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"{builder}: unknown builder_kwargs {unknown} for {type(config).__name__}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return dict(builder_kwargs)


def _warn_single_host_fields(config: ProcessorConfig, unused_map_kwargs: list[str]) -> None:
    notes = []
    accelerator = getattr(config, "accelerator_type", None)
    if accelerator is not None:
        notes.append(
            f"accelerator_type={accelerator!r} has no effect: "
            + (
                "the engine uses the local device (engine_kwargs['device'], default 'auto')"
                if isinstance(config, EngineProcessorConfig)
                else "the HTTP processor runs no model"
            )
        )
    if getattr(config, "runtime_env", None) is not None:
        notes.append("runtime_env has no effect in one process: set its env vars before starting")
    for name in ("placement_group_config", "max_tasks_in_flight_per_actor"):
        if getattr(config, name, None) is not None:
            notes.append(f"{name} has no effect in one process (it is used on a Ray cluster)")
    if isinstance(config, EngineProcessorConfig):
        stage_fields = config.fields_without_effect()
        if stage_fields:
            notes.append(
                f"{', '.join(stage_fields)} have no effect: all stages run in the engine's "
                "process (on Ray, in its actors)"
            )
    if unused_map_kwargs:
        notes.append(
            f"{' and '.join(unused_map_kwargs)} have no effect: preprocess and postprocess "
            "run where the stages run"
        )
    if notes:
        logger.warning("; ".join(notes))
