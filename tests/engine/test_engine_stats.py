"""The engine's stats: running and waiting requests and KV-cache use as of now, counters since
it started, read while it works."""

from __future__ import annotations

from llmbatch import LLM, SamplingParams


def test_stats_show_running_waiting_and_kv_use(smollm2_dir):
    with LLM(smollm2_dir, max_model_len=256, kv_cache_memory_bytes=16 << 20, max_num_seqs=2) as llm:
        engine = llm.llm_engine
        idle = engine.stats
        assert (idle.num_running, idle.num_waiting, idle.kv_cache_usage) == (0, 0, 0.0)
        prompt = "The history of the number zero, told briefly: " * 5
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        for i in range(5):
            engine.add_request(str(i), prompt, params)
        assert (engine.stats.num_running, engine.stats.num_waiting) == (0, 5)
        engine.step()
        busy = engine.stats
        assert (busy.num_running, busy.num_waiting) == (2, 3)  # max_num_seqs=2
        blocks = engine._block_manager
        held = blocks.num_blocks - blocks.num_free_blocks
        assert busy.kv_cache_usage == held / blocks.num_blocks > 0
        while engine.has_unfinished():
            engine.step()
        done = engine.stats
        assert (done.num_running, done.num_waiting, done.kv_cache_usage) == (0, 0, 0.0)
        assert done.num_finished == 5 and done.num_generated_tokens == 40
        # the later requests found the first one's prompt in the prefix cache
        assert 0 < done.num_cached_tokens < done.num_prompt_tokens
