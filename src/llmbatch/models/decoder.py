"""What the decoder families share: attention over the paged cache with fused QKV, the gated
MLP with fused gate/up, the pre-norm layer with the residual add fused into the next norm, and a
``CausalLM`` base that holds the embeddings and LM head and loads checkpoints into the fused,
tensor-parallel parameters (models/checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from transformers import PretrainedConfig

from llmbatch.layers.activation import act_and_mul, check_activation
from llmbatch.layers.attention.base import AttentionBackend, AttentionMetadata
from llmbatch.layers.linear import Linear, MergedLinear
from llmbatch.layers.norm import RMSNorm
from llmbatch.layers.parallel import RowParallelLinear, VocabParallelEmbedding, VocabParallelLMHead
from llmbatch.layers.rotary import PositionRotation, RotaryEmbedding
from llmbatch.layers.tensor_parallel import TensorParallel, current_tensor_parallel
from llmbatch.models.base import CausalLM
from llmbatch.models.checkpoint import WeightSlot, checkpoint_layout, load_checkpoint
from llmbatch.models.pooling import PoolerConfig

# the checkpoint projections a model's merged layers stack, where the checkpoint keeps them apart
SEPARATE_PROJECTIONS = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_windows_of(config: PretrainedConfig) -> list[int | None]:
    """Each layer's attention window (None: full attention)."""
    window = getattr(config, "sliding_window", None) or None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return [window if kind == "sliding_attention" else None for kind in layer_types]
    return [window] * config.num_hidden_layers


