"""Processor configurations: what to run and how rows are turned into requests.

`vLLMEngineProcessorConfig` (= `LLMProcessorConfig`) takes both Ray Data LLM's older fields
(``has_image``, ``apply_chat_template``, ``chat_template``, ``tokenize``, ``detokenize``) and
those of 2.56+ (``chat_template_stage``, ``tokenize_stage``, ``detokenize_stage``,
``prepare_multimodal_stage``, ``task_type``, ``should_continue_on_error``, ...); giving both
spellings of one stage is an error. `StagePlan` is what the stages are built from.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from llmbatch.llm.config_fields import DASHBOARD_FIELD_TYPES, NOT_IDENTITY, CheckedFields
from llmbatch.llm.placement import check_placement_group
from llmbatch.llm.stage_configs import (
    ChatTemplateStageConfig,
    DetokenizeStageConfig,
    PrepareMultimodalStageConfig,
    StageConfig,
    TokenizerStageConfig,
    resolve_stage_config,
)

logger = logging.getLogger("llmbatch")

_NONE = type(None)

GENERATE = "generate"
# Ray Data LLM's pooling tasks; a processor runs embed and classify (one row, one prompt).
POOLING_TASK_TYPES = ("embed", "classify", "score")
TASK_TYPES = (GENERATE, *POOLING_TASK_TYPES)


def check_task_type(owner: str, task_type: str, accepted: tuple[str, ...] = TASK_TYPES) -> None:
    if task_type in accepted and task_type != "score":
        return
    if task_type == "score":
        raise ValueError(
            f"{owner}.task_type='score' is not supported in a processor: a row holds one "
            "prompt; score pairs with llmbatch.LLM.score, or give a cross-encoder's rows their "
            "pair as one prompt with task_type='classify'"
        )
    raise ValueError(
        f"{owner}.task_type={task_type!r} is not a task type; accepted: "
        f"{', '.join(repr(t) for t in accepted if t != 'score')}"
    )


class ProcessorConfig(CheckedFields):
    """The base of every processor config (Ray Data LLM's `ProcessorConfig`): build one of
    `vLLMEngineProcessorConfig`, `SGLangEngineProcessorConfig` or `HttpRequestProcessorConfig`."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is ProcessorConfig or cls is EngineProcessorConfig:
            raise TypeError(
                f"{cls.__name__} is the base of the processor configs; build a "
                "vLLMEngineProcessorConfig, SGLangEngineProcessorConfig or "
                "HttpRequestProcessorConfig"
            )
        return super().__new__(cls, *args, **kwargs)

    @property
    def num_replicas(self) -> int:
        """The largest number of replicas (engines, or HTTP workers) ``concurrency`` asks for."""
        concurrency = self.concurrency  # type: ignore[attr-defined]
        return concurrency if isinstance(concurrency, int) else concurrency[1]

    def get_concurrency(self, autoscaling_enabled: bool = True) -> dict[str, int]:
        """Ray's actor pool sizes for ``concurrency``: ``{"min_size": 1, "max_size": n}`` for an
        int (``{"size": n}`` without autoscaling), ``{"min_size": m, "max_size": n}`` for a pair."""
        concurrency = self.concurrency  # type: ignore[attr-defined]
        if isinstance(concurrency, int):
            if autoscaling_enabled:
                return {"min_size": 1, "max_size": concurrency}
            return {"size": concurrency}
        return {"min_size": concurrency[0], "max_size": concurrency[1]}


@dataclass(frozen=True, slots=True)
class StagePlan:
    """The stages of an engine processor, resolved from its config and builder.

    ``*_source`` names the model whose tokenizer a stage uses when it is not the engine's.
    ``stop_on_error``: the first row this processor fails stops the run (Ray's
    ``should_continue_on_error=False``); ``error_column``: rows carry Ray's
    ``__inference_error__`` (empty for good rows), and error rows Ray's defaults in the
    generation columns; ``ray_columns``: rows carry ``prompt_token_ids``, ``request_id`` and
    ``params`` as Ray Data LLM 2.60 writes them; ``sampling_params``: whose names the rows'
    sampling params use, "vllm" or "sglang".
    """

    has_image: bool
    chat_template: bool
    chat_template_text: str | None
    chat_template_kwargs: dict[str, Any] | None
    chat_template_source: str | None
    tokenize: bool
    tokenize_source: str | None
    detokenize: bool
    detokenize_source: str | None
    stop_on_error: bool = False
    error_column: bool = False
    ray_columns: bool = False
    sampling_params: str = "vllm"


class EngineProcessorConfig(ProcessorConfig):
    """What the configs that run llmbatch's engine share."""

    __slots__ = ()
    sampling_params_names: ClassVar[str] = "vllm"

    def engine_kwargs_with_vllm_names(self) -> dict[str, Any]:
        """``engine_kwargs`` as llmbatch's engine takes them (vLLM's names)."""
        return dict(self.engine_kwargs)  # type: ignore[attr-defined]

    def stage_configs(
        self,
    ) -> tuple[
        ChatTemplateStageConfig,
        TokenizerStageConfig,
        DetokenizeStageConfig,
        PrepareMultimodalStageConfig,
    ]:
        """The four stage configs, from the 2.56+ fields or else from the older ones."""
        name = type(self).__name__
        chat = self._stage(
            "chat_template_stage",
            ChatTemplateStageConfig,
            {"apply_chat_template": True, "chat_template": None},
            lambda: ChatTemplateStageConfig(
                enabled=self._older("apply_chat_template", True),
                chat_template=self._older("chat_template", None),
            ),
        )
        tokenize = self._stage(
            "tokenize_stage",
            TokenizerStageConfig,
            {"tokenize": True},
            lambda: TokenizerStageConfig(enabled=self._older("tokenize", True)),
        )
        detokenize = self._stage(
            "detokenize_stage",
            DetokenizeStageConfig,
            {"detokenize": True},
            lambda: DetokenizeStageConfig(enabled=self._older("detokenize", True)),
        )
        multimodal = self._stage(
            "prepare_multimodal_stage",
            PrepareMultimodalStageConfig,
            {"has_image": False},
            lambda: PrepareMultimodalStageConfig(enabled=self._older("has_image", False)),
        )
        if multimodal.enabled and not (chat.enabled and tokenize.enabled):
            older = getattr(self, "prepare_multimodal_stage", None) is None
            needed = [
                (f"{older_name}=True" if older else f"{stage_name}.enabled")
                for older_name, stage_name, stage in (
                    ("apply_chat_template", "chat_template_stage", chat),
                    ("tokenize", "tokenize_stage", tokenize),
                )
                if not stage.enabled
            ]
            asked = "has_image=True" if older else "prepare_multimodal_stage"
            raise ValueError(
                f"{name}.{asked} needs {' and '.join(needed)}: a row's images come from its "
                "messages and are turned into image tokens by the tokenize stage"
            )
        return chat, tokenize, detokenize, multimodal

    def stage_plan(
        self, *, ray_outputs: bool, chat_template_kwargs: dict[str, Any] | None
    ) -> StagePlan:
        """The stages to build. ``ray_outputs`` (``build_processor``): Ray Data LLM 2.60's
        output columns, and an unset ``should_continue_on_error`` is False as there; without
        it (``build_llm_processor``) failed rows become error rows. ``chat_template_kwargs``
        (from ``builder_kwargs``) applies when the chat template stage gives none."""
        chat, tokenize, detokenize, multimodal = self.stage_configs()
        model = self.model_source  # type: ignore[attr-defined]
        given = self.should_continue_on_error  # type: ignore[attr-defined]
        continue_on_error = (not ray_outputs) if given is None else given
        kwargs = chat.chat_template_kwargs
        kwargs = kwargs if kwargs is not None else chat_template_kwargs
        if getattr(self, "task_type", GENERATE) != GENERATE:
            # a pooling model reads the conversation as it is: no turn is opened for an answer
            kwargs = {"add_generation_prompt": False, **(kwargs or {})}
        return StagePlan(
            has_image=multimodal.enabled,
            chat_template=chat.enabled,
            chat_template_text=chat.chat_template,
            chat_template_kwargs=kwargs,
            chat_template_source=_other_source(chat.model_source, model),
            tokenize=tokenize.enabled,
            tokenize_source=_other_source(tokenize.model_source, model),
            detokenize=detokenize.enabled,
            detokenize_source=_other_source(detokenize.model_source, model),
            stop_on_error=not continue_on_error,
            error_column=given is True,
            ray_columns=ray_outputs,
            sampling_params=self.sampling_params_names,
        )

    def fields_without_effect(self) -> list[str]:
        """Stage settings given here that llmbatch does not use, as ``stage.name=value``."""
        notes = []
        names = ("chat_template_stage", "tokenize_stage", "detokenize_stage")
        configs = self.stage_configs()
        for name, config in zip((*names, "prepare_multimodal_stage"), configs):
            notes.extend(f"{name}.{item}" for item in config.no_effect())
        return notes

    def _older(self, name: str, default: Any) -> Any:
        return getattr(self, name, default)

    def _stage(
        self,
        name: str,
        config_type: type[StageConfig],
        older: dict[str, Any],
        from_older: Any,
    ) -> Any:
        value = getattr(self, name)
        if value is None:
            return from_older()
        conflicting = [
            key for key, default in older.items() if self._older(key, default) != default
        ]
        if conflicting:
            raise ValueError(
                f"{type(self).__name__}: give {name} or the older "
                f"{' / '.join(older)} field(s), not both ({', '.join(conflicting)} is set)"
            )
        return resolve_stage_config(value, config_type, f"{type(self).__name__}.{name}")

    def check_engine_fields(self) -> None:
        """The checks every engine config shares, after its field types."""
        name = type(self).__name__
        self.model_source = os.fspath(self.model_source)  # type: ignore[attr-defined]
        if not self.model_source:
            raise ValueError(f"{name}.model_source must not be empty")
        bad_keys = [k for k in self.engine_kwargs if not isinstance(k, str)]  # type: ignore[attr-defined]
        if bad_keys:
            raise TypeError(f"{name}.engine_kwargs keys must be str: {bad_keys!r}")
        self.check_positive("batch_size", self.batch_size)  # type: ignore[attr-defined]
        self.check_positive("max_concurrent_batches", self.max_concurrent_batches)  # type: ignore[attr-defined]
        for optional in ("max_pending_requests", "max_tasks_in_flight_per_actor"):
            value = getattr(self, optional)
            if value is not None:
                self.check_positive(optional, value)
        self.check_concurrency()
        self.check_dashboard()
        rate = self.max_error_rate  # type: ignore[attr-defined]
        if rate is not None and not 0 <= rate <= 1:
            raise ValueError(
                f"{name}.max_error_rate must be in [0, 1] (a fraction of the rows, e.g. 0.5), "
                f"got {rate!r}"
            )
        restarts = self.max_engine_restarts  # type: ignore[attr-defined]
        if restarts < 0:
            raise ValueError(f"{name}.max_engine_restarts must be >= 0, got {restarts}")
        stall = self.engine_stall_timeout_s  # type: ignore[attr-defined]
        if stall <= 0:
            raise ValueError(f"{name}.engine_stall_timeout_s must be > 0 seconds, got {stall}")
        self.stage_configs()


def _other_source(source: str | None, model_source: str) -> str | None:
    return None if source is None or os.fspath(source) == model_source else os.fspath(source)


ENGINE_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model_source": (str, os.PathLike),
    "engine_kwargs": (dict,),
    "batch_size": (int,),
    "concurrency": (int, tuple, list),
    "accelerator_type": (str, _NONE),
    "runtime_env": (dict, _NONE),
    "max_pending_requests": (int, _NONE),
    "max_concurrent_batches": (int,),
    "max_tasks_in_flight_per_actor": (int, _NONE),
    "max_error_rate": (float, int, _NONE),
    "task_type": (str,),
    "should_continue_on_error": (bool, _NONE),
    "chat_template_stage": (bool, dict, ChatTemplateStageConfig, _NONE),
    "tokenize_stage": (bool, dict, TokenizerStageConfig, _NONE),
    "detokenize_stage": (bool, dict, DetokenizeStageConfig, _NONE),
    "prepare_multimodal_stage": (bool, dict, PrepareMultimodalStageConfig, _NONE),
    "max_engine_restarts": (int,),
    "engine_stall_timeout_s": (float, int),
    **DASHBOARD_FIELD_TYPES,
}
MODEL_SOURCE_HINT = "a local model folder, a .gguf file or a Hub id"


