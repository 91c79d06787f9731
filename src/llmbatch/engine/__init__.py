"""The inference engine in one process: continuous batching over a paged KV cache with prefix
caching.

`args.EngineArgs` (what a user gives) resolves into `config.EngineConfig` (what components are
built from). `llm_engine.LLMEngine` (add_request / step) schedules with `scheduler.Scheduler`
over `block_manager.BlockManager`, runs the model through `model_runner.ModelRunner` over the
cache `kv_cache` sizes, and samples with `sampler.Sampler` (a pooling model's steps are pooled
by `pooler` instead; `encoder_engine` runs encoders; `lora_manager` holds LoRA adapters).
Engines of several processes, and vLLM's offline `LLM`, are in `llmbatch.runtime`. Modules are
imported where they are used, so that importing `sampling_params` stays cheap.
"""