class DecoderAttention(nn.Module):
    """Self-attention of one layer: fused QKV projection, optional per-head q/k RMSNorm, rotary,
    then the attention backend over the paged cache, and the row-parallel output projection.

    ``scale`` defaults to ``head_dim ** -0.5``; ``softcap`` caps the scores (Gemma 2);
    ``float32_norms`` gives the q/k norms Gemma's form.
    """

    def __init__(
        self,
        config: PretrainedConfig,
        backend: AttentionBackend,
        sliding_window: int | None,
        tp: TensorParallel,
        *,
        qkv_bias: bool = False,
        output_bias: bool = False,
        qk_norm: bool = False,
        float32_norms: bool = False,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads // tp.size
        self.num_kv_heads = config.num_key_value_heads // tp.size
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5 if scale is None else scale
        self.softcap = softcap
        self.sliding_window = sliding_window
        self.backend = backend
        self.qkv_proj = MergedLinear(
            config.hidden_size, (self.q_size, self.kv_size, self.kv_size), bias=qkv_bias
        )
        self.o_proj = RowParallelLinear(self.q_size * tp.size, config.hidden_size, output_bias, tp)
        self.qk_norm = qk_norm
        if qk_norm:
            eps = config.rms_norm_eps
            self.q_norm = RMSNorm(self.head_dim, eps, float32_norms)
            self.k_norm = RMSNorm(self.head_dim, eps, float32_norms)

    def forward(
        self,
        hidden: torch.Tensor,
        rotate: PositionRotation,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, k)
        out = self.backend.forward(
            q, k, v, kv_cache, meta, self.scale, self.sliding_window, self.softcap
        )
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up fused; column- then row-parallel.
    ``reduce_results=False`` leaves the all-reduce to the caller (a shared expert)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        tp: TensorParallel,
        bias: bool = False,
        activation: str = "silu",
        reduce_results: bool = True,
    ) -> None:
        super().__init__()
        check_activation(activation)
        tp.check_divides(intermediate_size, "intermediate_size")
        rows = intermediate_size // tp.size
        self.activation = activation
        self.gate_up_proj = MergedLinear(hidden_size, (rows, rows), bias=bias)
        self.down_proj = RowParallelLinear(
            intermediate_size, hidden_size, bias, tp, reduce_results=reduce_results
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(act_and_mul(self.gate_up_proj(x), self.activation))


class DecoderLayer(nn.Module):
    """Pre-norm attention then feed-forward (an MLP or a mixture of experts)."""

    def __init__(self, self_attn: DecoderAttention, mlp: nn.Module, config: PretrainedConfig):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rotate: PositionRotation,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns this layer's output and the residual stream it has not yet been added to."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(hidden, rotate, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    """Embeddings, the layers and the final norm; one rotary table for every layer."""

    def __init__(
        self,
        config: PretrainedConfig,
        layers: Iterable[nn.Module],
        tp: TensorParallel,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config, head_dim_of(config))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_num_caches(kv_caches, self.layers)
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        rotate = self.rotary.at(positions, hidden.dtype)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(hidden, residual, rotate, kv_cache, meta)
        return self.norm.add_and_norm(hidden, residual)[0]


def check_num_caches(kv_caches: list[torch.Tensor], layers: nn.ModuleList) -> None:
    if len(kv_caches) != len(layers):
        raise ValueError(f"got {len(kv_caches)} KV caches for {len(layers)} layers")


class DecoderForCausalLM(CausalLM):
    """A decoder (``self.model``, with ``embed_tokens``, ``layers`` and ``rotary``) under a
    vocabulary-parallel LM head, loaded from checkpoints named as Hugging Face names them.

    Built inside ``sharded_over(tp)``, it holds rank ``tp.rank``'s shard; ``num_heads`` and
    ``num_kv_heads`` count this rank's heads. Subclasses build ``self.model`` with
    ``build_model`` and may rename or transform checkpoint tensors in ``checkpoint_tensors``.
    """

    split_projections: dict[str, tuple[str, ...]] = SEPARATE_PROJECTIONS
    """The checkpoint tensors each merged layer is stacked from (a layer not listed is stored
    fused under its own name)."""
    final_softcap: float | None = None
    """Caps the logits as ``c * tanh(logits / c)`` (Gemma)."""

    def __init__(
        self, config: PretrainedConfig, build_model: Callable[[TensorParallel], nn.Module]
    ) -> None:
        super().__init__()
        tp = current_tensor_parallel()
        tp.check_divides(config.num_attention_heads, "num_attention_heads")
        tp.check_divides(config.num_key_value_heads, "num_key_value_heads")
        self.tensor_parallel = tp
        self.model = build_model(tp)
        self.lm_head = VocabParallelLMHead(config.vocab_size, config.hidden_size, tp)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads // tp.size
        self.num_kv_heads = config.num_key_value_heads // tp.size
        self.head_dim = head_dim_of(config)
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        windows = [w for w in sliding_windows_of(config) if w is not None]
        self.sliding_window = max(windows) if windows else None
        self.max_positions = max(
            module.max_positions
            for module in self.model.modules()
            if isinstance(module, RotaryEmbedding)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def as_pooling_model(self, pooler: PoolerConfig) -> None:
        """Makes this a pooling model: no LM head (a checkpoint's is skipped), and for a
        classifier the ``score`` head of ``*ForSequenceClassification`` checkpoints."""
        self.lm_head = None
        self.pooler = pooler
        if pooler.task == "classify":
            self.score = Linear(self.hidden_size, pooler.num_labels, bias=False)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            raise RuntimeError("a pooling model has no LM head: it computes no token logits")
        logits = self.lm_head.logits(hidden)
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: slot.full_shape for name, slot in self._checkpoint_layout().items()}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        layout = self._checkpoint_layout()
        load_checkpoint(
            layout,
            _base_model_names(self.checkpoint_tensors(weights), layout),
            self.tensor_parallel,
        )

    def checkpoint_tensors(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors under the names the layout uses, less the ones the model
        derives (rotary tables) or shares (a tied LM head)."""
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):
                continue  # derived from the config, never trained
            if name == "lm_head.weight" and (self.tie_word_embeddings or self.lm_head is None):
                continue  # the same matrix as the embedding, or unused by a pooling model
            yield name, tensor

    def _checkpoint_layout(self) -> dict[str, WeightSlot]:
        return checkpoint_layout(
            self, self.vocab_size, self.tensor_parallel, self.split_projections
        )


def _base_model_names(
    weights: Iterable[tuple[str, torch.Tensor]], layout: dict[str, WeightSlot]
) -> Iterator[tuple[str, torch.Tensor]]:
    """A base-model checkpoint (``Qwen3Model``, as embedding models are saved) names its
    tensors without the ``model.`` prefix of the causal LM's decoder."""
    for name, tensor in weights:
        if name not in layout and f"model.{name}" in layout:
            name = f"model.{name}"
        yield name, tensor
