"""LLMEngine: add requests, step, collect finished outputs."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmbatch.engine.args import EngineArgs
from llmbatch.engine.block_manager import BlockManager
from llmbatch.engine.config import EngineConfig, resolve_config
from llmbatch.engine.kv_cache import measure_num_blocks
from llmbatch.engine.lora_manager import LoRAManager
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.model_runner import LaunchedStep, ModelRunner
from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.engine.outputs import CompletionOutput, RequestOutput, RequestRejected
from llmbatch.engine.pooler import PooledStep
from llmbatch.engine.pooling_outputs import PoolingOutput, PoolingRequestOutput
from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.engine.request import Request
from llmbatch.engine.request_builder import RequestBuilder
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.engine.scheduler import Scheduler
from llmbatch.models import LoadedModel, load_model
from llmbatch.models.lora_adapter import IncompatibleAdapter, add_lora_layers


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started, and gauges as of `LLMEngine.stats`. Prompt tokens
    count every prompt token of finished requests, cached or not (the cached ones in
    `num_cached_tokens`: the prefix cache's hit rate is their ratio). `kv_cache_usage` is the
    share of KV blocks held by requests (blocks that only keep a cached prefix count as free)."""

    num_requests: int = 0
    num_finished: int = 0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    step_seconds: float = 0.0
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0


def load_model_for(config: EngineConfig) -> LoadedModel:
    """The model `config` names, on its device and dtype (this rank's shard inside
    ``sharded_over``), with its LoRA slots when ``enable_lora`` (allocated before the KV cache
    is measured, so that it counts them)."""
    loaded = load_model(
        config.model,
        dtype=config.dtype,
        device=config.device,
        attention_backend=config.attention_backend,
        trust_remote_code=config.trust_remote_code,
        load_format=config.load_format,
        seed=config.seed,
        model_impl=config.model_impl,
        pooler=config.pooler,
        quantization=config.quantization,
    )
    if config.enable_lora:
        max_tokens = max(config.max_num_batched_tokens, config.max_num_seqs)
        add_lora_layers(loaded.model, config.max_loras, config.max_lora_rank, max_tokens)
    return loaded


@dataclass(slots=True)
class _Samples:
    """The finished sequences of a request with n > 1: index -> sequence and completion."""

    n: int
    done: dict[int, tuple[Request, CompletionOutput]] = field(default_factory=dict)


