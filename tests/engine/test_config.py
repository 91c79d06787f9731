"""Engine arguments: vLLM names, clear errors for anything that cannot be honoured."""

from __future__ import annotations

import pytest
import torch

from llmbatch.engine.args import EngineArgs


def test_defaults_follow_vllm():
    config = EngineArgs.from_kwargs(model="some/model")
    assert config.enable_chunked_prefill and config.enable_prefix_caching
    assert config.gpu_memory_utilization == 0.9 and config.block_size == 16
    assert config.tensor_parallel_size == config.pipeline_parallel_size == 1
    assert config.max_model_len is None and config.max_num_batched_tokens is None


def test_tutorial_engine_kwargs_are_accepted():
    config = EngineArgs.from_kwargs(
        model="m",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=4096,
        enable_chunked_prefill=True,
        max_num_batched_tokens=1024,
        gpu_memory_utilization=0.85,
        dtype=torch.bfloat16,
    )
    assert config.max_num_batched_tokens == 1024 and config.dtype is torch.bfloat16


def test_unknown_argument_lists_the_accepted_ones():
    with pytest.raises(
        ValueError, match=r"unknown engine argument\(s\) \['swap_space'\].*max_num_seqs"
    ):
        EngineArgs.from_kwargs(model="m", swap_space=4)


def test_model_is_required():
    with pytest.raises(ValueError, match="'model' is required"):
        EngineArgs.from_kwargs(max_num_seqs=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_num_seqs="8"), "max_num_seqs='8' has type str; expected int"),
        (dict(enable_prefix_caching=1), "enable_prefix_caching=1 has type int; expected bool"),
        (dict(gpu_memory_utilization="high"), "expected float"),
        (dict(max_model_len=2.5), "expected int"),
        (dict(max_model_len=0), "max_model_len must be a positive integer"),
        (dict(block_size=24), "block_size must be a power of two"),
        (dict(gpu_memory_utilization=1.5), r"gpu_memory_utilization must be in \(0, 1\]"),
        (dict(gpu_memory_utilization=0.0), r"gpu_memory_utilization must be in \(0, 1\]"),
        (dict(tensor_parallel_size=0), "tensor_parallel_size must be at least 1"),
        (dict(pipeline_parallel_size=4), "pipeline_parallel_size=4 is not supported yet"),
        (dict(dtype="int8"), "dtype='int8' is not supported; accepted: auto, float32"),
        (dict(attention_backend="flash"), "attention_backend='flash' is not supported; accepted"),
        (dict(dtype=torch.int8), "dtype=torch.int8 is not supported"),
        (dict(load_format="npz"), "load_format='npz' is not supported; accepted: 'auto', "),
        (dict(max_num_seqs=64, max_num_batched_tokens=32), "must be at least max_num_seqs"),
        (dict(num_gpu_blocks_override=0), "num_gpu_blocks_override must be at least 1"),
        (dict(cuda_graph_max_tokens=-1), "cuda_graph_max_tokens must be 0"),
        (
            dict(kv_cache_dtype="int8"),
            "kv_cache_dtype=.int8. is not supported; accepted: .auto., .fp8.",
        ),
        (dict(device="tpu"), "device='tpu' is not supported"),
    ],
)
def test_bad_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineArgs.from_kwargs(model="m", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        EngineArgs.from_kwargs(model="m", device="cuda")
