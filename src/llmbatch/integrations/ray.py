"""Ray Data: a processor applied to a ``ray.data.Dataset`` runs its stages in Ray actors.

Each actor of an autoscaling pool holds one engine replica (``tensor_parallel_size`` GPUs on a
GPU cluster) and runs the whole chain of stages (preprocess to postprocess) over the blocks Ray
gives it; Ray schedules the actors and moves the rows. Ray is an optional extra:
``pip install llmbatch[ray]``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from llmbatch.llm.config import LLMProcessorConfig
    from llmbatch.llm.processor import Processor
    from llmbatch.llm.user_stages import RowFn

logger = logging.getLogger("llmbatch")


def is_ray_dataset(dataset: object) -> bool:
    """Whether `dataset` is a Ray Dataset (checked without importing Ray)."""
    return any(
        cls.__module__.split(".")[0] == "ray" and cls.__name__ == "Dataset"
        for cls in type(dataset).__mro__
    )


def _ray_data() -> Any:
    try:
        import ray.data
    except ImportError as exc:
        raise ImportError(
            f"running a processor over a Ray Dataset needs Ray Data ({exc}); install it with "
            "`pip install llmbatch[ray]`"
        ) from exc
    return ray.data


class EngineReplicaActor:
    """A Ray actor holding one engine replica; called with Arrow blocks of rows."""

    def __init__(
        self, config: dict[str, Any], preprocess: RowFn | None, postprocess: RowFn | None
    ) -> None:
        from llmbatch.llm.config import LLMProcessorConfig
        from llmbatch.llm.processor import Processor

        self.processor = Processor(
            LLMProcessorConfig(**config), preprocess=preprocess, postprocess=postprocess
        )
        # Held open for the actor's life, so one engine serves every batch; loaded now, so Ray
        # counts the load as the actor's start-up.
        self.processor.__enter__()
        _ = self.processor.engine

    def __call__(self, batch: pa.Table) -> pa.Table:
        import llmbatch.data

        results = self.processor(llmbatch.data.from_arrow(batch))
        tables = list(results.iter_batches(batch_size=None, batch_format="pyarrow"))
        return pa.concat_tables(tables, promote_options="permissive")


def _cluster_gpus(ray: Any) -> float:
    if not ray.is_initialized():
        ray.init()
    return ray.cluster_resources().get("GPU", 0.0)


def _actor_config(config: LLMProcessorConfig, on_gpu: bool) -> dict[str, Any]:
    """The config's fields for one replica per actor, on the device Ray gives the actor (as a
    dict: the config class checks its fields when built, so it travels as its fields)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    engine_kwargs = dict(config.engine_kwargs)
    if not on_gpu:
        engine_kwargs["device"] = "cpu"
    return {
        **fields,
        "engine_kwargs": engine_kwargs,
        "concurrency": 1,
        "accelerator_type": None,
        "runtime_env": None,
    }


def process_ray_dataset(processor: Processor, dataset: Any) -> Any:
    """`processor`'s stages over a Ray Dataset, as a lazy Ray Dataset.

    ``concurrency`` sizes the actor pool: an int n lets Ray scale it from 1 to n actors, a
    ``(min, max)`` pair sets both bounds. On a cluster with GPUs each actor asks for
    ``tensor_parallel_size`` GPUs (of ``accelerator_type`` when given); on a CPU-only cluster,
    one CPU and the engine runs on it. ``runtime_env`` is passed to the actors.
    """
    ray_data = _ray_data()
    import ray

    config = processor.config
    low, high = (
        (1, config.concurrency) if isinstance(config.concurrency, int) else config.concurrency
    )
    device = str(config.engine_kwargs.get("device", "auto"))
    on_gpu = device != "cpu" and _cluster_gpus(ray) > 0
    resources: dict[str, Any] = {}
    if on_gpu:
        resources["num_gpus"] = int(config.engine_kwargs.get("tensor_parallel_size", 1))
        if config.accelerator_type is not None:
            resources["accelerator_type"] = config.accelerator_type
    else:
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
            "config": _actor_config(config, on_gpu),
            "preprocess": processor.preprocess,
            "postprocess": processor.postprocess,
        },
        batch_size=config.batch_size,
        batch_format="pyarrow",
        compute=ray_data.ActorPoolStrategy(min_size=low, max_size=high),
        **resources,
    )
