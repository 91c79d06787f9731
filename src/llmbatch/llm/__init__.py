"""Run an LLM over a dataset with the API of Ray Data LLM (2.60 and the older one).

```python
from llmbatch.llm import vLLMEngineProcessorConfig, build_processor  # or build_llm_processor
```
"""

from llmbatch.llm.config import LLMProcessorConfig, ProcessorConfig, vLLMEngineProcessorConfig
from llmbatch.llm.engine_stage import Superseded
from llmbatch.llm.error_policy import RowFailed
from llmbatch.llm.http_config import HttpRequestProcessorConfig
from llmbatch.llm.processor import Processor, build_llm_processor, build_processor
from llmbatch.llm.sglang import SGLangEngineProcessorConfig
from llmbatch.llm.stage_configs import (
    ChatTemplateStageConfig,
    DetokenizeStageConfig,
    HttpRequestStageConfig,
    PrepareMultimodalStageConfig,
    TokenizerStageConfig,
)
from llmbatch.llm.summary import RunSummary

__all__ = [
    "ChatTemplateStageConfig",
    "DetokenizeStageConfig",
    "HttpRequestProcessorConfig",
    "HttpRequestStageConfig",
    "LLMProcessorConfig",
    "PrepareMultimodalStageConfig",
    "Processor",
    "ProcessorConfig",
    "RowFailed",
    "RunSummary",
    "SGLangEngineProcessorConfig",
    "Superseded",
    "TokenizerStageConfig",
    "build_llm_processor",
    "build_processor",
    "vLLMEngineProcessorConfig",
]
