"""Where a GPU run's time goes: a per-step trace of a whole workload, set against the card's
physical floor, and kernel-family profiles of the kinds of steps the workloads are made of.

Used by gpu_throughput.py (`--trace`, `--profile`). The floor of a step is what the Llama-8B
shape cannot avoid on the card: reading the weights once, or the step's matmul FLOPs if those
take longer (at the ~800 TFLOP/s bf16 rate an H100 reaches in large products), plus reading the
K/V of every scheduled token's context (attention cannot overlap the matmuls of its layer).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from dataclasses import dataclass, field

import torch


@dataclass(slots=True, frozen=True)
class Card:
    """What bounds a step on one GPU, for a model of `weight_bytes` in bf16."""

    bytes_per_s: float
    flops_per_s: float = 8.0e14
    weight_bytes: float = 16.06e9
    flops_per_token: float = 15.0e9
    kv_bytes_per_token: float = 131072

    @classmethod
    def detect(cls, model, kv_cache_dtype: torch.dtype = torch.bfloat16) -> Card:
        """This GPU's bandwidth, for the engine's model (its weights' bytes as stored: FP8 and
        4-bit layers count theirs, and FP8 products run at twice the bf16 rate) and its KV
        cache's dtype."""
        from llmbatch.engine.kv_cache import bytes_per_block
        from llmbatch.layers.quantization import Fp8Linear, Int4Linear

        name = torch.cuda.get_device_name()
        bandwidth = 4.8e12 if "H200" in name else 3.35e12
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        num_params = sum(p.numel() for p in model.parameters())
        for module in model.modules():
            if isinstance(module, Int4Linear) and not module.dequantized:
                # eight weights an int32; its scales and zero points are no weights
                num_params += 7 * module.qweight.numel() - module.scales.numel() * 2
        fp8 = any(isinstance(m, Fp8Linear) for m in model.modules())
        flops_per_s = 1.6e15 if fp8 else 8.0e14
        kv_bytes = bytes_per_block(model, 1, kv_cache_dtype)
        return cls(bandwidth, flops_per_s, weight_bytes, 2 * num_params, kv_bytes)

    def serial_seconds(self, num_tokens: int, context_tokens: int) -> float:
        """A step with nothing overlapped: the weights, the FLOPs and the KV reads one after
        another (scheduler_sim.py's cost model)."""
        return (
            self.weight_bytes / self.bytes_per_s
            + num_tokens * self.flops_per_token / self.flops_per_s
            + context_tokens * self.kv_bytes_per_token / self.bytes_per_s
        )

    def floor_seconds(self, num_tokens: int, context_tokens: int) -> float:
        weights = max(
            self.weight_bytes / self.bytes_per_s,
            num_tokens * self.flops_per_token / self.flops_per_s,
        )
        return weights + context_tokens * self.kv_bytes_per_token / self.bytes_per_s


# (name, the batch's tokens per step at most) — steps are grouped by how many tokens they run
BUCKETS = [("1-16", 16), ("17-64", 64), ("65-256", 256), ("257-1024", 1024), (">1024", 1 << 62)]


