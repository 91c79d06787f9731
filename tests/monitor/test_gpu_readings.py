"""GPU memory and utilisation as the driver reports them (NVML), read without CUDA."""

from __future__ import annotations

import pytest
import torch

from llmbatch.monitor.engines import GpuReader


@pytest.mark.gpu
def test_gpu_memory_follows_an_allocation():
    reader = GpuReader()
    before = {g.index: g for g in reader.read()}
    assert before and all(g.memory_total > 0 and g.name for g in before.values())
    index = torch.cuda.current_device()
    block = torch.empty(1 << 30, dtype=torch.uint8, device=f"cuda:{index}")
    after = {g.index: g for g in reader.read()}
    assert after[index].memory_used >= before[index].memory_used + (1 << 30) * 0.9
    assert after[index].utilization is None or 0 <= after[index].utilization <= 1
    del block


def test_no_gpu_reads_as_none_where_there_is_no_driver():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert GpuReader().read() == ()
