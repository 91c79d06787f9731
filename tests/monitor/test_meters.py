"""Stage meters charge each stage its own time and count its rows, wherever it runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa

from llmbatch.llm.prefetch import Prefetcher
from llmbatch.monitor.meters import StageMeters, meter_chain
from llmbatch.monitor.rows import (
    PROMETHEUS_BUCKETS,
    ErrorLog,
    TokenLengths,
    bucket_width,
    length_bucket,
)


class Sleeper:
    """A stage that spends ``seconds`` per block and passes it on."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds

    def __call__(self, blocks):
        for block in blocks:
            time.sleep(self.seconds)
            yield block


class PrefetchingStage:
    """A stage that reads its input in a background thread, as the engine stage does."""

    name = "prefetching"

    def __call__(self, blocks):
        feed = Prefetcher(iter(blocks), depth=2)
        try:
            while (block := feed.get(block=True)) is not None:
                yield block
        finally:
            feed.close()


def blocks(count: int, rows: int = 3):
    for i in range(count):
        yield pa.table({"x": list(range(i * rows, (i + 1) * rows))})


def run(stages, source, consumer_seconds=0.0):
    stream = source
    for stage in stages:
        stream = stage(iter(stream))
    for _ in stream:
        time.sleep(consumer_seconds)


def test_each_stage_is_charged_its_own_time():
    meters = StageMeters()
    stages = [Sleeper("slow", 0.04), Sleeper("idle", 0.0), Sleeper("medium", 0.02)]
    run(meter_chain(stages, meters, ["slow", "idle", "medium"]), blocks(5), consumer_seconds=0.03)
    states = {s.name: s for s in meters.states()}
    assert list(states) == ["read", "slow", "idle", "medium", "write"]
    for name in states:
        assert (states[name].rows_in, states[name].rows_out) == (15, 15), name
    assert states["slow"].busy_s >= 5 * 0.04
    assert states["medium"].busy_s >= 5 * 0.02
    assert states["write"].busy_s >= 5 * 0.03
    # the stages waiting for slower ones are not charged their wait
    assert states["idle"].busy_s < states["medium"].busy_s / 2
    assert states["medium"].busy_s < states["slow"].busy_s
    assert states["read"].busy_s < states["medium"].busy_s / 2


def test_waiting_on_another_threads_stage_is_not_the_consumers_time():
    meters = StageMeters()
    stages = [Sleeper("upstream", 0.04), PrefetchingStage()]
    run(meter_chain(stages, meters, ["upstream", "prefetching"]), blocks(5))
    states = {s.name: s for s in meters.states()}
    assert states["upstream"].busy_s >= 5 * 0.04  # charged in the prefetch thread
    assert states["prefetching"].busy_s < states["upstream"].busy_s / 2
    assert states["prefetching"].rows_out == 15


def test_a_stage_is_seen_busy_during_a_long_call():
    meters = StageMeters()
    chain = meter_chain([Sleeper("long", 1.0)], meters, ["long"])
    worker = threading.Thread(target=run, args=(chain, blocks(1)))
    worker.start()
    time.sleep(0.5)
    during = {s.name: s for s in meters.states()}["long"]
    worker.join()
    assert during.rows_out == 0 and during.rows_in == 3
    assert 0.3 < during.busy_s < 1.0


def test_reset_zeroes_the_meters_a_built_chain_counts_into():
    meters = StageMeters()
    chain = meter_chain([Sleeper("s", 0.0)], meters, ["s"])
    run(chain, blocks(2))
    meters.reset()
    assert all(s.rows_in == s.rows_out == 0 for s in meters.states())
    run(chain, blocks(1))
    assert {s.name: s.rows_out for s in meters.states()}["s"] == 3


def test_token_lengths_in_buckets_and_prometheus_histograms():
    lengths = TokenLengths()
    table = pa.table(
        {
            "num_input_tokens": [5, 31, 33, 1000, None],
            "num_generated_tokens": pa.array([[1, 2], [7], [], [3000], None]),
            "finish_reason": pa.array([["stop", "length"], ["stop"], [], ["length"], None]),
        }
    )
    lengths.observe(table)
    assert dict(lengths.prompt) == {5: 1, 31: 1, 32: 1, 992: 1}
    assert dict(lengths.output) == {1: 1, 2: 1, 7: 1, 2944: 1}
    assert dict(lengths.finish_reasons) == {"stop": 2, "length": 2}
    bins, total = lengths.histograms["prompt"]
    cumulative = dict(zip(PROMETHEUS_BUCKETS, np.cumsum(bins).tolist()))
    assert (cumulative[5], cumulative[20], cumulative[50], cumulative[1000]) == (1, 1, 3, 4)
    assert total == [5 + 31 + 33 + 1000]
    assert lengths.take_new()["prompt"] == {5: 1, 31: 1, 32: 1, 992: 1}
    assert lengths.take_new() == {}


def test_length_buckets_are_exact_below_32_and_within_a_sixteenth_above():
    values = np.arange(1, 200_000)
    lower = length_bucket(values)
    assert (lower[:31] == values[:31]).all()
    widths = np.array([bucket_width(int(b)) for b in lower])
    assert ((lower <= values) & (values < lower + widths)).all()
    assert (widths[31:] <= values[31:] / 16).all()
    assert len(np.unique(lower)) < 300


def test_error_log_counts_reasons_and_keeps_a_few_examples():
    log = ErrorLog()
    errors = [None, ""] + [f"engine: RequestRejected: prompt {i} too long" for i in range(5)]
    errors.append("preprocess: KeyError: 'the row has no column x'")
    log.observe(pa.table({"error": pa.array(errors, pa.string())}))
    assert log.counts() == {"engine: RequestRejected": 5, "preprocess: KeyError": 1}
    assert len(log.examples["engine: RequestRejected"]) == 3
    assert [reason for reason, _ in log.take_new()].count("engine: RequestRejected") == 3
    assert log.take_new() == []
