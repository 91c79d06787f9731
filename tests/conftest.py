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
    from llmbatch._fixtures.smollm2 import smollm2_dir

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
def reference_llm(smollm2_dir: str, engine_kwargs: dict):
    """The engine run directly (llmbatch.LLM), to hold the processor's rows against."""
    from llmbatch import LLM

    with LLM(smollm2_dir, **engine_kwargs) as llm:
        yield llm


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory) -> str:
    """A tiny random-weight Qwen2.5-VL model folder with its processor (see tests/support/tiny_vl.py)."""
    from tiny_vl import make_tiny_qwen2_5_vl

    return str(make_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vl")))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Pictures to load (see tests/support/image_testing.py)."""
    from image_testing import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def image_server(image_folder):
    """A real HTTP server on 127.0.0.1, in its own thread, serving `image_folder`."""
    from image_testing import ImageHandler, http_server

    def handler(*args: object) -> ImageHandler:
        return ImageHandler(*args, directory=str(image_folder))

    with http_server(handler) as url:
        yield url