@dataclass
class StepTrace:
    """Wall time between step returns, with what each step ran. With async scheduling a step
    returns once the previous one is done on the device, so the gap after step k's return
    (the call that launches step k+1 and waits for step k) measures step k in steady state.

    The host's share of each call is split: queuing the next step (schedule + launch), waiting
    for this one on the device, and the rest (reading its tokens back, finishing requests). A
    call that waits little is bound by the host; a launch that waits on the device (a sync
    hidden in it) shows as a long queuing time. On CUDA each step's span on the device is
    timed too, by events recorded in stream order before and after its launch: from the end of
    the previous step's work to the end of its own (idle time while its kernels are still being
    launched included)."""

    steps: list[tuple[int, int, int]] = field(default_factory=list)  # seqs, tokens, context
    times: list[float] = field(default_factory=list)
    # per call of step(): host seconds scheduling + launching, waiting, and in total
    queue_s: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    call_s: list[float] = field(default_factory=list)
    start: float = 0.0
    # cProfile the launches of steps with more tokens than this (None: no profile)
    profile_launches_over: int | None = None
    launch_profile: cProfile.Profile = field(default_factory=cProfile.Profile)
    # step index -> (start, end) CUDA events around its launch
    events: dict[int, tuple] = field(default_factory=dict)

    def attach(self, engine) -> None:
        self.start = time.perf_counter()
        scheduler, runner = engine._scheduler, engine._runner
        schedule, step = scheduler.schedule, engine.step
        launch, resolve = runner.launch, runner.resolve

        def timed(function, into: list[float]):
            def wrapper(*args):
                begin = time.perf_counter()
                result = function(*args)
                into[-1] += time.perf_counter() - begin
                return result

            return wrapper

        def traced_schedule():
            batch = schedule()
            context = sum(r.num_computed_tokens for r in batch.requests) + batch.num_tokens
            self.steps.append((len(batch.requests), batch.num_tokens, context))
            return batch

        def traced_step():
            for column in (self.queue_s, self.wait_s):
                column.append(0.0)
            begin = time.perf_counter()
            out = step()
            self.times.append(time.perf_counter())
            self.call_s.append(self.times[-1] - begin)
            return out

        def profiled_launch(batch, previous):
            over = self.profile_launches_over
            if over is None or batch.num_tokens <= over:
                return launch(batch, previous)
            self.launch_profile.enable()
            try:
                return launch(batch, previous)
            finally:
                self.launch_profile.disable()

        def traced_launch(batch, previous):
            if runner.device.type != "cuda":
                return profiled_launch(batch, previous)
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            launched = profiled_launch(batch, previous)
            end.record()
            self.events[len(self.steps) - 1] = (start, end)
            return launched

        scheduler.schedule = timed(traced_schedule, self.queue_s)
        runner.launch = timed(traced_launch, self.queue_s)
        runner.resolve = timed(resolve, self.wait_s)
        engine.step = traced_step

    def detach(self, engine) -> None:
        del engine._scheduler.schedule, engine.step
        del engine._runner.launch, engine._runner.resolve

    def summary(self, card: Card) -> list[dict]:
        """Per kind of step (decodes only, or with prompt tokens) and bucket of tokens per step:
        steps, measured seconds, floor seconds, and the host's split of the measured time."""
        times = [self.start, *self.times]
        rows: dict[str, dict] = {}
        columns = ("seconds", "floor", "device", "own_queue", "next_queue", "wait", "rest")
        # step k is launched by call k and timed by the gap ending at call k+1's return
        for k, (seqs, tokens, context) in enumerate(self.steps):
            if k + 1 >= len(self.call_s):
                break
            kind = "decode" if tokens == seqs else "mixed"
            bucket = next(n for n, top in BUCKETS if tokens <= top)
            name = f"{kind} {bucket}"
            row = rows.setdefault(name, dict(bucket=name, steps=0, **dict.fromkeys(columns, 0.0)))
            after = k + 1
            row["steps"] += 1
            row["seconds"] += times[after + 1] - times[after]
            row["floor"] += card.floor_seconds(tokens, context)
            if k in self.events:
                start, end = self.events[k]
                row["device"] += start.elapsed_time(end) / 1000
            row["own_queue"] += self.queue_s[k]
            row["next_queue"] += self.queue_s[after]
            row["wait"] += self.wait_s[after]
            row["rest"] += self.call_s[after] - self.queue_s[after] - self.wait_s[after]
        return sorted(rows.values(), key=lambda r: r["bucket"])


def format_launch_profile(trace: StepTrace, lines: int = 30) -> str:
    """The cProfile of the profiled launches, by cumulative time."""
    out = io.StringIO()
    pstats.Stats(trace.launch_profile, stream=out).sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


