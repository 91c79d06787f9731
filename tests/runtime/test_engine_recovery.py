"""Jobs survive their engine: a replica process killed mid-run is started again and every row
comes out once; a request that kills its engine every time becomes an error row; with no
restart left the job stops with the rows already written kept, and a rerun finishes them; an
engine that stops making progress is reported with every thread's stack."""

from __future__ import annotations

import os
import signal
import time

import pyarrow.parquet as pq
import pytest
import torch

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import LLMProcessorConfig, build_llm_processor
from llmbatch.runtime.fault_injection import CRASH_ENV, STALL_ENV
from llmbatch.runtime.recovery import EngineFailed
from llmbatch.runtime.watchdog import EngineStalled

pytestmark = pytest.mark.slow

MAX_TOKENS = 4
WORDS = ["apple", "river", "seven", "blue", "stone", "cloud", "tiger", "lamp"]
POISON = "tiger"
POISON_SEED = 666


def request_of(row: dict) -> dict:
    params = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
    if row["word"] == POISON:
        params["seed"] = POISON_SEED
    return {
        "messages": [{"role": "user", "content": f"Say {row['word']}."}],
        "sampling_params": params,
    }


def config_of(smollm2_dir, engine_kwargs, **fields) -> LLMProcessorConfig:
    return LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={**engine_kwargs, "device": "cpu"},
        batch_size=2,
        **fields,
    )


@pytest.fixture(scope="module")
def expected(reference_llm) -> dict[str, str]:
    outputs = reference_llm.chat(
        [[{"role": "user", "content": f"Say {w}."}] for w in WORDS],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
    )
    return {word: output.text for word, output in zip(WORDS, outputs)}


def rows_of(words: list[str]):
    return data.from_items([{"word": w} for w in words])


def test_a_replica_killed_mid_run_is_restarted_and_every_row_comes_once(
    smollm2_dir, engine_kwargs, expected
):
    killed: list[int] = []
    config = config_of(smollm2_dir, engine_kwargs, concurrency=(2, 2))
    with build_llm_processor(config, preprocess=request_of) as processor:

        def postprocess(row):
            if not killed:
                killed.append(processor.engine.pids[1])
                os.kill(killed[0], signal.SIGKILL)
            return {"word": row["word"], "text": row["generated_text"]}

        processor.postprocess = postprocess
        rows = processor(rows_of(WORDS)).take_all()
        assert processor.engine.restarts == 1
        assert processor.engine.pids[1] != killed[0]
    assert [row["word"] for row in rows] == WORDS
    for row in rows:
        assert row["error"] is None
        assert row["text"] == expected[row["word"]]


def test_a_request_that_kills_its_replica_every_time_ends_as_an_error_row(
    smollm2_dir, engine_kwargs, expected, monkeypatch
):
    monkeypatch.setenv(CRASH_ENV, str(POISON_SEED))
    config = config_of(smollm2_dir, engine_kwargs, concurrency=(2, 2))
    with build_llm_processor(config, preprocess=request_of) as processor:
        rows = processor(rows_of(WORDS)).take_all()
        assert processor.engine.restarts >= 2
    assert [row["word"] for row in rows] == WORDS
    for row in rows:
        if row["word"] == POISON:
            assert row["error"].startswith(
                "engine: RequestRejected: the engine died every time it ran this request"
            )
            assert "exited with code -9" in row["error"]
            assert row["generated_text"] is None
        else:
            assert row["error"] is None
            assert row["generated_text"] == expected[row["word"]]


def test_an_engine_in_this_process_is_rebuilt_and_the_poison_row_given_up(
    smollm2_dir, engine_kwargs, expected, monkeypatch
):
    monkeypatch.setenv(CRASH_ENV, str(POISON_SEED))
    with build_llm_processor(config_of(smollm2_dir, engine_kwargs), preprocess=request_of) as p:
        rows = p(rows_of(WORDS)).take_all()
        assert p.engine.restarts >= 2
    poison = [row for row in rows if row["word"] == POISON][0]
    assert "engine failure injected for a test" in poison["error"]
    assert all(row["generated_text"] == expected[row["word"]] for row in rows if row is not poison)


def test_with_no_restart_left_the_job_stops_and_a_rerun_finishes_it(
    smollm2_dir, engine_kwargs, expected, monkeypatch, tmp_path
):
    out = tmp_path / "out"
    monkeypatch.setenv(CRASH_ENV, str(POISON_SEED))
    config = config_of(smollm2_dir, engine_kwargs, max_engine_restarts=0, max_pending_requests=2)
    with build_llm_processor(config, preprocess=request_of) as processor:
        with pytest.raises(EngineFailed, match=r"(?s)died once in a row.*injected for a test"):
            processor(rows_of(WORDS)).write_parquet(out)
    committed = pq.read_table(out).to_pylist()
    assert 0 < len(committed) < WORDS.index(POISON) + 1
    assert [row["word"] for row in committed] == WORDS[: len(committed)]

    monkeypatch.delenv(CRASH_ENV)
    with build_llm_processor(config, preprocess=request_of) as processor:
        processor(rows_of(WORDS)).write_parquet(out)
        assert processor.summary().rows == len(WORDS) - len(committed)
    rows = pq.read_table(out).to_pylist()
    assert [row["word"] for row in rows] == WORDS
    assert all(row["generated_text"] == expected[row["word"]] for row in rows)


def test_a_stalled_engine_stops_the_job_with_the_stacks(smollm2_dir, engine_kwargs, monkeypatch):
    monkeypatch.setenv(STALL_ENV, "2")
    config = config_of(smollm2_dir, engine_kwargs, engine_stall_timeout_s=2)
    with build_llm_processor(config, preprocess=request_of) as processor:
        assert processor.engine.config is not None  # loaded before the clock starts
        started = time.monotonic()
        with pytest.raises(EngineStalled) as stalled:
            processor(rows_of(WORDS)).take_all()
    assert time.monotonic() - started < 15
    message = str(stalled.value)
    assert "the engine made no progress for 2 s (engine_stall_timeout_s)" in message
    assert 'Thread "MainThread"' in message and "in before_step" in message


def test_a_stalled_replica_stops_the_job_with_its_own_stacks(
    smollm2_dir, engine_kwargs, monkeypatch
):
    monkeypatch.setenv(STALL_ENV, "2")
    config = config_of(smollm2_dir, engine_kwargs, concurrency=(2, 2), engine_stall_timeout_s=3)
    with build_llm_processor(config, preprocess=request_of) as processor:
        with pytest.raises(EngineStalled) as stalled:
            processor(rows_of(WORDS)).take_all()
    message = str(stalled.value)
    assert "made no progress for 3 s" in message and "--- engine replica" in message
    assert "before_step" in message.split("--- engine replica", 1)[1]


@pytest.mark.gpu
def test_an_engine_on_the_gpu_is_rebuilt_with_its_memory_freed_first(
    smollm2_dir, engine_kwargs, monkeypatch
):
    monkeypatch.setenv(CRASH_ENV, str(POISON_SEED))
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=2)
    with build_llm_processor(config, preprocess=request_of) as processor:
        assert processor.engine.config.on_cuda  # loaded before measuring
        loaded = torch.cuda.memory_allocated()
        rows = processor(rows_of(WORDS)).take_all()
        assert processor.engine.restarts >= 2
        assert torch.cuda.memory_allocated() <= loaded * 1.05
    assert [row["error"] is None for row in rows] == [w != POISON for w in WORDS]
