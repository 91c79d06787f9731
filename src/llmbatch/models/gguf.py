"""GGUF files, converted once by transformers into a cached safetensors folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE_DIR_ENV = "LLMBATCH_CACHE_DIR"


def cache_dir() -> Path:
    """``$LLMBATCH_CACHE_DIR``, or ``~/.cache/llmbatch``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/llmbatch").expanduser()


def converted_folder_path(gguf_path: str | Path) -> Path:
    """Where the conversion of this exact file (path, size, modification time) is cached."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "gguf" / f"{path.stem}-{key[:16]}"


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantizes a GGUF model with transformers and writes it as a float32 safetensors folder."""
    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The weights are dequantized already; transformers only refuses to save while it sees a quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def converted_gguf_folder(gguf_path: str | Path) -> str:
    """The safetensors folder of a GGUF file, converting it on first use.

    The conversion is written to a temporary folder and renamed into place, so an interrupted one is
    never mistaken for a finished one; concurrent conversions of the same file both succeed.
    """
    gguf_path = Path(gguf_path).resolve()
    target = converted_folder_path(gguf_path)
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        convert_gguf(gguf_path, staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
