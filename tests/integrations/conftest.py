import pytest


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
