"""LLM: vLLM's offline entry point (`generate`, `chat`) over an engine."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from llmbatch.engine.args import EngineArgs
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.multimodal import MultiModalInputs, process_images
from llmbatch.engine.outputs import RequestOutput
from llmbatch.engine.pooling_outputs import PoolingRequestOutput
from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.models.processor import load_image_processor
from llmbatch.runtime.beam_search import BeamSearchOutput, BeamSearchParams, beam_search
from llmbatch.runtime.client import EngineClient
from llmbatch.runtime.pooling_api import LoRAArg, PoolingAPI
from llmbatch.runtime.start import start_engine

Prompt = str | list[int] | dict[str, Any]
PROMPT_KEYS = ("prompt", "prompt_token_ids", "multi_modal_data")
Message = dict[str, Any]


class LLM(PoolingAPI):
    """Runs batches of prompts or chat conversations through one engine.

    `LLM(model, **engine_kwargs)` takes vLLM's engine argument names (see EngineArgs); with
    tensor_parallel_size > 1 the engine drives a group of worker processes. A pooling model
    (``runner="pooling"``, or a checkpoint that is one) answers ``embed``, ``classify``,
    ``score`` and ``encode`` instead of ``generate``.
    """

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        self.llm_engine: EngineClient = start_engine(
            EngineArgs.from_kwargs(model=model, **engine_kwargs)
        )
        self._ids = itertools.count()
        self._processor: Any = None

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        lora_request: LoRAArg = None,
    ) -> list[RequestOutput]:
        """One output per prompt, in input order. A prompt is a str, a list of token ids, or a
        dict as in vLLM: ``{"prompt": text}`` or ``{"prompt_token_ids": ids}``, and for
        vision-language models ``{"prompt": text, "multi_modal_data": {"image": images}}`` with
        one PIL image (or a list) for the image placeholders of the text, in order.
        ``lora_request``: a LoRARequest for every prompt, or one (or None) per prompt
        (``enable_lora``)."""
        prompt_list = _as_prompt_list(prompts)
        return self._run(
            prompt_list,
            _params_per_prompt(sampling_params, len(prompt_list)),
            use_tqdm,
            lora_request,
        )

    def chat(
        self,
        messages: list[Message] | Sequence[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        lora_request: LoRAArg = None,
    ) -> list[RequestOutput]:
        """One output per conversation (a list of {"role", "content"} messages), in input order.
        ``chat_template_kwargs`` go to the template (e.g. Qwen3's ``enable_thinking=False``)."""
        conversations = _as_conversation_list(messages)
        tokenizer = self.llm_engine.tokenizer
        texts: list[str] = []
        for index, conversation in enumerate(conversations):
            try:
                texts.append(
                    tokenizer.apply_chat_template(
                        conversation,
                        chat_template=chat_template,
                        add_generation_prompt=add_generation_prompt,
                        tokenize=False,
                        **(chat_template_kwargs or {}),
                    )
                )
            except Exception as exc:
                raise ValueError(f"conversation {index}: chat template failed: {exc}") from exc
        # The template already holds any BOS token; encoding must not add another.
        prompt_ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        outputs = self._run(
            prompt_ids, _params_per_prompt(sampling_params, len(texts)), use_tqdm, lora_request
        )
        for output, text in zip(outputs, texts):
            output.prompt = text
        return outputs

    def beam_search(
        self, prompts: Prompt | Sequence[Prompt], params: BeamSearchParams
    ) -> list[BeamSearchOutput]:
        """The best ``params.beam_width`` sequences of each prompt (text, token ids or a dict
        with either), by transformers' beam search rules; one BeamSearchOutput per prompt."""
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be a BeamSearchParams, got {type(params).__name__}")
        engine = self.llm_engine
        tokenizer = engine.tokenizer
        ids = []
        for index, prompt in enumerate(_as_prompt_list(prompts)):
            if isinstance(prompt, dict):
                if "multi_modal_data" in prompt:
                    raise ValueError(f"prompt {index}: beam search takes text prompts only")
                prompt = prompt.get("prompt_token_ids", prompt.get("prompt"))
            if isinstance(prompt, str):
                if tokenizer is None:
                    raise ValueError("text prompts need the model's tokenizer; give token ids")
                prompt = tokenizer.encode(prompt)
            ids.append(list(prompt))
        candidates = max(2, 1 + len(engine.eos_token_ids)) * params.beam_width
        if candidates > engine.config.max_logprobs:
            raise ValueError(
                f"beam_width={params.beam_width} ranks {candidates} candidates a step, more than "
                f"max_logprobs={engine.config.max_logprobs}: raise max_logprobs in the engine "
                "arguments"
            )
        return beam_search(engine, ids, params, engine.eos_token_ids, tokenizer)

    def close(self) -> None:
        self.llm_engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _as_prompts(self, prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
        return _as_prompt_list(prompts)

    def _run(
        self,
        prompts: list[Prompt],
        params: Sequence[SamplingParams | PoolingParams],
        use_tqdm: bool,
        lora_request: LoRAArg = None,
    ) -> list[Any]:
        engine = self.llm_engine
        loras = _loras_per_prompt(lora_request, len(prompts))
        request_ids = [f"llm-{next(self._ids)}" for _ in prompts]
        for index, (request_id, prompt, p) in enumerate(zip(request_ids, prompts, params)):
            try:
                engine_prompt, images = self._engine_prompt(prompt)
                engine.add_request(
                    request_id, engine_prompt, p, multi_modal=images, lora_request=loras[index]
                )
            except ValueError as exc:  # RequestRejected, or images the processor refuses
                for added in request_ids[:index]:
                    engine.abort_request(added)
                raise ValueError(f"prompt {index}: {exc}") from exc
        position = {request_id: i for i, request_id in enumerate(request_ids)}
        results: list[RequestOutput | PoolingRequestOutput | None] = [None] * len(prompts)
        with tqdm(total=len(prompts), disable=not use_tqdm, desc="generating") as progress:
            remaining = len(prompts)
            while remaining:
                for output in engine.step():
                    index = position.get(output.request_id)
                    if index is not None:
                        results[index] = output
                        remaining -= 1
                        progress.update(1)
        return [r for r in results if r is not None]

    def _engine_prompt(self, prompt: Prompt) -> tuple[str | list[int], MultiModalInputs | None]:
        if not isinstance(prompt, dict):
            return prompt, None
        images = (prompt.get("multi_modal_data") or {}).get("image")
        if images is None:
            return prompt.get("prompt_token_ids", prompt.get("prompt")), None
        if "prompt" not in prompt:
            raise ValueError(
                "a prompt with images must give its text as 'prompt' (the processor expands "
                "its image placeholders), not 'prompt_token_ids'"
            )
        images = list(images) if isinstance(images, list | tuple) else [images]
        if self._processor is None:
            config = self.llm_engine.config
            self._processor = load_image_processor(config.model, config.trust_remote_code)
        return process_images(self._processor, prompt["prompt"], images)


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str) or (_is_token_list(prompts) and prompts):
        return [prompts]  # type: ignore[list-item]
    if not isinstance(prompts, list | tuple | dict):
        raise ValueError(
            "prompts must be a str, a list of token ids, a dict, or a list of those; "
            f"got {type(prompts).__name__}"
        )
    if isinstance(prompts, dict):
        prompts = [prompts]
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, dict):
            unknown = sorted(set(prompt) - set(PROMPT_KEYS))
            if unknown or ("prompt" in prompt) == ("prompt_token_ids" in prompt):
                raise ValueError(
                    f"prompt {index}: a dict prompt holds 'prompt' (text) or 'prompt_token_ids', "
                    f"and optionally 'multi_modal_data'; got keys {sorted(prompt)}"
                )
        elif not (isinstance(prompt, str) or _is_token_list(prompt)):
            raise ValueError(
                f"prompt {index} must be a str, a list of token ids or a dict, "
                f"got {type(prompt).__name__}"
            )
    return list(prompts)


