"""One engine driven from this process."""

from __future__ import annotations

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.encoder_engine import EncoderEngine
from llmbatch.engine.llm_engine import LLMEngine
from llmbatch.runtime.device_memory import check_model_fits
from llmbatch.runtime.tensor_parallel.driver import TensorParallelEngine


def start_one_engine(config: EngineConfig) -> LLMEngine | EncoderEngine:
    """The engine in this process, or with tensor_parallel_size > 1 this process as the driver
    of a group of worker processes; a pooling model without llmbatch code runs on its
    transformers code (`EncoderEngine`). Weights that cannot fit the GPU are an error before
    any is loaded."""
    if config.pooler is not None and config.pooler.encoder:
        return EncoderEngine(config)
    check_model_fits(config)
    if config.tensor_parallel_size > 1:
        return TensorParallelEngine(config)
    return LLMEngine.from_config(config)
