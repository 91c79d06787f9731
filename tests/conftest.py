import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a safetensors folder (converted once from the packaged GGUF)."""
    from llmbatch.models.provisioned import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="session")
def engine_kwargs() -> dict:
    """The tutorial's engine kwargs, with a KV cache small enough for a test machine."""
    return dict(
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=4096,
        enable_chunked_prefill=True,
        max_num_batched_tokens=1024,
        gpu_memory_utilization=0.85,
        kv_cache_memory_bytes=256 << 20,
    )


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory) -> str:
    """A tiny random-weight Qwen2.5-VL model folder with its processor (see tests/models/tiny_vl.py)."""
    from models.tiny_vl import make_tiny_qwen2_5_vl

    return str(make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vl")))