@dataclass(slots=True, kw_only=True)
class LLMProcessorConfig(EngineProcessorConfig):
    """How a processor runs llmbatch's engine over a dataset (Ray Data LLM's
    `vLLMEngineProcessorConfig`, of both its older and its 2.56+ forms).

    Args:
        model_source: a local Hugging Face folder, a ``.gguf`` file, or a Hub id.
        engine_kwargs: engine arguments with vLLM's names (``max_model_len``, ``max_num_seqs``,
            ``enable_prefix_caching``, ...); an unknown name is an error when the processor is
            built.
        batch_size: rows per Arrow table that the stages read and emit. It is never a barrier:
            the engine takes new rows as soon as it has room, whatever batch they came in.
        concurrency: engine replicas. An int is an upper bound (one replica per GPU, or per
            tensor-parallel group; CPU processes on a host without GPUs); ``(min, max)`` sets both
            bounds, and a min the host cannot meet is an error. On Ray, the actor pool's size.
        accelerator_type: the GPU type each replica asks Ray for; no effect on one host.
        runtime_env: the replicas' Ray runtime environment; no effect on one host.
        has_image / prepare_multimodal_stage: image inputs, in ``messages`` (content parts
            ``{"type": "image", "image": X}`` or ``{"type": "image_url", "image_url": {"url":
            X}}``) or a row's ``multimodal_data`` (``{"image": [X, ...]}`` with a ``prompt``
            holding the image placeholders); X a PIL image, bytes, a ``{"bytes", "path"}`` dict,
            a path or an http(s)/data URL. The model's own processor renders and tokenizes them.
        apply_chat_template / chat_template / chat_template_stage: turn ``messages`` into
            ``prompt`` with the tokenizer's (or the given) chat template; rows that give
            ``prompt`` skip it. ``chat_template_stage`` also takes ``chat_template_kwargs``.
        tokenize / tokenize_stage: tokenize prompts in a batched stage before the engine
            (otherwise the engine tokenizes each prompt string itself).
        detokenize / detokenize_stage: decode ``generated_tokens`` into ``generated_text`` for
            rows whose ``sampling_params`` set ``detokenize=False``.
        max_pending_requests: requests kept inside the engine at once (default: twice the
            engine's ``max_num_seqs``, 256 with images), so its running batch never waits.
        max_concurrent_batches: how many ``batch_size`` tables of finished rows may wait for an
            earlier, slower row (output keeps input order); feeding pauses beyond that.
        max_error_rate: stop a run once more than this fraction of its rows are error rows.
        task_type: "generate" (text), "embed" (an ``embeddings`` column) or "classify" (a
            ``probs`` column): the engine runs the model as a pooling model for the latter two
            (unless engine_kwargs give runner, convert or task). Rows may give
            ``pooling_params`` (``dimensions``, ``normalize``, ``use_activation``).
        should_continue_on_error: False stops a run at the first row that fails; True makes it
            an error row (``error`` and Ray's ``__inference_error__``) and goes on. Unset, it is
            False with ``build_processor`` (as in Ray Data LLM) and error rows with
            ``build_llm_processor`` (llmbatch's behaviour, without ``__inference_error__``).
        log_engine_metrics: log each run's summary (rows, tokens, throughput) when it ends.
        placement_group_config: on a Ray cluster, the resources each engine actor asks for
            (``bundle_per_worker`` or ``bundles``, and ``strategy``); no effect on one host.
        max_tasks_in_flight_per_actor: on Ray, passed to the actor pool; no effect on one host.
        dynamic_lora_loading_path: a local folder of LoRA adapters by name: a row whose
            ``model`` is not ``model_source`` runs the adapter of that name in it (without it,
            ``model`` must be an adapter folder). A row's ``lora`` column may give a folder too.
            Needs ``engine_kwargs`` ``enable_lora=True`` (and ``max_lora_rank``, ``max_loras``).
        max_engine_restarts: an engine (or replica) that dies is started again and its requests
            run again; after this many restarts in a row with no request finishing (not
            counting those that narrow down a request that kills it every time, which becomes
            an error row) the job stops, keeping every row already written.
        engine_stall_timeout_s: an engine that makes no progress for this long stops the job
            with an error showing every thread's stack (default 30 minutes, longer than any
            start-up).
        dashboard: serve a live dashboard of each run (and Prometheus metrics at /metrics);
            its address is printed once.
        dashboard_host: the address it listens on; the default, 127.0.0.1, lets only this
            machine see it (another address is reachable from others: a warning says so).
        dashboard_port: its port; 0 picks a free one.
    """

    model_source: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    concurrency: int | tuple[int, int] = 1
    accelerator_type: str | None = None
    runtime_env: dict[str, Any] | None = None
    has_image: bool = False
    apply_chat_template: bool = True
    chat_template: str | None = None
    tokenize: bool = True
    detokenize: bool = True
    max_pending_requests: int | None = None
    max_concurrent_batches: int = 8
    max_error_rate: float | None = None
    task_type: str = GENERATE
    should_continue_on_error: bool | None = None
    chat_template_stage: Any = None
    tokenize_stage: Any = None
    detokenize_stage: Any = None
    prepare_multimodal_stage: Any = None
    log_engine_metrics: bool = True
    placement_group_config: dict[str, Any] | None = None
    max_tasks_in_flight_per_actor: int | None = None
    dynamic_lora_loading_path: str | None = None
    max_engine_restarts: int = 3
    engine_stall_timeout_s: float = 1800.0
    dashboard: bool = field(default=False, metadata=NOT_IDENTITY)
    dashboard_host: str = field(default="127.0.0.1", metadata=NOT_IDENTITY)
    dashboard_port: int = field(default=0, metadata=NOT_IDENTITY)

    _REQUIRED: ClassVar[dict[str, str]] = {"model_source": MODEL_SOURCE_HINT}
    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        **ENGINE_FIELD_TYPES,
        "has_image": (bool,),
        "apply_chat_template": (bool,),
        "chat_template": (str, _NONE),
        "tokenize": (bool,),
        "detokenize": (bool,),
        "log_engine_metrics": (bool,),
        "placement_group_config": (dict, _NONE),
        "dynamic_lora_loading_path": (str, _NONE),
    }

    def __post_init__(self) -> None:
        self.check_types()
        name = type(self).__name__
        check_task_type(name, self.task_type)
        self._take_task_type_from_engine_kwargs()
        model = self.engine_kwargs.get("model")
        if model is not None and os.fspath(model) != os.fspath(self.model_source):
            raise ValueError(
                f"{name}.engine_kwargs['model']={model!r} differs from "
                f"model_source={self.model_source!r}; give the model only as model_source"
            )
        if self.dynamic_lora_loading_path is not None:
            self._check_adapters_root(name)
        if self.placement_group_config is not None:
            self.placement_group_config = check_placement_group(
                f"{name}.placement_group_config", self.placement_group_config
            )
        self.check_engine_fields()

    def _check_adapters_root(self, name: str) -> None:
        root = os.fspath(self.dynamic_lora_loading_path)
        if "://" in root:
            raise ValueError(
                f"{name}.dynamic_lora_loading_path={root!r}: adapters are read from a local "
                "folder; copy them there first (e.g. aws s3 sync)"
            )
        if not os.path.isdir(os.path.expanduser(root)):
            raise ValueError(f"{name}.dynamic_lora_loading_path={root!r} is not a folder")
        if not self.engine_kwargs.get("enable_lora"):
            raise ValueError(
                f"{name}.dynamic_lora_loading_path needs engine_kwargs enable_lora=True (and "
                "max_lora_rank at least the adapters' rank)"
            )
        self.dynamic_lora_loading_path = os.path.expanduser(root)

    def engine_kwargs_with_vllm_names(self) -> dict[str, Any]:
        """``engine_kwargs``, with the task type as the engine's ``task`` unless they choose
        the runner themselves."""
        kwargs = dict(self.engine_kwargs)
        if not {"runner", "convert", "task"} & set(kwargs):
            kwargs["task"] = self.task_type
        return kwargs

    def _take_task_type_from_engine_kwargs(self) -> None:
        # Ray Data LLM copies task_type into engine_kwargs; the engine has no such argument.
        if "task_type" not in self.engine_kwargs:
            return
        given = self.engine_kwargs["task_type"]
        if given != self.task_type:
            logger.warning(
                "The task_type set in engine kwargs (%s) is different from the config (%s); "
                "using %s",
                given,
                self.task_type,
                self.task_type,
            )
        self.engine_kwargs = {k: v for k, v in self.engine_kwargs.items() if k != "task_type"}


class vLLMEngineProcessorConfig(LLMProcessorConfig):  # noqa: N801 (Ray Data LLM's name)
    """Ray Data LLM's name for `LLMProcessorConfig`: the same fields, run by llmbatch's engine."""

    __slots__ = ()
