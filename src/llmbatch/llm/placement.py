"""Ray placement group configs (``placement_group_config``): checked as Ray Data LLM checks
them, and turned into the resources of the one Ray actor that holds an engine replica."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

logger = logging.getLogger("llmbatch")

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def check_placement_group(owner: str, value: dict[str, Any]) -> dict[str, Any]:
    """Ray's placement group config checked as Ray checks it, in its normal form:
    ``{"bundle_per_worker": {...} | None, "bundles": [{...}] | None, "strategy": ...}``."""
    unknown = sorted(set(value) - {"bundle_per_worker", "bundles", "strategy"})
    if unknown:
        raise ValueError(
            f"{owner} has unknown key(s) {unknown}; accepted: bundle_per_worker, bundles, strategy"
        )
    per_worker, bundles = value.get("bundle_per_worker"), value.get("bundles")
    if (per_worker is None) == (bundles is None):
        raise ValueError(
            f"{owner} must give exactly one of 'bundle_per_worker' (one bundle per engine "
            "worker, repeated tensor_parallel_size times) and 'bundles' (the full list)"
        )
    strategy = value.get("strategy", "PACK")
    if strategy not in PLACEMENT_STRATEGIES:
        raise ValueError(
            f"{owner}['strategy']={strategy!r}; accepted: {', '.join(PLACEMENT_STRATEGIES)}"
        )
    if bundles is not None and not isinstance(bundles, list | tuple):
        raise ValueError(f"{owner}['bundles'] must be a list of resource dicts, got {bundles!r}")
    return {
        "bundle_per_worker": None if per_worker is None else _bundle(owner, per_worker),
        "bundles": None if bundles is None else [_bundle(owner, b) for b in bundles],
        "strategy": strategy,
    }


def _bundle(owner: str, bundle: Any) -> dict[str, float]:
    if not isinstance(bundle, dict):
        raise ValueError(f"{owner}: a bundle must be a dict of resources, got {bundle!r}")
    for key, amount in bundle.items():
        if not isinstance(amount, int | float) or isinstance(amount, bool) or amount < 0:
            raise ValueError(
                f"{owner}: resource {key!r} must be a non-negative number, got {amount!r}"
            )
    return {"CPU": 0.0, "GPU": 0.0, **{k: float(v) for k, v in bundle.items()}}


def placement_group_resources(placement_group: dict[str, Any], workers: int) -> dict[str, Any]:
    """An actor's Ray resources from a placement group config: the bundles' totals (its engine
    group runs in the one actor, so the bundles are packed on one node)."""
    bundles = placement_group["bundles"] or [placement_group["bundle_per_worker"]] * workers
    totals: Counter[str] = Counter()
    for bundle in bundles:
        totals.update(bundle)
    resources: dict[str, Any] = {}
    cpus, gpus = totals.pop("CPU", 0), totals.pop("GPU", 0)
    if cpus:
        resources["num_cpus"] = cpus
    if gpus:
        resources["num_gpus"] = gpus
    if +totals:
        resources["resources"] = dict(+totals)
    if len(bundles) > 1 and placement_group["strategy"] in ("SPREAD", "STRICT_SPREAD"):
        logger.warning(
            "placement_group_config strategy %s: an engine replica runs in one Ray actor, so "
            "its %d bundles are asked for together, on one node",
            placement_group["strategy"],
            len(bundles),
        )
    return resources
