"""A processor applied to a ``ray.data.Dataset``: its stages run in Ray actors.

Each actor of an autoscaling pool holds one copy of the processor (with one engine replica of
``tensor_parallel_size`` GPUs on a GPU cluster, or an HTTP client) and runs the chain of stages
(preprocess to postprocess) over the blocks Ray gives it; Ray schedules the actors and moves
the rows.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pyarrow as pa

from llmbatch.data.blocks import carry_column
from llmbatch.data.numbered_writes import ROW_NUMBER
from llmbatch.integrations.ray import cluster_gpus, ray_data
from llmbatch.llm.config import EngineProcessorConfig, ProcessorConfig
from llmbatch.llm.placement import placement_group_resources
from llmbatch.llm.user_stages import RowFn

logger = logging.getLogger("llmbatch")


class ProcessorActor:
    """A Ray actor holding a processor for one replica; called with Arrow blocks of rows."""

    def __init__(
        self,
        processor_type: type,
        config: ProcessorConfig,
        builder_options: dict[str, Any],
        preprocess: RowFn | None,
        postprocess: RowFn | None,
    ) -> None:
        self._processor = processor_type(config, preprocess, postprocess, **builder_options)
        # Held for the actor's life, so one engine serves every batch; loaded now, so Ray
        # counts the load as the actor's start-up.
        self._processor.__enter__()
        self._processor.prepare()
        self._stages = self._processor.stages()

    def __call__(self, batch: pa.Table) -> pa.Table:
        # A resumable write numbers the rows; the number goes around the stages.
        return carry_column(batch, ROW_NUMBER, self._process)

    def _process(self, batch: pa.Table) -> pa.Table:
        from llmbatch.llm.stages import run_stages

        tables = list(run_stages(self._stages, iter([batch])))
        return pa.concat_tables(tables, promote_options="permissive")


def _engine_resources(processor: Any) -> tuple[dict[str, Any], ProcessorConfig]:
    config = processor.config
    engine_args = processor.engine_args
    assert engine_args is not None
    on_gpu = engine_args.device != "cpu" and cluster_gpus() > 0
    resources: dict[str, Any] = {}
    placement = getattr(config, "placement_group_config", None)
    if placement is not None:
        resources.update(placement_group_resources(placement, engine_args.tensor_parallel_size))
    elif on_gpu:
        resources["num_gpus"] = engine_args.tensor_parallel_size
    else:
        resources["num_cpus"] = 1
    if not on_gpu and "num_gpus" not in resources:
        engine_kwargs = {**config.engine_kwargs, "device": "cpu"}  # type: ignore[attr-defined]
        config = dataclasses.replace(config, engine_kwargs=engine_kwargs)  # type: ignore[type-var]
        if config.accelerator_type is not None:  # type: ignore[attr-defined]
            logger.warning(
                "accelerator_type=%r is not asked of Ray: the engine replicas run on CPUs "
                "(the Ray cluster has no GPU, or engine_kwargs['device'] is 'cpu')",
                config.accelerator_type,  # type: ignore[attr-defined]
            )
    elif config.accelerator_type is not None:  # type: ignore[attr-defined]
        resources["accelerator_type"] = config.accelerator_type  # type: ignore[attr-defined]
    return resources, config


def process_ray_dataset(processor: Any, dataset: Any) -> Any:
    """The processor's stages over a Ray Dataset, as a lazy Ray Dataset.

    ``concurrency`` sizes the actor pool: an int n lets Ray scale it from 1 to n actors, a
    ``(min, max)`` pair sets both bounds. On a cluster with GPUs each engine actor asks for
    ``tensor_parallel_size`` GPUs (of ``accelerator_type`` when given), or the totals of
    ``placement_group_config``'s bundles; on a CPU-only cluster, one CPU and the engine runs
    on it. ``runtime_env`` is passed to the actors.
    """
    data = ray_data()
    config = processor.config
    if isinstance(config, EngineProcessorConfig):
        resources, config = _engine_resources(processor)
    else:
        resources = {"num_cpus": 1}
    if getattr(config, "runtime_env", None) is not None:
        resources["runtime_env"] = config.runtime_env  # type: ignore[attr-defined]
    pool = dict(config.get_concurrency())
    in_flight = getattr(config, "max_tasks_in_flight_per_actor", None)
    if in_flight is not None:
        pool["max_tasks_in_flight_per_actor"] = in_flight
    return dataset.map_batches(
        ProcessorActor,
        fn_constructor_kwargs={
            "processor_type": type(processor),
            "config": _one_replica(config),
            "builder_options": processor.builder_options,
            "preprocess": processor.preprocess,
            "postprocess": processor.postprocess,
        },
        batch_size=config.batch_size,  # type: ignore[attr-defined]
        batch_format="pyarrow",
        compute=data.ActorPoolStrategy(**pool),
        **resources,
    )


def _one_replica(config: ProcessorConfig) -> ProcessorConfig:
    """The config of one actor: one replica, and no Ray settings (Ray already applied them)."""
    ray_only = {"concurrency": 1, "accelerator_type": None}
    for name in ("runtime_env", "placement_group_config", "max_tasks_in_flight_per_actor"):
        if hasattr(config, name):
            ray_only[name] = None
    return dataclasses.replace(config, **ray_only)  # type: ignore[type-var]
