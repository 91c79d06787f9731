"""Where engines run: in this process, as a tensor-parallel group of processes, or as
data-parallel replicas in worker processes. `start_engine` picks from the engine arguments and
``concurrency``; whichever it starts is an `EngineClient`. `LLM` is vLLM's offline API over one.
"""
