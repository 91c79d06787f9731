"""Ray Data, an optional extra (``pip install llmbatch[ray]``): telling its datasets apart and
importing it with an error that says how to install it."""

from __future__ import annotations

from typing import Any


def is_ray_dataset(dataset: object) -> bool:
    """Whether `dataset` is a Ray Dataset (checked without importing Ray)."""
    return any(
        cls.__module__.split(".")[0] == "ray" and cls.__name__ == "Dataset"
        for cls in type(dataset).__mro__
    )


def ray_data() -> Any:
    """``ray.data``; an ImportError saying how to install it when Ray is missing."""
    try:
        import ray.data
    except ImportError as exc:
        raise ImportError(
            f"running a processor over a Ray Dataset needs Ray Data ({exc}); install it with "
            "`pip install llmbatch[ray]`"
        ) from exc
    return ray.data


def cluster_gpus() -> float:
    """GPUs in the Ray cluster (starting a local one when none is running)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return ray.cluster_resources().get("GPU", 0.0)
