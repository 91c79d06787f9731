"""Paged KV cache bookkeeping: fixed-size blocks, reference counts and a prefix cache.

A full block is identified by a hash chain: the hash of (its parent block's hash, its token ids),
so equal hashes mean equal whole prefixes (the chain of a request with a LoRA adapter starts
from its adapter). Blocks whose last user finished stay in the cache
until their slot is needed; the free queue hands out never-cached blocks first, then cached ones
least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict

from llmbatch.engine.request import Request

ROOT_HASH = hash("llmbatch-prefix-root")


def cdiv(a: int, b: int) -> int:
    return -(a // -b)


def _root_hash(request: Request) -> int:
    """The hash chain's start: a request run with a LoRA adapter computes other K/V for the
    same tokens, so its blocks are only shared with requests of the same adapter."""
    lora = request.lora
    if lora is None:
        return ROOT_HASH
    return hash((ROOT_HASH, lora.lora_int_id, lora.lora_path))


class BlockManager:
    """Owns the KV cache blocks; a request holds its blocks in `request.block_ids`."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hashes: list[int | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Blocks holding the longest cached prefix of the request's tokens.

        The last token is never served from the cache, so the step that computes it yields the
        logits the next token is sampled from.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        self._extend_hashes(request, max_blocks)
        hits: list[int] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def allocate(
        self, request: Request, num_tokens: int, cached_blocks: list[int] | None = None
    ) -> bool:
        """Gives the request enough blocks to hold `num_tokens` tokens, starting with
        `cached_blocks` (from find_cached_prefix) for a request that holds none yet.

        Returns False, changing nothing, when too few blocks are free.
        """
        if not cached_blocks:
            # a decode step's usual case, checked first: its blocks already hold the tokens
            # and no block fills up (the scheduler calls this for every running request)
            size = self.block_size
            if num_tokens <= len(request.block_ids) * size and (
                not self.enable_prefix_caching
                or min(num_tokens, len(request.token_ids)) // size <= request.num_registered_blocks
            ):
                return True
        cached_blocks = cached_blocks or []
        num_held = len(request.block_ids) + len(cached_blocks)
        num_required = cdiv(num_tokens, self.block_size) - num_held
        reclaimed = sum(1 for block_id in cached_blocks if self._ref_counts[block_id] == 0)
        if num_required > len(self._free) - reclaimed:
            return False
        for block_id in cached_blocks:
            if self._ref_counts[block_id] == 0:
                del self._free[block_id]
            self._ref_counts[block_id] += 1
        request.block_ids.extend(cached_blocks)
        request.num_registered_blocks += len(cached_blocks)
        for _ in range(max(num_required, 0)):
            request.block_ids.append(self._take_free_block())
        if self.enable_prefix_caching:
            # Only blocks of known tokens: a pending token's id is not known yet.
            known = min(num_tokens, len(request.token_ids))
            self._register_full_blocks(request, known // self.block_size)
        return True

    def free(self, request: Request) -> None:
        """Releases the request's blocks; cached ones stay findable until reused."""
        # Tail blocks first, so that a request's leading (most shareable) blocks are the most
        # recently freed and the last to be evicted.
        for block_id in reversed(request.block_ids):
            self._ref_counts[block_id] -= 1
            if self._ref_counts[block_id] == 0:
                self._free[block_id] = None
                if self._block_hashes[block_id] is None:
                    self._free.move_to_end(block_id, last=False)
        request.block_ids.clear()
        request.num_registered_blocks = 0

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block_hash = self._block_hashes[block_id]
        if block_hash is not None:
            del self._cached[block_hash]
            self._block_hashes[block_id] = None
        self._ref_counts[block_id] = 1
        return block_id

    def _extend_hashes(self, request: Request, num_blocks: int) -> None:
        hashes = request.block_hashes
        tokens = request.token_ids
        size = self.block_size
        images = request.images
        while len(hashes) < num_blocks:
            start = len(hashes) * size
            parent = hashes[-1] if hashes else _root_hash(request)
            key = (parent, tuple(tokens[start : start + size]))
            if images is not None:
                # image placeholders are one repeated token: the pixels tell images apart
                key += images.hashes_in(start, start + size)
            hashes.append(hash(key))

    def _register_full_blocks(self, request: Request, num_full_blocks: int) -> None:
        """Offers the request's blocks that will be full after this step to the prefix cache.

        Called when the step is scheduled: a later request in the same step may already read
        them, which is safe because every layer writes the step's K/V before attending.
        """
        if num_full_blocks <= request.num_registered_blocks:
            return
        self._extend_hashes(request, num_full_blocks)
        for index in range(request.num_registered_blocks, num_full_blocks):
            block_hash = request.block_hashes[index]
            block_id = request.block_ids[index]
            if block_hash not in self._cached and self._block_hashes[block_id] is None:
                self._cached[block_hash] = block_id
                self._block_hashes[block_id] = block_hash
        request.num_registered_blocks = num_full_blocks
