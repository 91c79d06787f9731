"""The engine's LoRA adapters: read once from disk, held in ``max_loras`` device slots while
requests of theirs run.

An adapter is read and checked when its first request is added (a bad one is that request's
rejection), and kept on the host for ``max_cpu_loras`` adapters (least recently used dropped,
read again when needed). A request takes a device slot when it starts running: its adapter's
slot if the adapter is on the device, else the least recently used slot no running request
holds, filled from the host. The scheduler admits no request whose adapter finds no slot, so
at most ``max_loras`` adapters run in a step.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.request import Request
from llmbatch.models import CausalLM
from llmbatch.models.lora_adapter import LoRAAdapter, LoRALayers, load_peft_adapter

AdapterKey = tuple[int, str]


def adapter_key(lora: LoRARequest) -> AdapterKey:
    return lora.lora_int_id, lora.lora_path


class LoRAManager:
    """Host cache and device slots of a model's adapters (the model has `add_lora_layers`)."""

    def __init__(self, model: CausalLM, config: EngineConfig) -> None:
        self.model = model
        self.layers: LoRALayers = model.lora
        self.dtype = next(model.parameters()).dtype
        self.max_cpu_loras = config.max_cpu_loras
        num_slots = config.max_loras
        self._host: OrderedDict[AdapterKey, LoRAAdapter] = OrderedDict()
        self._slot_of: dict[AdapterKey, int] = {}
        self._held_by: list[AdapterKey | None] = [None] * num_slots
        self._pins = [0] * num_slots
        # slots by last use, least recent first
        self._recency: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_slots))

    def check(self, lora: LoRARequest) -> None:
        """Reads and checks the adapter (once); `IncompatibleAdapter` when it cannot run."""
        self._adapter(lora)

    def can_admit(self, request: Request) -> bool:
        """Whether the request's adapter has (or can take) a device slot now."""
        if request.lora is None or adapter_key(request.lora) in self._slot_of:
            return True
        return any(pins == 0 for pins in self._pins)

    def admit(self, request: Request) -> None:
        """Gives a request that starts running its adapter's slot (after `can_admit`)."""
        if request.lora is None:
            return
        key = adapter_key(request.lora)
        slot = self._slot_of.get(key)
        if slot is None:
            slot = next(s for s in self._recency if self._pins[s] == 0)
            self._fill(slot, key, self._adapter(request.lora))
        self._pins[slot] += 1
        self._recency.move_to_end(slot)
        request.lora_slot = slot

    def release(self, request: Request) -> None:
        """A request stopped running (finished, aborted or preempted): its slot may be reused
        once no other running request holds it."""
        if request.lora_slot >= 0:
            self._pins[request.lora_slot] -= 1
            request.lora_slot = -1

    def _adapter(self, lora: LoRARequest) -> LoRAAdapter:
        key = adapter_key(lora)
        adapter = self._host.get(key)
        if adapter is None:
            adapter = load_peft_adapter(lora.lora_path, self.model, self.dtype)
            self._host[key] = adapter
            while len(self._host) > self.max_cpu_loras:
                self._host.popitem(last=False)
        self._host.move_to_end(key)
        return adapter

    @torch.inference_mode()
    def _fill(self, slot: int, key: AdapterKey, adapter: LoRAAdapter) -> None:
        previous = self._held_by[slot]
        if previous is not None:
            del self._slot_of[previous]
        for name, layer in self.layers.layers.items():
            weights = adapter.weights.get(name)
            if weights is None:
                layer.a[slot].zero_()
                layer.b[slot].zero_()
            else:
                layer.a[slot].copy_(weights[0])
                layer.b[slot].copy_(weights[1])
        self._held_by[slot] = key
        self._slot_of[key] = slot
