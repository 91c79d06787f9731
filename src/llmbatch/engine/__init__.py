"""The inference engine: continuous batching over a paged KV cache with prefix caching.

`llm_engine.LLMEngine` (add_request / step) is the streaming API; `llm.LLM` the offline one
(generate / chat). The engine is built from `config.EngineConfig`, schedules with
`scheduler.Scheduler` over `block_manager.BlockManager`, runs the model through
`model_runner.ModelRunner` and samples with `sampler.Sampler`. Modules are imported where they
are used, so that importing `sampling_params` stays cheap.
"""
