"""Mixtures of experts on the Llama-style decoder: Mixtral, Qwen3-MoE and Qwen2-MoE.

Attention is their dense siblings' (Mistral, Qwen3, Qwen2); the feed-forward of each sparse
layer routes every token to its top-k experts. The families differ in how they weigh the chosen
experts (Mixtral renormalizes them to sum to 1, the Qwen models when ``norm_topk_prob`` says so),
in which layers stay dense (Qwen's ``mlp_only_layers`` and ``decoder_sparse_step``), and in
Qwen2-MoE's shared expert, which every token also passes through, scaled by a sigmoid gate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import PretrainedConfig

from llmbatch.layers.attention.base import AttentionBackend
from llmbatch.layers.linear import Linear
from llmbatch.layers.moe import MoEExperts, route
from llmbatch.layers.tensor_parallel import TensorParallel
from llmbatch.models.checkpoint import EXPERT_PROJECTIONS
from llmbatch.models.decoder import GatedMLP
from llmbatch.models.llama import LlamaForCausalLM, LlamaVariant

# Mixtral's checkpoint names -> ours (the Qwen names)
_MIXTRAL_NAMES = (
    (re.compile(r"\.block_sparse_moe\."), ".mlp."),
    (re.compile(r"(\.experts\.\d+)\.w1\."), r"\1.gate_proj."),
    (re.compile(r"(\.experts\.\d+)\.w3\."), r"\1.up_proj."),
    (re.compile(r"(\.experts\.\d+)\.w2\."), r"\1.down_proj."),
)
# transformers 5 may save each layer's experts as two stacked tensors
_STACKED_EXPERTS = re.compile(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")


class SparseMoeBlock(nn.Module):
    """Router, experts and (Qwen2-MoE) the gated shared expert; one all-reduce for all of them
    under tensor parallelism."""

    def __init__(
        self,
        config: PretrainedConfig,
        num_experts: int,
        intermediate_size: int,
        renormalize: bool,
        weights_in_model_dtype: bool,
        tp: TensorParallel,
    ) -> None:
        super().__init__()
        self.tp = tp
        self.top_k = config.num_experts_per_tok
        self.renormalize = renormalize
        self.weights_in_model_dtype = weights_in_model_dtype
        self.gate = Linear(config.hidden_size, num_experts, bias=False)
        self.experts = MoEExperts(num_experts, config.hidden_size, intermediate_size, tp)
        shared_size = getattr(config, "shared_expert_intermediate_size", 0) or 0
        self.shared_expert = None
        if shared_size:
            self.shared_expert = GatedMLP(config.hidden_size, shared_size, tp, reduce_results=False)
            self.shared_expert_gate = Linear(config.hidden_size, 1, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weights, ids = route(self.gate(hidden), self.top_k, self.renormalize)
        if self.weights_in_model_dtype:
            weights = weights.to(hidden.dtype)  # as the Qwen models round them
        out = self.experts(hidden, weights, ids)
        if self.shared_expert is not None:
            gate = torch.sigmoid(self.shared_expert_gate(hidden))
            out = out + gate * self.shared_expert(hidden)
        return self.tp.all_reduce(out)


class MoEForCausalLM(LlamaForCausalLM):
    """Mixtral, Qwen3-MoE or Qwen2-MoE; experts' weights sharded by their intermediate features
    under tensor parallelism."""

    def __init__(
        self, config: PretrainedConfig, architecture: str, attention_backend: AttentionBackend
    ) -> None:
        self.architecture = architecture
        super().__init__(config, architecture, attention_backend)

    def build_mlp(
        self, config: PretrainedConfig, variant: LlamaVariant, layer_index: int, tp: TensorParallel
    ) -> nn.Module:
        if self.architecture == "MixtralForCausalLM":
            return SparseMoeBlock(
                config, config.num_local_experts, config.intermediate_size, True, False, tp
            )
        sparse = (
            layer_index not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0
            and (layer_index + 1) % getattr(config, "decoder_sparse_step", 1) == 0
        )
        if not sparse:
            return GatedMLP(config.hidden_size, config.intermediate_size, tp)
        return SparseMoeBlock(
            config,
            config.num_experts,
            config.moe_intermediate_size,
            bool(config.norm_topk_prob),
            True,
            tp,
        )

    def checkpoint_tensors(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Mixtral's names as Qwen's, and experts stacked as transformers 5 may save them
        (``experts.gate_up_proj`` ``[E, 2I, H]``, ``experts.down_proj`` ``[E, H, I]``) as one
        tensor per expert and projection."""
        return super().checkpoint_tensors(self._per_expert(weights))

    def _per_expert(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        gate, up, down = EXPERT_PROJECTIONS
        for name, tensor in weights:
            if self.architecture == "MixtralForCausalLM":
                for pattern, replacement in _MIXTRAL_NAMES:
                    name = pattern.sub(replacement, name)
            stacked = _STACKED_EXPERTS.fullmatch(name)
            if stacked is None:
                yield name, tensor
                continue
            prefix, kind = stacked.groups()
            for expert, matrix in enumerate(tensor.unbind(0)):
                if kind == "down_proj":
                    yield f"{prefix}.{expert}.{down}.weight", matrix
                else:
                    gate_rows, up_rows = matrix.chunk(2, dim=0)
                    yield f"{prefix}.{expert}.{gate}.weight", gate_rows
                    yield f"{prefix}.{expert}.{up}.weight", up_rows
