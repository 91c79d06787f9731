"""Any other decoder-only ``AutoModelForCausalLM``: the model's own transformers code, with
llmbatch's paged KV cache and attention backends plugged in through transformers' attention
interface.

transformers computes everything around attention (embeddings, norms, rotary, MLPs) and hands
each layer's rotated queries, keys and values to the function its config's
``attn_implementation`` names. llmbatch registers one (``"llmbatch_paged"``): it writes the
keys and values into the layer's paged cache and attends with the engine's backend, over the
flat batch of every scheduled sequence. No attention mask is built (no mask function is
registered for it), so the model must route all attention through that interface and keep no
position bias in its mask. A probe forward pass at load time checks this and finds the layers,
their KV heads and head size; a model that fails it is a clear error naming what it does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from llmbatch.layers.attention.base import AttentionBackend, AttentionMetadata
from llmbatch.layers.tensor_parallel import current_tensor_parallel
from llmbatch.models.base import CausalLM

ATTENTION_NAME = "llmbatch_paged"
# keyword arguments of transformers' attention calls that need nothing from us
_IGNORED_KWARGS = frozenset(
    {"dropout", "position_ids", "use_cache", "output_attentions", "cache_position", "is_causal"}
)
_HONOURED_KWARGS = frozenset({"sliding_window", "softcap"})


class _HiddenStatesOnly(BaseModelOutputWithPast):
    """A base model's output holding only its last hidden state; any other field a model's head
    reads (cross-attentions, caches, ...) is None."""

    def __getattr__(self, name: str) -> None:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class UnsupportedTransformersModel(ValueError):
    """A transformers model whose code cannot run on llmbatch's paged attention."""