class LLMEngine:
    """Continuous-batching engine over one model in this process: `add_request`, then `step`
    until `has_unfinished()` is False; each step returns the requests that finished in it.

    Built from a final config (its KV cache measured) and the loaded model; `from_config` and
    `from_engine_args` do both in this process. Engines of several processes (tensor- or
    data-parallel) start through `llmbatch.runtime.start_engine`.
    """

    num_replicas = 1

    def __init__(self, config: EngineConfig, loaded: LoadedModel) -> None:
        if config.num_kv_blocks is None:
            raise ValueError("the config's KV cache is not measured yet: use from_config")
        self.config = config
        self.tokenizer: PreTrainedTokenizerBase | None = (
            AutoTokenizer.from_pretrained(
                config.tokenizer,
                trust_remote_code=config.trust_remote_code,
                revision=config.revision,
            )
            if config.tokenizer is not None
            else loaded.tokenizer
        )
        self.eos_token_ids: list[int] = list(loaded.eos_token_ids)
        self.vocab_size: int = loaded.model.vocab_size
        self.max_model_len = config.max_model_len
        self._runner = ModelRunner(loaded.model, config)
        self._block_manager = BlockManager(
            config.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        self._adapters = LoRAManager(loaded.model, config) if config.enable_lora else None
        self._scheduler = Scheduler(config.scheduler, self._block_manager, self._adapters)
        self._requests: dict[str, Request] = {}
        self._stats = EngineStats()
        self._in_flight: LaunchedStep | None = None
        self._builder = RequestBuilder(
            config,
            loaded.model,
            self.tokenizer,
            self.eos_token_ids,
            self._runner.sampler.gumbel_race,
        )
        # the samples of requests with n > 1, as they finish
        self._samples: dict[str, _Samples] = {}

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        """Loads the model in this process, measures the KV cache and builds the engine."""
        if config.tensor_parallel_size > 1:
            raise ValueError(
                f"tensor_parallel_size={config.tensor_parallel_size} runs in several processes: "
                "start it with llmbatch.runtime.start_engine (or use llmbatch.LLM)"
            )
        loaded = load_model_for(config)
        return cls(config.with_kv_cache(measure_num_blocks(loaded.model, config)), loaded)

    @classmethod
    def from_engine_args(cls, **kwargs: Any) -> LLMEngine:
        """Builds an engine in this process from vLLM-named engine kwargs (`model=...` required)."""
        return cls.from_config(resolve_config(EngineArgs.from_kwargs(**kwargs)))

    @property
    def num_kv_blocks(self) -> int:
        return self.config.num_kv_blocks

    @property
    def stats(self) -> EngineStats:
        """The counters, with the gauges read now (cheap: read from another thread while the
        engine steps, never by the steps themselves)."""
        blocks = self._block_manager
        return dataclasses.replace(
            self._stats,
            num_running=len(self._scheduler.running),
            num_waiting=len(self._scheduler.waiting),
            kv_cache_usage=(blocks.num_blocks - blocks.num_free_blocks) / max(blocks.num_blocks, 1),
        )

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        multi_modal: MultiModalInputs | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queues a request. Raises RequestRejected, leaving the engine unchanged, when the
        request cannot run (duplicate id, empty or too long prompt, bad token ids or params,
        images the model cannot take, a missing or incompatible LoRA adapter).

        `params`: SamplingParams for text, PoolingParams on a pooling model (its output is a
        PoolingRequestOutput). `multi_modal` holds the request's images, processed with the
        model's processor (`llmbatch.engine.multimodal.process_images`, which also expands the
        prompt's image placeholders). `lora_request` runs it with a LoRA adapter
        (``enable_lora``)."""
        try:
            if request_id in self._requests or request_id in self._samples:
                raise RequestRejected(f"request_id {request_id!r} is already in the engine")
            sequences = self._builder.build(request_id, prompt, params, multi_modal, lora_request)
            if lora_request is not None:
                self._check_adapter(lora_request)
        except RequestRejected as exc:
            exc.request_id = request_id
            raise
        if len(sequences) > 1:
            self._samples[request_id] = _Samples(len(sequences))
        for sequence in sequences:
            self._requests[sequence.request_id] = sequence
            self._scheduler.add(sequence)
        self._stats.num_requests += 1

    def _check_adapter(self, lora: LoRARequest) -> None:
        if self._adapters is None:
            raise RequestRejected(
                f"the request names LoRA adapter {lora.lora_name!r}, but the engine runs "
                "without LoRA: set enable_lora=True (and max_lora_rank, max_loras)"
            )
        try:
            self._adapters.check(lora)
        except IncompatibleAdapter as exc:
            raise RequestRejected(str(exc)) from None

    def step(self) -> list[RequestOutput | PoolingRequestOutput]:
        """Runs one scheduler step; returns the requests that finished in it.

        With async_scheduling, the step is launched before the previous one is read back, so
        the device never waits for the host; a request's finish is then reported one step late.
        A step with constrained requests samples once the previous step's tokens are read back
        (its grammars' masks depend on them), while the device runs its forward.
        """
        previous, self._in_flight = self._in_flight, None
        finished: list[RequestOutput] = []
        if previous is not None and (not self.config.async_scheduling or previous.needs_history):
            finished += self._resolve(previous)
            previous = None
        if not self._scheduler.has_unfinished():
            return finished + (self._resolve(previous) if previous is not None else [])
        start = time.perf_counter()
        batch = self._scheduler.schedule()
        self._stats.num_preemptions += batch.num_preempted
        if batch.requests:
            launched = self._runner.launch(batch, previous)
            for request, num_new in zip(batch.requests, batch.num_new_tokens):
                request.num_computed_tokens += num_new
            for row, request in enumerate(launched.requests):
                request.num_pending += 1
                request.pending_row = row
            self._in_flight = launched
            self._stats.num_steps += 1
        elif previous is None:
            raise RuntimeError("the scheduler found no work although requests are waiting")
        if previous is not None:
            finished += self._resolve(previous)
        if self._in_flight is not None and self._in_flight.logits is not None:
            # its grammars have now consumed the previous step's tokens: their masks exist
            self._runner.sample(self._in_flight)
        if not self.config.async_scheduling and self._in_flight is not None:
            finished += self._resolve(self._in_flight)
            self._in_flight = None
        self._stats.step_seconds += time.perf_counter() - start
        return finished

    def has_unfinished(self) -> bool:
        return self._in_flight is not None or self._scheduler.has_unfinished()

    def num_unfinished(self) -> int:
        return self._scheduler.num_unfinished()

    def abort_request(self, request_id: str) -> bool:
        """Drops a queued or running request (all its samples); returns False when no such
        request is in the engine."""
        done = self._samples.pop(request_id, None)
        if done is None:
            ids = [request_id]
        else:
            ids = [r.request_id for r in self._requests.values() if r.output_id == request_id]
        aborted = False
        for sequence_id in ids:
            if self._scheduler.abort(sequence_id) is not None:
                del self._requests[sequence_id]
                aborted = True
        return aborted or done is not None

    def close(self) -> None:
        """Releases the model and the KV cache (GPU memory goes back to the allocator)."""
        self._in_flight = None
        self._requests.clear()
        self._scheduler.waiting.clear()
        self._scheduler.running.clear()
        self._runner.close()
        self._builder.model = None  # the last references to the model
        self._adapters = self._scheduler.adapters = None

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _resolve(self, step: LaunchedStep) -> list[RequestOutput | PoolingRequestOutput]:
        """Appends a launched step's tokens; returns the requests they finish. Requests that
        finished (or were aborted) after the step was launched ignore their token."""
        finished: list[RequestOutput | PoolingRequestOutput] = []
        if step.pooled is not None:
            finished += self._finish_pooled(step.pooled)
        result = self._runner.resolve(step)
        for request, token_id, logprobs in zip(result.requests, result.token_ids, result.logprobs):
            request.num_pending -= 1
            if request.is_finished:
                continue
            self._stats.num_generated_tokens += 1
            if request.append_token(token_id, logprobs):
                self._scheduler.finish(request)
                output = self._retire(request)
                if output is not None:
                    finished.append(output)
        return finished

    def _finish_pooled(self, pooled: PooledStep) -> list[PoolingRequestOutput]:
        """Ends the pooling requests of a step (their KV blocks are released now); requests
        aborted since the step was launched are skipped."""
        outputs = []
        for request, data in zip(pooled.requests, pooled.results()):
            if request.is_finished:
                continue
            request.finish_pooling()
            self._scheduler.finish(request)
            self._count_finished(request)
            outputs.append(
                PoolingRequestOutput(
                    request_id=request.request_id,
                    outputs=PoolingOutput(data.clone()),
                    prompt_token_ids=request.token_ids,
                    num_cached_tokens=max(request.num_cached_tokens, 0),
                    prompt=request.prompt,
                    num_preemptions=request.num_preemptions,
                    metrics=request.metrics,
                )
            )
        return outputs

    def _count_finished(self, request: Request) -> None:
        del self._requests[request.request_id]
        self._stats.num_finished += 1
        self._stats.num_prompt_tokens += request.num_prompt_tokens
        self._stats.num_cached_tokens += max(request.num_cached_tokens, 0)

    def _retire(self, request: Request) -> RequestOutput | None:
        """The request's output once its last sequence finishes (None before that)."""
        self._count_finished(request)
        decode = self._decode_token if request.params.detokenize else None
        completion = request.to_completion(decode)
        if request.output_id == request.request_id:
            return request.to_output(
                request.output_id, [completion], max(request.num_cached_tokens, 0)
            )
        samples = self._samples[request.output_id]
        samples.done[request.index] = (request, completion)
        if len(samples.done) < samples.n:
            return None
        del self._samples[request.output_id]
        ordered = [samples.done[i] for i in range(samples.n)]
        cached = sum(sequence.num_cached_tokens for sequence, _ in ordered)
        return ordered[0][0].to_output(request.output_id, [c for _, c in ordered], cached)

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.convert_tokens_to_string(
            [self.tokenizer.convert_ids_to_tokens(token_id)]
        )
