"""Rows sent to an OpenAI-compatible endpoint instead of a local model (Ray Data LLM's
`HttpRequestProcessorConfig`), run by llmbatch: many requests in flight, at most --qps per
second, retried on 429s, 5xx and dropped connections, answers in input order.

    OPENAI_API_KEY=sk-... python examples/http_processor.py \\
        --url https://api.openai.com/v1/chat/completions --model gpt-4o-mini --output answers/

Any server that speaks the chat completions API works, e.g. `vllm serve` or llama.cpp's server.
The key is read from the environment variable named by --api-key-env (none: no key sent).
"""

from __future__ import annotations

import argparse
import os

import llmbatch.data as data
from llmbatch.llm import HttpRequestProcessorConfig, build_processor


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the chat completions endpoint")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--qps", type=float, default=5)
    parser.add_argument("--output", help="write the answers as JSON lines to this folder")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    key = os.environ.get(args.api_key_env or "")
    config = HttpRequestProcessorConfig(
        url=args.url,
        headers={"Authorization": f"Bearer {key}"} if key else None,
        qps=args.qps,
        max_retries=3,
        batch_size=16,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: dict(
            payload=dict(
                model=args.model,
                messages=[
                    {"role": "system", "content": "You are a calculator."},
                    {"role": "user", "content": f"{row['id']} ** 3 = ?"},
                ],
                temperature=0.3,
                max_tokens=20,
            )
        ),
        postprocess=lambda row: dict(
            id=row["id"], resp=row["http_response"]["choices"][0]["message"]["content"]
        ),
    )
    answers = processor(data.range(args.rows))
    if args.output is not None:
        answers.write_json(args.output)
    else:
        for row in answers.take_all():
            print(row)
    print(processor.summary().format())


if __name__ == "__main__":
    main()