def format_summary(name: str, rows: list[dict]) -> str:
    total = sum(r["seconds"] for r in rows)
    floor = sum(r["floor"] for r in rows)
    lines = [
        f"{name}: {total:.1f} s measured over the steps, floor {floor:.1f} s "
        f"({100 * floor / max(total, 1e-9):.0f}% of the floor reached)",
        "| step kind, tokens/step | steps | measured s | ms/step | floor ms/step | floor/measured "
        "| device span ms | ms queuing it | then: ms queuing the next | waiting for it "
        "| rest of the call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = ("device", "own_queue", "next_queue", "wait", "rest")
    for r in rows:
        n = r["steps"]
        ms = {key: 1000 * r[key] / n for key in keys}
        lines.append(
            f"| {r['bucket']} | {n} | {r['seconds']:.2f} | {1000 * r['seconds'] / n:.2f} | "
            f"{1000 * r['floor'] / n:.2f} | {r['floor'] / r['seconds']:.2f} | "
            + " | ".join(
                "-" if key == "device" and not r["device"] else f"{ms[key]:.2f}" for key in keys
            )
            + " |"
        )
    return "\n".join(lines)


FAMILIES = {
    "gemm": ("gemm", "cutlass", "sm90", "matmul", "nvjet", "splitk"),
    "attention": ("attn", "attention", "decode", "prefill", "kv_cache", "_merge"),
    "sampling": ("softmax", "sort", "topk", "exponential", "argmax", "multinomial", "gumbel"),
    "norm/rope/act": ("rms", "rotary", "silu"),
}


@dataclass(slots=True, frozen=True)
class StepKind:
    """A steady state to profile: `num_seqs` requests of `prompt_len` tokens, profiled after
    `warm_steps` steps (past their prefills)."""

    name: str
    num_seqs: int
    prompt_len: int
    warm_steps: int
    prefill_len: int = 0  # a request of this many prompt tokens joins each profiled step


STEP_KINDS = [
    StepKind("decode, 4 seqs (a tail)", 4, 512, 4),
    StepKind("decode, 64 seqs x ~300", 64, 256, 48),
    StepKind("decode, 256 seqs x ~200", 256, 128, 72),
    StepKind("decode, 200 seqs x ~1.5k", 200, 1400, 180),
    StepKind("decode, 512 seqs x ~300", 512, 256, 48),
    StepKind("64 decodes + 256-token prompt", 64, 256, 48, prefill_len=256),
    # below max_num_seqs (512), so that each step's new prompt is admitted
    StepKind("480 decodes + 256-token prompt", 480, 256, 48, prefill_len=256),
    StepKind("256 decodes + 2k-token prompt", 256, 128, 72, prefill_len=2048),
]


def profile_kind(llm, kind: StepKind, vocab: int, steps: int = 6) -> dict:
    """Device time per step by kernel family, and the wall time per step, for one step kind."""
    from torch.profiler import ProfilerActivity, profile

    from llmbatch import SamplingParams

    engine = llm.llm_engine
    gen = torch.Generator().manual_seed(len(kind.name))
    length = kind.warm_steps + 2 * steps + 4
    params = SamplingParams(max_tokens=length, ignore_eos=True, detokenize=False)
    one = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False)

    def prompt(length: int) -> list[int]:
        return torch.randint(10, vocab - 10, (length,), generator=gen).tolist()

    names = [f"profile-{kind.name}-{i}" for i in range(kind.num_seqs)]
    for name in names:
        engine.add_request(name, prompt(kind.prompt_len), params)

    def run_steps(count: int) -> None:
        for _ in range(count):
            if kind.prefill_len:
                names.append(f"profile-{kind.name}-prefill-{len(names)}")
                engine.add_request(names[-1], prompt(kind.prefill_len), one)
            engine.step()

    for _ in range(kind.warm_steps):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    run_steps(steps)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_steps(steps)
        torch.cuda.synchronize()
    for name in names:
        engine.abort_request(name)
    while engine.has_unfinished():
        engine.step()
    print(f"{kind.name}: top kernels (device time over {steps} steps)")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=14), flush=True)
    families = dict.fromkeys([*FAMILIES, "other"], 0.0)
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0) or 0
        if event.device_type.name != "CUDA" or not device_us:
            continue
        key = event.key.lower()
        family = next((f for f, words in FAMILIES.items() if any(w in key for w in words)), "other")
        families[family] += device_us / steps / 1000
    return {"kind": kind.name, "wall_ms": 1000 * wall, **families}


def format_profiles(rows: list[dict]) -> str:
    names = [*FAMILIES, "other"]
    lines = [
        "| step kind | wall ms/step | device ms | " + " | ".join(names) + " | host gap ms |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for r in rows:
        device = sum(r[n] for n in names)
        lines.append(
            f"| {r['kind']} | {r['wall_ms']:.2f} | {device:.2f} | "
            + " | ".join(f"{r[n]:.2f}" for n in names)
            + f" | {max(r['wall_ms'] - device, 0):.2f} |"
        )
    return "\n".join(lines)