@dataclass(slots=True)
class _LayerShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(slots=True)
class _StepState:
    """What the attention function needs during one forward pass; shared by every layer."""

    backend: AttentionBackend
    kv_caches: list[torch.Tensor] = field(default_factory=list)
    meta: AttentionMetadata | None = None
    probing: bool = False
    probed: list[tuple[nn.Module, _LayerShape]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _PagedLayer:
    """Set on each attention module of a loaded model: its cache index and the shared state."""

    index: int
    state: _StepState


def paged_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query ``[1, H, T, D]``, key/value
    ``[1, KVH, T, D]`` (this step's tokens, rotated) -> ``([1, T, H, D], None)``."""
    layer = getattr(module, "llmbatch_paged", None)
    if layer is None:
        raise RuntimeError(
            f"attn_implementation={ATTENTION_NAME!r} runs only inside a model llmbatch loaded"
        )
    state = layer.state
    if state.probing:
        return _probe(state, module, query, key, value, attention_mask, kwargs)
    q, k, v = _tokens_first(query), _tokens_first(key), _tokens_first(value)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = state.backend.forward(
        q,
        k,
        v,
        state.kv_caches[layer.index],
        state.meta,
        scale,
        kwargs.get("sliding_window"),
        kwargs.get("softcap"),
    )
    return out[None], None


def _tokens_first(x: torch.Tensor) -> torch.Tensor:
    """``[1, heads, T, D]`` -> ``[T, heads, D]``: usually a view, as most models make their heads
    a transposed view of ``[T, heads * D]``."""
    x = x[0].transpose(0, 1)
    return x if x.stride(-1) == 1 else x.contiguous()


def _probe(
    state: _StepState,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, object],
) -> tuple[torch.Tensor, None]:
    """Records one layer's attention call, refusing what paged attention cannot honour."""
    name = type(module).__name__
    if attention_mask is not None:
        raise UnsupportedTransformersModel(
            f"{name} adds its own attention mask (e.g. ALiBi position biases), which llmbatch's "
            "paged attention cannot apply"
        )
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        raise UnsupportedTransformersModel(f"{name} attends bidirectionally, not causally")
    unknown = sorted(
        key_name
        for key_name, val in kwargs.items()
        if val is not None and key_name not in _IGNORED_KWARGS | _HONOURED_KWARGS
    )
    if unknown:
        raise UnsupportedTransformersModel(
            f"{name} passes attention options llmbatch's paged attention does not implement: "
            f"{unknown} (e.g. attention sinks)"
        )
    if key.shape != value.shape or query.shape[-1] != key.shape[-1]:
        raise UnsupportedTransformersModel(
            f"{name}'s queries, keys and values differ in size ({tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}); the paged cache needs one head size"
        )
    if any(seen is module for seen, _ in state.probed):
        raise UnsupportedTransformersModel(f"{name} runs attention more than once per layer")
    shape = _LayerShape(query.shape[1], key.shape[1], key.shape[-1])
    state.probed.append((module, shape))
    out = torch.zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    return out.to(query), None


def register_attention() -> None:
    """Makes ``attn_implementation="llmbatch_paged"`` known to transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention)


def check_transformers_support(config: PretrainedConfig, trust_remote_code: bool) -> None:
    """Raises ``UnsupportedTransformersModel`` when transformers has no decoder-only causal LM for
    this config (the load-time probe checks the rest)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModelForCausalLM" in auto_map and trust_remote_code:
        return
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedTransformersModel(
            f"model type {config.model_type!r} is an encoder-decoder; llmbatch runs decoder-only "
            "causal language models"
        )
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedTransformersModel(
            f"transformers has no causal language model (AutoModelForCausalLM) for model type "
            f"{config.model_type!r}"
        )


def max_positions_of(config: PretrainedConfig) -> int:
    """Positions the config says the model encodes."""
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UnsupportedTransformersModel(
        f"the config of model type {config.model_type!r} gives no maximum length "
        "(max_position_embeddings)"
    )


class TransformersCausalLM(CausalLM):
    """A transformers ``*ForCausalLM`` over the engine's flat batches and paged KV cache.

    ``forward`` runs the base model on the step's tokens as one sequence of length T (positions
    per token, so each sequence's rotary angles are its own; attention keeps sequences apart);
    ``compute_logits`` runs the model's own head on the rows asked for, with whatever it does
    to logits (soft-capping, scaling).
    """

    def __init__(self, hf_model: PreTrainedModel, attention_backend: AttentionBackend) -> None:
        super().__init__()
        if current_tensor_parallel().size > 1:
            raise ValueError(
                "model_impl='transformers' runs on one device; use tensor_parallel_size=1 "
                "(data parallelism: concurrency)"
            )
        self.hf_model = hf_model
        config = hf_model.config.get_text_config()
        self._state = _StepState(attention_backend)
        shapes = self._probe_layers()
        first = shapes[0]
        self.num_layers = len(shapes)
        self.num_heads = first.num_heads
        self.num_kv_heads = first.num_kv_heads
        self.head_dim = first.head_dim
        self.hidden_size = config.hidden_size
        self.vocab_size = hf_model.get_output_embeddings().weight.shape[0]
        self.sliding_window = getattr(config, "sliding_window", None) or None
        self.max_positions = max_positions_of(hf_model.config)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))

    @property
    def base(self) -> nn.Module:
        """The decoder under the LM head (``model``, ``transformer``, ... by family)."""
        return self.hf_model.base_model

    def _probe_layers(self) -> list[_LayerShape]:
        """Runs two tokens through the model to find its attention layers, in call order."""
        name = type(self.hf_model).__name__
        for module in self.hf_model.modules():
            module.llmbatch_paged = _PagedLayer(-1, self._state)
        state = self._state
        state.probing = True
        try:
            device = next(self.hf_model.parameters()).device
            with torch.inference_mode():
                self.base(
                    input_ids=torch.zeros((1, 2), dtype=torch.long, device=device),
                    position_ids=torch.arange(2, device=device)[None],
                    use_cache=False,
                )
        except UnsupportedTransformersModel as exc:
            raise UnsupportedTransformersModel(f"{name} cannot run on llmbatch: {exc}") from None
        except Exception as exc:
            raise UnsupportedTransformersModel(
                f"{name} cannot run on llmbatch: its code failed with an external attention "
                f"function and no attention mask ({type(exc).__name__}: {exc}); models that "
                "build their own mask or position bias (e.g. ALiBi) are not supported"
            ) from exc
        finally:
            state.probing = False
            for module in self.hf_model.modules():
                del module.llmbatch_paged
        if not state.probed:
            raise UnsupportedTransformersModel(
                f"{name} computes attention in its own code rather than through transformers' "
                "attention interface (attn_implementation), so llmbatch cannot give it a paged "
                "KV cache; no llmbatch implementation exists for it either"
            )
        expected = getattr(self.hf_model.config.get_text_config(), "num_hidden_layers", None)
        if expected is not None and len(state.probed) != expected:
            raise UnsupportedTransformersModel(
                f"{name} has {expected} layers but only {len(state.probed)} attention layers: "
                "layers that keep another state (state-space, recurrent or convolutional) are "
                "not supported"
            )
        shapes = [shape for _, shape in state.probed]
        kv_shapes = {(shape.num_kv_heads, shape.head_dim) for shape in shapes}
        if len(kv_shapes) > 1:
            raise UnsupportedTransformersModel(
                f"{name}'s layers differ in KV heads or head size; the paged cache needs one shape"
            )
        for index, (module, _) in enumerate(state.probed):
            module.llmbatch_paged = _PagedLayer(index, state)
        state.probed = []
        return shapes

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        if len(kv_caches) != self.num_layers:
            raise ValueError(f"got {len(kv_caches)} KV caches for {self.num_layers} layers")
        self._state.kv_caches, self._state.meta = kv_caches, meta
        try:
            out = self.base(
                input_ids=input_ids[None], position_ids=positions[None], use_cache=False
            )
        finally:
            self._state.kv_caches, self._state.meta = [], None
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        placeholder_ids = torch.zeros((1, hidden.shape[0]), dtype=torch.long, device=hidden.device)
        with self._base_returning(hidden[None]):
            out = self.hf_model(input_ids=placeholder_ids, use_cache=False)
        return out.logits[0].float()

    @contextmanager
    def _base_returning(self, hidden: torch.Tensor) -> Iterator[None]:
        """The base model, for one call, returns ``hidden`` as its last hidden state: the
        model's forward then applies its own head to it."""

        def forward(*args: object, **kwargs: object) -> BaseModelOutputWithPast:
            return _HiddenStatesOnly(last_hidden_state=hidden)

        self.base.forward = forward
        try:
            yield
        finally:
            del self.base.forward

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(param.shape) for name, param in self.hf_model.named_parameters()}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weights named as the transformers model names its parameters (a tied parameter under
        any of its names)."""
        params = dict(self.hf_model.named_parameters(remove_duplicate=False))
        missing = {id(param): name for name, param in self.hf_model.named_parameters()}
        unexpected = []
        for name, tensor in weights:
            param = params.get(name)
            if param is None:
                unexpected.append(name)
                continue
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(
                    f"weight {name} has shape {tuple(tensor.shape)}, but the model's is "
                    f"{tuple(param.shape)}"
                )
            param.data.copy_(tensor)
            missing.pop(id(param), None)
        if unexpected:
            raise ValueError(f"weights this model does not use: {sorted(unexpected)}")
        if missing:
            raise ValueError(f"weights the model needs are missing: {sorted(missing.values())}")


def load_transformers_model(
    folder: str,
    config: PretrainedConfig,
    dtype: torch.dtype,
    device: torch.device,
    with_weights: bool,
    trust_remote_code: bool,
) -> PreTrainedModel:
    """The transformers model of ``folder`` on ``device``, its attention routed to llmbatch's;
    without ``with_weights``, built from the config alone (the caller draws its weights)."""
    from transformers import AutoModelForCausalLM

    register_attention()
    check_transformers_support(config, trust_remote_code)
    # given either way: left out, transformers asks on the terminal whether to run remote code
    extra = {"trust_remote_code": trust_remote_code}
    if with_weights:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            config=config,
            dtype=dtype,
            attn_implementation=ATTENTION_NAME,
            device_map={"": str(device)},
            **extra,
        )
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=ATTENTION_NAME, **extra
            )
    return model.eval().requires_grad_(False)
