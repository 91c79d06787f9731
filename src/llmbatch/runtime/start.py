"""Starting the engine that engine arguments and ``concurrency`` ask for on this host."""

from __future__ import annotations

from llmbatch.engine.args import EngineArgs
from llmbatch.engine.config import resolve_config
from llmbatch.runtime.client import EngineClient
from llmbatch.runtime.local import start_one_engine
from llmbatch.runtime.recovery import RecoveryPolicy
from llmbatch.runtime.replica_plan import plan_replicas
from llmbatch.runtime.replicas import ReplicatedEngine
from llmbatch.runtime.restarting import RestartingEngine


def start_engine(
    args: EngineArgs,
    concurrency: int | tuple[int, int] = 1,
    recovery: RecoveryPolicy | None = None,
) -> EngineClient:
    """The engine replicas ``concurrency`` gives on this host (see `plan_replicas`): one engine
    driven from this process, or data-parallel replicas in worker processes. The config is
    resolved here once (a Hub model downloaded, a .gguf file converted) for every replica.

    With ``recovery`` (what a batch job uses), an engine that fails is started again and its
    requests run again, and one that stalls stops the job (see `RecoveryPolicy`); replicas
    always recover, by default with the default policy."""
    config = resolve_config(args)
    plan = plan_replicas(concurrency, config.device, config.tensor_parallel_size)
    if plan.num_replicas > 1:
        return ReplicatedEngine(config, plan, recovery)
    if recovery is None:
        return start_one_engine(config)
    return RestartingEngine(lambda: start_one_engine(config), recovery)
