"""Turning what a caller gives (prompt, sampling params, images) into the engine's sequences,
checked: a request the engine cannot run is rejected here, before it takes any resource."""

from __future__ import annotations

import numbers
from dataclasses import replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.detokenizer import IncrementalDetokenizer
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.multimodal import MultiModalInputs, RequestImages
from llmbatch.engine.outputs import RequestRejected
from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.engine.request import Request
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.engine.structured_outputs import GrammarCompiler


class RequestBuilder:
    """Builds the sequences of a request for one engine's model and tokenizer."""

    def __init__(
        self,
        config: EngineConfig,
        model: Any,
        tokenizer: PreTrainedTokenizerBase | None,
        eos_token_ids: list[int],
        gumbel_race: bool,
    ) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.vocab_size: int = model.vocab_size
        self.hidden_size: int = model.hidden_size
        self._gumbel_race = gumbel_race
        self._grammars: GrammarCompiler | None = None

    def build(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        multi_modal: MultiModalInputs | None,
        lora: LoRARequest | None = None,
    ) -> list[Request]:
        """The request's ``n`` sequences: its samples share the prompt (computed once: the later
        ones find its KV blocks in the prefix cache) and sample independently, each seeded
        ``seed + index`` when the request has a seed. A pooling request is one sequence."""
        if not isinstance(request_id, str):
            raise RequestRejected(f"request_id must be a str, got {type(request_id).__name__}")
        if lora is not None and not isinstance(lora, LoRARequest):
            raise RequestRejected(f"lora_request must be a LoRARequest, got {type(lora).__name__}")
        pooler = self.config.pooler
        if isinstance(params, PoolingParams):
            return [self._pooling_request(request_id, prompt, params, multi_modal, lora)]
        if pooler is not None and isinstance(params, SamplingParams):
            raise RequestRejected(
                f"this engine runs a pooling model ({pooler.task}): give PoolingParams "
                "(LLM.embed / classify / score), or start the engine with runner='generate' "
                "for text"
            )
        if not isinstance(params, SamplingParams):
            raise RequestRejected(
                f"params must be a SamplingParams or PoolingParams, got {type(params).__name__} "
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
        bad_words = self._bad_word_tokens(params)
        sequences = []
        for index in range(params.n):
            sample = params
            if params.n > 1:
                seed = None if params.seed is None else params.seed + index
                # the first sample alone scores the prompt: the others reuse its cached blocks
                prompt_logprobs = params.prompt_logprobs if index == 0 else None
                sample = replace(params, n=1, seed=seed, prompt_logprobs=prompt_logprobs)
            sequences.append(
                Request(
                    request_id=request_id if params.n == 1 else f"{request_id}\x1f{index}",
                    prompt=prompt if isinstance(prompt, str) else None,
                    token_ids=list(token_ids),
                    params=sample,
                    eos_token_ids=frozenset(self.eos_token_ids),
                    max_model_len=self.config.max_model_len,
                    generator=self._request_generator(sample),
                    detokenizer=(
                        IncrementalDetokenizer(
                            self.tokenizer, token_ids, params.skip_special_tokens
                        )
                        if params.detokenize
                        else None
                    ),
                    images=self._request_images(token_ids, multi_modal),
                    grammar=self._grammar(params),
                    bad_words=bad_words,
                    output_id=request_id,
                    index=index,
                    lora=lora,
                )
            )
        return sequences

    def _pooling_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: PoolingParams,
        multi_modal: MultiModalInputs | None,
        lora: LoRARequest | None,
    ) -> Request:
        pooler = self.config.pooler
        if pooler is None:
            raise RequestRejected(
                "this engine runs a generative model; start it with runner='pooling' (and "
                "convert='embed' or 'classify') for embeddings or classification"
            )
        if multi_modal is not None:
            raise RequestRejected("pooling requests take text (or token ids) only")
        if params.task in ("embed", "classify") and params.task != pooler.task:
            raise RequestRejected(
                f"a {params.task} request cannot run on this {pooler.task} model "
                f"(use LLM.{pooler.task})"
            )
        try:
            params = params.for_task(pooler.task)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None
        self._check_dimensions(params.dimensions)
        if self.tokenizer is None and isinstance(prompt, str):
            raise RequestRejected("this model folder has no tokenizer: give token ids")
        token_ids = self._tokenize(prompt)
        if params.truncate_prompt_tokens is not None:
            token_ids = token_ids[-params.truncate_prompt_tokens :]
        self._check_request(token_ids, SamplingParams())
        return Request(
            request_id=request_id,
            prompt=prompt if isinstance(prompt, str) else None,
            token_ids=token_ids,
            params=SamplingParams(detokenize=False),
            eos_token_ids=frozenset(),
            max_model_len=self.config.max_model_len,
            pooling=params,
            pools_every_token=pooler.reads_every_token,
            lora=lora,
        )

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        pooler, hidden = self.config.pooler, self.hidden_size
        if dimensions > hidden:
            raise RequestRejected(f"dimensions={dimensions} exceeds the model's {hidden}")
        allowed = pooler.matryoshka_dimensions
        if allowed is not None and dimensions not in allowed:
            raise RequestRejected(
                f"dimensions={dimensions}: this model is trained for {list(allowed)} only"
            )

    def _bad_word_tokens(self, params: SamplingParams) -> list[list[int]] | None:
        """Each bad word's tokens, alone and after a space (as it appears mid-text)."""
        if not params.bad_words:
            return None
        if self.tokenizer is None:
            raise RequestRejected("bad_words need the model's tokenizer")
        words: list[list[int]] = []
        for word in params.bad_words:
            for text in (word, " " + word.lstrip()):
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
                if ids and ids not in words:
                    words.append(ids)
        return words

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
        max_model_len = self.config.max_model_len
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
        model = self.model
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

    def _grammar(self, params: SamplingParams) -> Any:
        """The request's grammar matcher (None without structured outputs); its constraint is
        compiled once per engine, on the first request that gives it."""
        if params.structured_outputs is None:
            return None
        if self.tokenizer is None:
            raise RequestRejected(
                "structured outputs need the model's tokenizer: pass tokenizer=... in the "
                "engine arguments"
            )
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids)
        try:
            return self._grammars.matcher(params.structured_outputs)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None

    def _request_generator(self, params: SamplingParams) -> torch.Generator | None:
        """A seeded request's own generator, where the sampler draws from generators (the
        Gumbel race keys its noise by seed and position instead)."""
        if params.seed is None or params.is_greedy or self._gumbel_race:
            return None
        return torch.Generator(device=self.config.torch_device).manual_seed(params.seed)
