"""Reading checkpoint weights from a model folder, or drawing random ones in the same shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llmbatch.layers.norm import RMSNorm
from llmbatch.models.base import CausalLM

LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy")
# dtype names (vLLM's, with their aliases) a model's weights and activations may run in
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
DUMMY_WEIGHT_STD = 0.02

_WEIGHT_FILES = {
    "safetensors": ("model.safetensors.index.json", "*.safetensors"),
    "pt": ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
}


def _files_of_format(folder: Path, load_format: str) -> list[Path]:
    index_name, pattern = _WEIGHT_FILES[load_format]
    index = folder / index_name
    if not index.exists():
        return sorted(folder.glob(pattern))
    shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [name for name in shard_names if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{index} lists weight files that are not in {folder}: {missing}")
    return [folder / name for name in shard_names]


def checkpoint_files(folder: str | Path, load_format: str = "auto") -> list[Path]:
    """The weight files of a folder: safetensors (preferred under "auto") or pytorch_model*.bin."""
    folder = Path(folder)
    formats = ("safetensors", "pt") if load_format == "auto" else (load_format,)
    for weights_format in formats:
        files = _files_of_format(folder, weights_format)
        if files:
            return files
    expected = " or ".join(_WEIGHT_FILES[f][1] for f in formats)
    raise FileNotFoundError(
        f"no weight files ({expected}) in {folder}; "
        "pass load_format='dummy' to run with random weights"
    )


class CorruptWeightsError(ValueError):
    """A weight file that cannot be read: damaged, truncated or not a checkpoint."""


def iterate_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, CPU tensor) for every weight, one file open at a time."""
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as reader:
                    for name in reader.keys():
                        yield name, reader.get_tensor(name)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                yield from state.items()
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            if isinstance(exc, CorruptWeightsError):
                raise
            raise CorruptWeightsError(
                f"cannot read weights from {path} ({type(exc).__name__}: {exc}); the file is "
                "damaged or incomplete: download or convert it again"
            ) from exc


@torch.no_grad()
def init_dummy_weights(model: CausalLM, seed: int) -> None:
    """Normal(0, 0.02) weights and biases, and norms that leave their input's scale (unit scales,
    zero shifts), the same for the same seed and device type. Whole checkpoint tensors are
    drawn, so every tensor-parallel shard holds its slice of the same model."""
    param = next(model.parameters())
    generator = torch.Generator(param.device).manual_seed(seed)

    def draws() -> Iterator[tuple[str, torch.Tensor]]:
        for name, shape in model.checkpoint_shapes().items():
            tensor = torch.empty(shape, dtype=param.dtype, device=param.device)
            yield name, tensor.normal_(0.0, DUMMY_WEIGHT_STD, generator=generator)

    model.load_weights(draws())
    for module in model.modules():
        if _is_norm(module):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


def _is_norm(module: torch.nn.Module) -> bool:
    """Ours, or one of a transformers module (a vision tower, a model run with its transformers
    code)."""
    if isinstance(module, RMSNorm | torch.nn.LayerNorm):
        return True
    return type(module).__name__.endswith(("RMSNorm", "LayerNorm")) and isinstance(
        getattr(module, "weight", None), torch.Tensor
    )
