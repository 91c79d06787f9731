"""A processor applied to a ``ray.data.Dataset``: its stages run in Ray actors.

Each actor of an autoscaling pool holds one engine replica (``tensor_parallel_size`` GPUs on a
GPU cluster) and runs the chain of stages (preprocess to postprocess) over the blocks Ray gives
it; Ray schedules the actors and moves the rows.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.data.blocks import carry_column
from llmbatch.data.numbered_writes import ROW_NUMBER
from llmbatch.integrations.ray import cluster_gpus, ray_data
from llmbatch.llm.config import LLMProcessorConfig
from llmbatch.llm.summary import RunStats
from llmbatch.llm.user_stages import RowFn

if TYPE_CHECKING:
    from llmbatch.engine.args import EngineArgs

logger = logging.getLogger("llmbatch")


class EngineReplicaActor:
    """A Ray actor holding one engine replica and the processor's stages around it; called
    with Arrow blocks of rows."""

    def __init__(
        self,
        config: dict[str, Any],
        engine_args: EngineArgs,
        preprocess: RowFn | None,
        postprocess: RowFn | None,
    ) -> None:
        from llmbatch.llm.engine_holder import EngineHolder, recovery_policy
        from llmbatch.llm.stages import build_stages

        processor_config = LLMProcessorConfig(**config)
        self._stats = RunStats()
        # Held for the actor's life, so one engine serves every batch; loaded now, so Ray
        # counts the load as the actor's start-up.
        self._engine = EngineHolder(
            engine_args,
            1,
            processor_config.has_image,
            self._run_stats,
            recovery_policy(processor_config),
        )
        self._engine.keep_loaded = True
        self._engine.load()
        self._stages = build_stages(
            processor_config,
            preprocess,
            postprocess,
            self._engine,
            self._new_run,
            self._run_stats,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        # A resumable write numbers the rows; the number goes around the stages.
        return carry_column(batch, ROW_NUMBER, self._process)

    def _process(self, batch: pa.Table) -> pa.Table:
        from llmbatch.llm.stages import run_stages

        tables = list(run_stages(self._stages, iter([batch])))
        return pa.concat_tables(tables, promote_options="permissive")

    def _new_run(self) -> RunStats:
        self._stats = RunStats()
        return self._stats

    def _run_stats(self) -> RunStats:
        return self._stats


def _actor_config(config: LLMProcessorConfig) -> dict[str, Any]:
    """The config's fields for one replica per actor (as a dict: the config class checks its
    fields when built, so it travels as its fields)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {**fields, "concurrency": 1, "accelerator_type": None, "runtime_env": None}


def process_ray_dataset(
    config: LLMProcessorConfig,
    engine_args: EngineArgs,
    preprocess: RowFn | None,
    postprocess: RowFn | None,
    dataset: Any,
) -> Any:
    """The processor's stages over a Ray Dataset, as a lazy Ray Dataset.

    ``concurrency`` sizes the actor pool: an int n lets Ray scale it from 1 to n actors, a
    ``(min, max)`` pair sets both bounds. On a cluster with GPUs each actor asks for
    ``tensor_parallel_size`` GPUs (of ``accelerator_type`` when given); on a CPU-only cluster,
    one CPU and the engine runs on it. ``runtime_env`` is passed to the actors.
    """
    data = ray_data()
    low, high = (
        (1, config.concurrency) if isinstance(config.concurrency, int) else config.concurrency
    )
    on_gpu = engine_args.device != "cpu" and cluster_gpus() > 0
    resources: dict[str, Any] = {}
    if on_gpu:
        resources["num_gpus"] = engine_args.tensor_parallel_size
        if config.accelerator_type is not None:
            resources["accelerator_type"] = config.accelerator_type
    else:
        engine_args = dataclasses.replace(engine_args, device="cpu")
        resources["num_cpus"] = 1
        if config.accelerator_type is not None:
            logger.warning(
                "accelerator_type=%r is not asked of Ray: the engine replicas run on CPUs "
                "(the Ray cluster has no GPU, or engine_kwargs['device'] is 'cpu')",
                config.accelerator_type,
            )
    if config.runtime_env is not None:
        resources["runtime_env"] = config.runtime_env
    return dataset.map_batches(
        EngineReplicaActor,
        fn_constructor_kwargs={
            "config": _actor_config(config),
            "engine_args": engine_args,
            "preprocess": preprocess,
            "postprocess": postprocess,
        },
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=data.ActorPoolStrategy(min_size=low, max_size=high),
        **resources,
    )
