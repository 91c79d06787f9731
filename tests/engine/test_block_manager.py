from llmbatch.engine.block_manager import BlockManager
from llmbatch.engine.request import Request
from llmbatch.engine.sampling_params import SamplingParams

BLOCK = 4


def make_request(request_id: str, token_ids: list[int]) -> Request:
    return Request(
        request_id=request_id,
        prompt=None,
        token_ids=list(token_ids),
        params=SamplingParams(),
        eos_token_ids=frozenset({0}),
        max_model_len=1024,
    )


def admit(manager: BlockManager, request: Request) -> int:
    """Allocates a whole prompt the way the scheduler does; returns the cached token count."""
    cached = manager.find_cached_prefix(request)
    assert manager.allocate(request, request.num_tokens, cached)
    request.num_computed_tokens = request.num_tokens
    return len(cached) * BLOCK


def test_allocate_and_free_return_every_block():
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False)
    request = make_request("a", list(range(1, 11)))
    admit(manager, request)
    assert len(request.block_ids) == 3
    assert manager.num_free_blocks == 5
    manager.free(request)
    assert request.block_ids == []
    assert manager.num_free_blocks == 8


def test_shared_prefix_is_served_from_full_cached_blocks():
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    first = make_request("a", list(range(1, 11)))
    admit(manager, first)
    second = make_request("b", list(range(1, 9)) + [99, 98, 97])
    assert admit(manager, second) == 8
    assert second.block_ids[:2] == first.block_ids[:2]
    assert second.block_ids[2] != first.block_ids[2]
    assert manager.num_free_blocks == 16 - 4
    # shared blocks are held twice: freeing one user keeps them out of the free queue
    manager.free(first)
    assert manager.num_free_blocks == 16 - 3


def test_last_prompt_token_is_never_served_from_cache():
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    admit(manager, make_request("a", list(range(1, 9))))
    same = make_request("b", list(range(1, 9)))
    assert admit(manager, same) == 4


def test_different_prefix_with_equal_block_tokens_does_not_hit():
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    admit(manager, make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # second block equal, first differs: the hash chain must not match the second block alone
    assert admit(manager, make_request("b", [9, 9, 9, 9, 5, 6, 7, 8, 9])) == 0


def test_freed_blocks_stay_cached_until_their_slot_is_needed():
    manager = BlockManager(num_blocks=6, block_size=BLOCK, enable_prefix_caching=True)
    first = make_request("a", list(range(1, 10)))
    admit(manager, first)
    manager.free(first)
    assert manager.num_free_blocks == 6
    again = make_request("b", list(range(1, 10)))
    assert admit(manager, again) == 8
    manager.free(again)
    # fills every block: the cached ones are evicted and no longer found
    hog = make_request("c", list(range(100, 124)))
    admit(manager, hog)
    manager.free(hog)
    assert admit(manager, make_request("d", list(range(1, 10)))) == 0


def test_uncached_and_least_recently_used_blocks_are_reused_first():
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    old = make_request("old", [1, 2, 3, 4, 5])
    recent = make_request("recent", [7, 7, 7, 7, 8])
    admit(manager, old)
    admit(manager, recent)
    manager.free(old)
    manager.free(recent)
    # 4 never-used and 2 uncached blocks go before the 2 cached ones; of those, the least
    # recently freed ("old") goes first
    filler = make_request("filler", list(range(100, 128)))
    admit(manager, filler)
    assert len(filler.block_ids) == 7
    assert len(manager.find_cached_prefix(make_request("x", [7, 7, 7, 7, 9]))) == 1
    assert manager.find_cached_prefix(make_request("y", [1, 2, 3, 4, 6])) == []


def test_failed_allocation_changes_nothing():
    manager = BlockManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=True)
    holder = make_request("a", list(range(1, 10)))
    admit(manager, holder)
    too_big = make_request("b", list(range(1, 9)) + list(range(50, 60)))
    cached = manager.find_cached_prefix(too_big)
    assert len(cached) == 2
    assert not manager.allocate(too_big, too_big.num_tokens, cached)
    assert too_big.block_ids == []
    assert manager.num_free_blocks == 1
    manager.free(holder)
    assert manager.num_free_blocks == 4


def test_decode_growth_registers_blocks_as_they_fill():
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    request = make_request("a", [1, 2, 3])
    admit(manager, request)
    for token in (4, 5):
        request.token_ids.append(token)
        assert manager.allocate(request, request.num_tokens)
        request.num_computed_tokens = request.num_tokens
    assert len(request.block_ids) == 2
    follower = make_request("b", [1, 2, 3, 4, 5, 6])
    assert admit(manager, follower) == 4


def test_prefix_caching_off_never_hits():
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=False)
    admit(manager, make_request("a", list(range(1, 11))))
    assert admit(manager, make_request("b", list(range(1, 11)))) == 0
