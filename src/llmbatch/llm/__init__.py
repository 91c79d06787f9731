"""Run an LLM over a dataset with the API of Ray Data LLM.

```python
from llmbatch.llm import vLLMEngineProcessorConfig, build_llm_processor
```
"""

from llmbatch.llm.config import LLMProcessorConfig, vLLMEngineProcessorConfig
from llmbatch.llm.engine_stage import Superseded
from llmbatch.llm.processor import Processor, build_llm_processor
from llmbatch.llm.summary import RunSummary

__all__ = [
    "LLMProcessorConfig",
    "Processor",
    "RunSummary",
    "Superseded",
    "build_llm_processor",
    "vLLMEngineProcessorConfig",
]
