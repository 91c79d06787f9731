"""The engine of pooling models that run with their transformers code (BERT-like encoders):
prompts batched by length, padded, one forward per step, no KV cache.

The paged, causal attention of `LLMEngine` cannot run an encoder, whose tokens each attend to
the whole text; this engine keeps `LLMEngine`'s interface (add_request / step) so that the
processor, `LLM` and replicas drive both alike.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from transformers import AutoTokenizer

from llmbatch.engine.args import EngineArgs
from llmbatch.engine.config import EngineConfig, resolve_config
from llmbatch.engine.llm_engine import EngineStats
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.outputs import RequestRejected
from llmbatch.engine.pooler import finish_pooled
from llmbatch.engine.pooling_outputs import PoolingOutput, PoolingRequestOutput
from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.engine.request import Request
from llmbatch.engine.request_builder import RequestBuilder
from llmbatch.models.encoder import EncoderModel
from llmbatch.models.loader import read_config


class EncoderEngine:
    """Runs a transformers pooling model over the requests added to it.

    Each step takes the longest waiting prompts, then every waiting prompt of similar length
    that fits: at most ``max_num_seqs`` prompts and ``max_num_batched_tokens`` tokens counting
    the padding (each prompt padded to the step's longest). The queue the processor keeps
    full (twice ``max_num_seqs`` prompts) is what the steps sort, so a step pads little.
    """

    num_replicas = 1

    def __init__(self, config: EngineConfig) -> None:
        assert config.pooler is not None and config.pooler.encoder
        hf_config = read_config(config.model, config.trust_remote_code)
        self.config = config
        self.max_model_len = config.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.tokenizer or config.model,
            trust_remote_code=config.trust_remote_code,
            revision=config.revision if config.tokenizer else None,
        )
        self.eos_token_ids: list[int] = []
        self._model: EncoderModel | None = EncoderModel(
            config.model,
            hf_config,
            config.pooler,
            config.dtype,
            config.torch_device,
            load_weights=config.load_format != "dummy",
            trust_remote_code=config.trust_remote_code,
            seed=config.seed,
            sep_token_id=self.tokenizer.sep_token_id,
        )
        self._builder = RequestBuilder(config, self._model, self.tokenizer, [], False)
        self._waiting: dict[str, Request] = {}
        self._stats = EngineStats()

    @classmethod
    def from_engine_args(cls, **kwargs: Any) -> EncoderEngine:
        return cls(resolve_config(EngineArgs.from_kwargs(**kwargs)))

    @property
    def stats(self) -> EngineStats:
        return dataclasses.replace(self._stats)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: PoolingParams,
        multi_modal: Any = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queues a pooling request; RequestRejected when it cannot run."""
        try:
            if request_id in self._waiting:
                raise RequestRejected(f"request_id {request_id!r} is already in the engine")
            if lora_request is not None:
                raise RequestRejected("LoRA adapters run on llmbatch's own model code only")
            if not isinstance(params, PoolingParams):
                raise RequestRejected(
                    f"this engine runs a pooling model ({self.config.pooler.task}): give "
                    f"PoolingParams, not {type(params).__name__}"
                )
            (request,) = self._builder.build(request_id, prompt, params, multi_modal)
        except RequestRejected as exc:
            exc.request_id = request_id
            raise
        self._waiting[request_id] = request
        self._stats.num_requests += 1

    def step(self) -> list[PoolingRequestOutput]:
        """Runs one padded batch; returns its requests' outputs."""
        if not self._waiting:
            return []
        start = time.perf_counter()
        batch = self._next_batch()
        for request in batch:
            del self._waiting[request.request_id]
            request.metrics.first_scheduled_time = time.time()
        pooled = self._model([r.token_ids for r in batch])
        values, widths = finish_pooled(pooled, batch, self.config.pooler)
        values = values.cpu()
        outputs = []
        for request, row, width in zip(batch, values, widths):
            request.finish_pooling()
            outputs.append(
                PoolingRequestOutput(
                    request_id=request.request_id,
                    outputs=PoolingOutput(row[:width].clone()),
                    prompt_token_ids=request.token_ids,
                    prompt=request.prompt,
                    metrics=request.metrics,
                )
            )
            self._stats.num_finished += 1
            self._stats.num_prompt_tokens += request.num_prompt_tokens
        self._stats.num_steps += 1
        self._stats.step_seconds += time.perf_counter() - start
        return outputs

    def _next_batch(self) -> list[Request]:
        """The longest waiting prompt and the next longest after it, while the padded batch
        fits the budget."""
        ordered = sorted(self._waiting.values(), key=lambda r: r.num_prompt_tokens, reverse=True)
        width = ordered[0].num_prompt_tokens
        count = min(
            len(ordered),
            self.config.max_num_seqs,
            max(1, self.config.max_num_batched_tokens // width),
        )
        return ordered[:count]

    def has_unfinished(self) -> bool:
        return bool(self._waiting)

    def num_unfinished(self) -> int:
        return len(self._waiting)

    def abort_request(self, request_id: str) -> bool:
        return self._waiting.pop(request_id, None) is not None

    def close(self) -> None:
        self._waiting.clear()
        self._model = None
        self._builder.model = None

    def __enter__(self) -> EncoderEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
