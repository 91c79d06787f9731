"""llmbatch: fast offline LLM inference over datasets."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from llmbatch.engine.sampling_params import SamplingParams
    from llmbatch.engine.structured_outputs_params import StructuredOutputsParams
    from llmbatch.runtime.llm import LLM

# Imported on first use: `import llmbatch` stays fast, without torch or transformers.
_LAZY_EXPORTS = {
    "LLM": "llmbatch.runtime.llm",
    "SamplingParams": "llmbatch.engine.sampling_params",
    "StructuredOutputsParams": "llmbatch.engine.structured_outputs_params",
    "BeamSearchParams": "llmbatch.runtime.beam_search",
    "Logprob": "llmbatch.engine.outputs",
    "RequestOutput": "llmbatch.engine.outputs",
    "CompletionOutput": "llmbatch.engine.outputs",
    "PoolingParams": "llmbatch.engine.pooling_params",
    "PoolingOutput": "llmbatch.engine.pooling_outputs",
    "PoolingRequestOutput": "llmbatch.engine.pooling_outputs",
    "EmbeddingOutput": "llmbatch.engine.pooling_outputs",
    "EmbeddingRequestOutput": "llmbatch.engine.pooling_outputs",
    "ClassificationOutput": "llmbatch.engine.pooling_outputs",
    "ClassificationRequestOutput": "llmbatch.engine.pooling_outputs",
    "ScoringOutput": "llmbatch.engine.pooling_outputs",
    "ScoringRequestOutput": "llmbatch.engine.pooling_outputs",
    "LoRARequest": "llmbatch.engine.lora_request",
}

__all__ = [
    "LLM",
    "BeamSearchParams",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "CompletionOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "LoRARequest",
    "Logprob",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "RequestOutput",
    "SamplingParams",
    "ScoringOutput",
    "ScoringRequestOutput",
    "StructuredOutputsParams",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        return getattr(import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmbatch' has no attribute {name!r}")
