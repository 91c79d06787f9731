"""LLMEngine: add requests, step, collect finished outputs."""

from __future__ import annotations

import dataclasses
import numbers
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmbatch.engine.args import EngineArgs
from llmbatch.engine.block_manager import BlockManager
from llmbatch.engine.config import EngineConfig, resolve_config
from llmbatch.engine.detokenizer import IncrementalDetokenizer
from llmbatch.engine.kv_cache import measure_num_blocks
from llmbatch.engine.model_runner import LaunchedStep, ModelRunner
from llmbatch.engine.multimodal import MultiModalInputs, RequestImages
from llmbatch.engine.outputs import RequestOutput, RequestRejected
from llmbatch.engine.request import Request
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.engine.scheduler import Scheduler
from llmbatch.models import LoadedModel, load_model


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started. Prompt tokens count every prompt token, cached or not."""

    num_requests: int = 0
    num_finished: int = 0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    step_seconds: float = 0.0


def load_model_for(config: EngineConfig) -> LoadedModel:
    """The model `config` names, on its device and dtype (this rank's shard inside
    ``sharded_over``)."""
    return load_model(
        config.model,
        dtype=config.dtype,
        device=config.device,
        attention_backend=config.attention_backend,
        trust_remote_code=config.trust_remote_code,
        load_format=config.load_format,
        seed=config.seed,
        model_impl=config.model_impl,
    )


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
        self._scheduler = Scheduler(config.scheduler, self._block_manager)
        self._requests: dict[str, Request] = {}
        self._stats = EngineStats()
        self._in_flight: LaunchedStep | None = None

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
        return dataclasses.replace(self._stats)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        multi_modal: MultiModalInputs | None = None,
    ) -> None:
        """Queues a request. Raises RequestRejected, leaving the engine unchanged, when the
        request cannot run (duplicate id, empty or too long prompt, bad token ids or params,
        images the model cannot take).

        `multi_modal` holds the request's images, processed with the model's processor
        (`llmbatch.engine.multimodal.process_images`, which also expands the prompt's image
        placeholders)."""
        try:
            request = self._build_request(request_id, prompt, params, multi_modal)
        except RequestRejected as exc:
            exc.request_id = request_id
            raise
        self._requests[request_id] = request
        self._scheduler.add(request)
        self._stats.num_requests += 1

    def _build_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        multi_modal: MultiModalInputs | None,
    ) -> Request:
        if not isinstance(request_id, str):
            raise RequestRejected(f"request_id must be a str, got {type(request_id).__name__}")
        if request_id in self._requests:
            raise RequestRejected(f"request_id {request_id!r} is already in the engine")
        if not isinstance(params, SamplingParams):
            raise RequestRejected(
                f"params must be a SamplingParams, got {type(params).__name__} "
                "(use SamplingParams.from_dict for a dict)"
            )
        if self.tokenizer is None and (isinstance(prompt, str) or params.detokenize):
            raise RequestRejected(
                "this model folder has no tokenizer: give token ids with detokenize=False, "
                "or pass tokenizer=... in the engine arguments"
            )
        token_ids = self._tokenize(prompt)
        if params.truncate_prompt_tokens is not None:
            token_ids = token_ids[-params.truncate_prompt_tokens :]
        self._check_request(token_ids, params)
        images = self._request_images(token_ids, multi_modal)
        return Request(
            request_id=request_id,
            prompt=prompt if isinstance(prompt, str) else None,
            token_ids=token_ids,
            params=params,
            eos_token_ids=frozenset(self.eos_token_ids),
            max_model_len=self.max_model_len,
            generator=self._request_generator(params),
            detokenizer=(
                IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens)
                if params.detokenize
                else None
            ),
            images=images,
        )

    def step(self) -> list[RequestOutput]:
        """Runs one scheduler step; returns the requests that finished in it.

        With async_scheduling, the step is launched before the previous one is read back, so
        the device never waits for the host; a request's finish is then reported one step late.
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
        """Drops a queued or running request; returns False when no such request is in the engine."""
        request = self._scheduler.abort(request_id)
        if request is None:
            return False
        del self._requests[request_id]
        return True

    def close(self) -> None:
        """Releases the model and the KV cache (GPU memory goes back to the allocator)."""
        self._in_flight = None
        self._requests.clear()
        self._scheduler.waiting.clear()
        self._scheduler.running.clear()
        self._runner.close()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _resolve(self, step: LaunchedStep) -> list[RequestOutput]:
        """Appends a launched step's tokens; returns the requests they finish. Requests that
        finished (or were aborted) after the step was launched ignore their token."""
        result = self._runner.resolve(step)
        finished: list[RequestOutput] = []
        for request, token_id, logprobs in zip(result.requests, result.token_ids, result.logprobs):
            request.num_pending -= 1
            if request.is_finished:
                continue
            self._stats.num_generated_tokens += 1
            if request.append_token(token_id, logprobs):
                self._scheduler.finish(request)
                finished.append(self._retire(request))
        return finished

    def _retire(self, request: Request) -> RequestOutput:
        del self._requests[request.request_id]
        self._stats.num_finished += 1
        self._stats.num_prompt_tokens += request.num_prompt_tokens
        self._stats.num_cached_tokens += max(request.num_cached_tokens, 0)
        return request.to_output()

    def _tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer.encode(prompt))
        if isinstance(prompt, list | tuple) and all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt
        ):
            return [int(t) for t in prompt]
        raise RequestRejected(
            f"prompt must be a str or a list of token ids (int), got {type(prompt).__name__}"
        )

    def _check_request(self, token_ids: list[int], params: SamplingParams) -> None:
        max_model_len = self.max_model_len
        if not token_ids:
            raise RequestRejected("the prompt is empty; give at least one token")
        if len(token_ids) > max_model_len:
            raise RequestRejected(
                f"the prompt has {len(token_ids)} tokens, more than max_model_len={max_model_len}; "
                "shorten it, set truncate_prompt_tokens, or raise max_model_len"
            )
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestRejected(
                f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})"
            )
        if params.logprobs is not None and params.logprobs > self.config.max_logprobs:
            raise RequestRejected(
                f"logprobs={params.logprobs} exceeds max_logprobs={self.config.max_logprobs} "
                "(raise max_logprobs in the engine arguments)"
            )

    def _request_images(
        self, token_ids: list[int], multi_modal: MultiModalInputs | None
    ) -> RequestImages | None:
        if multi_modal is None:
            return None
        if not isinstance(multi_modal, MultiModalInputs):
            raise RequestRejected(
                f"multi_modal must be a MultiModalInputs, got {type(multi_modal).__name__}"
            )
        model = self._runner.model
        if not hasattr(model, "encode_images"):
            raise RequestRejected(
                f"this model ({type(model).__name__}) takes no images; use a vision-language "
                "model such as Qwen2.5-VL"
            )
        if self.config.tensor_parallel_size > 1:
            raise RequestRejected(
                "images need tensor_parallel_size=1 (scale vision jobs with data-parallel "
                "replicas: concurrency=N)"
            )
        try:
            return RequestImages.build(model, token_ids, multi_modal)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None

    def _request_generator(self, params: SamplingParams) -> torch.Generator | None:
        """A seeded request's own generator, where the sampler draws from generators (the
        Gumbel race keys its noise by seed and position instead)."""
        if params.seed is None or params.is_greedy or self._runner.sampler.gumbel_race:
            return None
        return torch.Generator(device=self._runner.device).manual_seed(params.seed)
