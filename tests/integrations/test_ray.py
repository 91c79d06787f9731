"""The tutorial's code over a Ray Dataset, on a real local Ray cluster started here: the
processor returns a lazy Ray Dataset whose rows are those of the local path."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

import llmbatch.data  # noqa: E402
from llmbatch._fixtures import customers  # noqa: E402
from llmbatch.llm import (  # noqa: E402
    HttpRequestProcessorConfig,
    build_llm_processor,
    build_processor,
    vLLMEngineProcessorConfig,
)

NUM_ROWS = 6
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def customers_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("customers") / "customers.csv"
    customers.write_customers_csv(str(path), num_rows=20, seed=3)
    return str(path)


def tutorial_processor(model: str, engine_kwargs: dict):
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=engine_kwargs,
        batch_size=256,
        accelerator_type="L4",
        concurrency=4,
    )

    def preprocess(row):
        return dict(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Convert this date:\n{row['Subscription Date']}\n\n as the format:MM-DD-YYYY",
                },
            ],
            sampling_params=dict(temperature=0.0, max_tokens=MAX_TOKENS, detokenize=False),
        )

    def postprocess(row):
        return {"resp": row["generated_text"], **row}

    return build_llm_processor(config, preprocess=preprocess, postprocess=postprocess)


def test_the_tutorial_on_ray_gives_the_rows_of_the_local_path(
    ray_cluster, customers_csv, smollm2_dir, engine_kwargs
):
    processor = tutorial_processor(smollm2_dir, engine_kwargs)
    ds = ray.data.read_csv(customers_csv)
    ds = ds.limit(100000).repartition(num_blocks=4)
    processed = processor(ds.limit(NUM_ROWS))
    assert isinstance(processed, ray.data.Dataset)
    ray_rows = sorted(processed.materialize().take_all(), key=lambda row: row["Index"])

    local = tutorial_processor(smollm2_dir, {**engine_kwargs, "device": "cpu"})
    with local:
        local_rows = local(llmbatch.data.read_csv(customers_csv).limit(NUM_ROWS)).take_all()

    assert [row["Index"] for row in ray_rows] == [row["Index"] for row in local_rows]
    for ray_row, local_row in zip(ray_rows, local_rows):
        assert ray_row["error"] is None
        assert ray_row["resp"] == ray_row["generated_text"] == local_row["generated_text"]
        assert list(ray_row["generated_tokens"]) == local_row["generated_tokens"]
        assert ray_row["prompt"] == local_row["prompt"]
        assert ray_row["Subscription Date"] == local_row["Subscription Date"]


def test_a_bad_row_is_an_error_row_on_ray_too(ray_cluster, smollm2_dir, engine_kwargs):
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=4, concurrency=(1, 1)
    )

    def preprocess(row):
        temperature = -1.0 if row["id"] == 1 else 0.0
        return dict(
            prompt=f"Number {row['id']}:",
            sampling_params=dict(temperature=temperature, max_tokens=2),
        )

    processor = build_llm_processor(config, preprocess=preprocess)
    rows = sorted(processor(ray.data.range(3)).take_all(), key=lambda row: row["id"])
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert rows[1]["error"].startswith("sampling_params: ValueError: temperature")


def test_a_2_60_pipeline_on_ray(ray_cluster, smollm2_dir, engine_kwargs):
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs=engine_kwargs,
        batch_size=4,
        concurrency=(1, 1),
        chat_template_stage={"enabled": True},
        should_continue_on_error=True,
        placement_group_config={"bundle_per_worker": {"CPU": 1}},
    )

    def preprocess(row):
        temperature = -1.0 if row["id"] == 1 else 0.0
        return dict(
            messages=[{"role": "user", "content": f"Number {row['id']}:"}],
            sampling_params=dict(temperature=temperature, max_tokens=2),
        )

    processor = build_processor(config, preprocess=preprocess)
    rows = sorted(processor(ray.data.range(3)).take_all(), key=lambda row: row["id"])
    assert [row["__inference_error__"] == "" for row in rows] == [True, False, True]
    assert rows[1]["__inference_error__"] == rows[1]["error"]
    assert rows[0]["num_input_tokens"] == len(rows[0]["prompt_token_ids"])
    assert rows[1]["generated_text"] == "" and rows[1]["request_id"] == -1


def test_the_http_processor_on_ray(ray_cluster, tmp_path):
    import http.server
    import json

    from image_testing import http_server

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"echo": payload["n"] * 2}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with http_server(Echo) as url:
        config = HttpRequestProcessorConfig(url=url, batch_size=4, concurrency=(1, 1))
        processor = build_processor(
            config,
            preprocess=lambda row: {"payload": {"n": row["id"]}},
            postprocess=lambda row: {"id": row["id"], "twice": row["http_response"]["echo"]},
        )
        rows = sorted(processor(ray.data.range(6)).take_all(), key=lambda row: row["id"])
    assert [row["twice"] for row in rows] == [0, 2, 4, 6, 8, 10]
