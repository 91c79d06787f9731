"""Quantized layers unpack each tool's tensors into the runtime form: the dequantized weight is
the checkpoint's, exactly, and the runtime matmul (as CUDA runs it, here in PyTorch) multiplies
by it."""

from __future__ import annotations

import pytest
import torch
from quantized_checkpoints import FORMATS, fp8_tensors, int4_tensors

from llmbatch.layers.quantization import Fp8Linear, Int4Linear, LinearShape, fp8, int4
from llmbatch.layers.tensor_parallel import TensorParallel

INT4_LAYOUTS = {"awq": "awq", "gptq": "gptq", "ct": "compressed"}


def loaded(layer, tensors: dict[str, torch.Tensor]):
    """``layer`` with its checkpoint-form parameters filled from one layer's tensors."""
    for name, tensor in tensors.items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "weight_shape":
            continue
        target = getattr(layer, leaf)
        target.data.copy_(tensor.reshape(target.shape))
    return layer


@pytest.mark.parametrize("format_name", [name for name, f in FORMATS.items() if f.kind == "int4"])
def test_int4_layouts_unpack_to_the_checkpoint_weight(format_name):
    fmt = FORMATS[format_name]
    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(3))
    tensors, expected = int4_tensors("layer.weight", weight, fmt, seed=0)
    options = fmt.options
    layout = INT4_LAYOUTS[options["tool"]]
    if layout == "gptq" and options.get("v2"):
        layout = "gptq_v2"
    shape = LinearShape(128, (96,), "replicated", TensorParallel())
    layer = Int4Linear(
        shape,
        False,
        layout=layout,
        group_size=options["group_size"],
        act_order=options.get("act_order", False),
        zero_point=not options.get("sym", True),
    )
    loaded(layer, tensors).to_runtime_form()
    assert (layer.perm is not None) == bool(options.get("act_order"))
    assert torch.equal(layer.dequantize(), expected)
    x = torch.randn(5, 128)
    out = int4.int4_linear(
        x, layer.qweight, layer.scales, layer.zeros, layer.group_size, layer.perm, layer.group_index
    )
    torch.testing.assert_close(out, x @ expected.T, rtol=1e-5, atol=1e-5)


def test_fp8_per_tensor_scales_of_merged_parts_cover_their_rows():
    """q, k and v stored apart with one scale each (and a static input scale each): one scale per
    row of the merged layer, and the largest input scale."""
    gen = torch.Generator().manual_seed(1)
    parts = [torch.randn(rows, 64, generator=gen) * (i + 1) for i, rows in enumerate((64, 32, 32))]
    fmt = FORMATS["ct-fp8-static"]
    shape = LinearShape(64, (64, 32, 32), "column", TensorParallel(), checkpoint_parts=3)
    layer = Fp8Linear(shape, False, weight_scale="tensor", static_input=True)
    written = [fp8_tensors(f"p{i}.weight", w, fmt) for i, w in enumerate(parts)]
    layer.weight.data.copy_(torch.cat([t[f"p{i}.weight"] for i, (t, _) in enumerate(written)]))
    for i, (tensors, _) in enumerate(written):
        layer.weight_scale.data[i] = tensors[f"p{i}.weight_scale"].float()
        layer.input_scale.data[i] = tensors[f"p{i}.input_scale"].float()
    inputs = [t[f"p{i}.input_scale"].float() for i, (t, _) in enumerate(written)]
    layer.to_runtime_form()
    assert layer.weight_scale.shape == (128,)
    assert torch.equal(layer.dequantize(), torch.cat([d for _, d in written]))
    assert torch.equal(layer.input_scale, torch.stack(inputs).max().reshape(1))


def test_fp8_weight_quantization_round_trips_within_e4m3_precision():
    weight = torch.randn(48, 64) * torch.logspace(-3, 1, 48)[:, None]  # rows of any magnitude
    weight[3] = 0.0  # an all-zero row
    q, scale = fp8.quantize_weight(weight)
    back = fp8.dequantize_weight(q, scale, torch.float32)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (48,)
    assert torch.equal(back[3], torch.zeros(64))
    # e4m3 keeps 3 mantissa bits: within 1/16 of each row's largest value
    error = (back - weight).abs().amax(dim=1)
    assert (error <= weight.abs().amax(dim=1) / 16).all()
