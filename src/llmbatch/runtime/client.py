"""What every engine offers the stages and `LLM`, wherever it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmbatch.engine.config import EngineConfig
    from llmbatch.engine.lora_request import LoRARequest
    from llmbatch.engine.multimodal import MultiModalInputs
    from llmbatch.engine.outputs import RequestOutput, RequestRejected
    from llmbatch.engine.pooling_outputs import PoolingRequestOutput
    from llmbatch.engine.pooling_params import PoolingParams
    from llmbatch.engine.sampling_params import SamplingParams


class EngineClient(Protocol):
    """A streaming engine: `add_request`, then `step` until `has_unfinished()` is False.

    Implemented by `llmbatch.engine.llm_engine.LLMEngine` (one process), `EncoderEngine` (a
    pooling model on its transformers code), `TensorParallelEngine` (a tensor-parallel group
    driven from this process) and `ReplicatedEngine` (data-parallel replicas in worker
    processes). A request with PoolingParams (on a pooling model) finishes as a
    PoolingRequestOutput. A request that cannot run is rejected with a
    `RequestRejected` naming it: raised by `add_request`, or returned by `step` where the
    engine only checks the request later (replicas).
    """

    config: EngineConfig
    """The resolved config (of the first replica, for replicas)."""
    tokenizer: PreTrainedTokenizerBase | None

    @property
    def num_replicas(self) -> int: ...

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        multi_modal: MultiModalInputs | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None: ...

    def step(self) -> list[RequestOutput | PoolingRequestOutput | RequestRejected]:
        """Runs the engine a little; returns the requests finished (or rejected) since."""
        ...

    def abort_request(self, request_id: str) -> bool: ...

    def has_unfinished(self) -> bool: ...

    def num_unfinished(self) -> int: ...

    def close(self) -> None:
        """Stops the engine and releases its memory (and processes)."""
        ...
