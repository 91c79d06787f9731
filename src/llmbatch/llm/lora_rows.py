"""Which LoRA adapter a row runs with: a PEFT folder in its ``lora`` column or, as in Ray Data
LLM, an adapter named in its ``model`` column when that is not the processor's model (a folder,
or a name under the config's ``dynamic_lora_loading_path``)."""

from __future__ import annotations

import os
from typing import Any

from llmbatch.engine.lora_request import LoRARequest


class RowAdapters:
    """Turns rows' ``model`` / ``lora`` values into LoRARequests, one id per adapter folder."""

    def __init__(self, model_source: str, adapters_root: str | None) -> None:
        self.model_source = model_source
        self.adapters_root = adapters_root
        self._ids: dict[str, int] = {}

    def of(self, model: Any, lora: Any) -> LoRARequest | None:
        """The row's adapter, or None for the processor's model; a ValueError saying what to fix
        when the row names an adapter that is no folder."""
        if lora is not None:
            if not isinstance(lora, str):
                raise TypeError(
                    f"'lora' must be an adapter folder (str), got {type(lora).__name__}"
                )
            return self._request(lora, lora, "lora")
        if model is None or model == self.model_source:
            return None
        if not isinstance(model, str):
            raise TypeError(f"'model' must be a str, got {type(model).__name__}")
        if self.adapters_root is not None:
            return self._request(model, os.path.join(self.adapters_root, model), "model")
        return self._request(model, model, "model")

    def _request(self, name: str, path: str, column: str) -> LoRARequest:
        folder = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(folder):
            hint = (
                "it names a LoRA adapter folder"
                if column == "lora"
                else f"a row whose model is not the processor's ({self.model_source!r}) runs "
                "the LoRA adapter it names: give a folder, or set dynamic_lora_loading_path to "
                "the folder holding adapters by name"
            )
            raise ValueError(f"{column}={name!r}: no adapter folder at {folder} ({hint})")
        adapter_id = self._ids.setdefault(folder, len(self._ids) + 1)
        return LoRARequest(name, adapter_id, folder)
