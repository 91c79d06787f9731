"""Sampling parameters where vLLM keeps them: ``from llmbatch.sampling_params import ...``."""

from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.engine.structured_outputs_params import StructuredOutputsParams
from llmbatch.runtime.beam_search import BeamSearchParams

__all__ = ["BeamSearchParams", "SamplingParams", "StructuredOutputsParams"]