def _as_conversation_list(messages: list[Message] | Sequence[list[Message]]) -> list[list[Message]]:
    if isinstance(messages, list | tuple) and messages and isinstance(messages[0], dict):
        return [list(messages)]  # type: ignore[arg-type]
    if not isinstance(messages, list | tuple):
        raise ValueError(
            f"messages must be a conversation (list of dicts) or a list of them, "
            f"got {type(messages).__name__}"
        )
    for index, conversation in enumerate(messages):
        if not (
            isinstance(conversation, list | tuple)
            and all(isinstance(m, dict) for m in conversation)
        ):
            raise ValueError(f"conversation {index} must be a list of message dicts")
    return [list(c) for c in messages]


def _params_per_prompt(
    params: SamplingParams | Sequence[SamplingParams] | None, count: int
) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(
            f"got {len(params)} sampling params for {count} prompts; give one, or one per prompt"
        )
    for index, p in enumerate(params):
        if not isinstance(p, SamplingParams):
            raise ValueError(
                f"sampling params {index} must be a SamplingParams, got {type(p).__name__}"
            )
    return params


def _loras_per_prompt(lora_request: LoRAArg, count: int) -> list[LoRARequest | None]:
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * count
    loras = list(lora_request)
    if len(loras) != count:
        raise ValueError(
            f"got {len(loras)} lora requests for {count} prompts; give one, or one per prompt"
        )
    for index, lora in enumerate(loras):
        if lora is not None and not isinstance(lora, LoRARequest):
            raise TypeError(
                f"lora_request {index} must be a LoRARequest or None, got {type(lora).__name__}"
            )
    return loras
