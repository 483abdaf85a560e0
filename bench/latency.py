"""Small-M latency: forward without grad at N = LATENCY_N, a few rows, where launch cost dominates.

Two numbers per call: host wall time of back-to-back calls (what eager inference pays, dispatch and
launch included) and GPU time per call under CUDA-graph replay (what is left once launches are free).
The inputs fit in L2 and stay there: this measures latency, not bandwidth. At M = TRAIN_HOST_ROWS also
the host wall time of a forward+backward through autograd: set against the GPU time of the sweep's
forward+backward, it tells whether a row of that table can be bound by the host.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from bench.cases import EPS, LATENCY_DTYPE, LATENCY_N, LATENCY_ROWS
from bench.correctness import check, reference
from bench.errors import first_line
from bench.implementations import Implementation
from bench.inputs import random_case, release_memory, torch_dtype
from bench.timing import median_ms

HOST_CALLS = 2000  # back-to-back calls timed by the host clock: ~0.1 s at 50 us each
TRAIN_HOST_ROWS = 1
TRAIN_HOST_CALLS = 300  # forward+backward calls: ~0.05 s at 150 us each
HOST_WARMUP_CALLS = 20
GRAPH_CALLS = 100  # calls captured in one CUDA graph; one replay is timed and divided by this


def host_us_per_call(call: Callable[[], object], calls: int = HOST_CALLS) -> float:
    """Host wall microseconds per call over `calls` back-to-back calls, synchronized once at the end."""
    for _ in range(HOST_WARMUP_CALLS):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def graph_us_per_call(call: Callable[[], object], calls: int = GRAPH_CALLS) -> float:
    """GPU microseconds per call: `calls` calls captured in one CUDA graph, replays timed by events."""
    side = torch.cuda.Stream()  # capture wants the first call on a side stream (lazy initialisations)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    return median_ms(graph.replay) * 1e3 / calls


def _measure_training(impl: Implementation, x: torch.Tensor, weight: torch.Tensor, record: dict) -> None:
    """Adds train_host_us, the host time of a forward+backward once checked against float64 (or
    train_reason: why not)."""
    dy = torch.randn_like(x)
    outcome = check(impl.fn, x, weight, dy, EPS, reference(x, weight, dy, EPS))
    if outcome.status != "ok":
        record["train_reason"] = f"{outcome.status}: {outcome.reason}"
        return
    xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
    try:
        record["train_host_us"] = host_us_per_call(
            lambda: torch.autograd.grad(impl.fn(xg, wg, EPS), (xg, wg), dy), calls=TRAIN_HOST_CALLS
        )
    except Exception as exc:
        record["train_reason"] = first_line(exc)


def _measure(impl: Implementation, x: torch.Tensor, weight: torch.Tensor, record: dict) -> dict:
    if record["rows"] == TRAIN_HOST_ROWS:
        _measure_training(impl, x, weight, record)
    with torch.no_grad():

        def call() -> torch.Tensor:
            return impl.fn(x, weight, EPS)

        try:
            record.update(status="ok", host_us=host_us_per_call(call))
        except Exception as exc:
            record.update(status="failed", reason=first_line(exc))
            return record
        try:
            record["graph_us"] = graph_us_per_call(call)
        except Exception as exc:  # not capturable: a CPU sync or a lazy compile inside the call
            record["graph_reason"] = first_line(exc)
    return record


def _cell(record: dict) -> str:
    if record["status"] != "ok":
        return record["status"]
    graph = f"{record['graph_us']:.1f}" if "graph_us" in record else "no graph"
    return f"{record['host_us']:.1f}/{graph} us"


def measure_latency(impls: list[Implementation], log: Callable[[str], None]) -> list[dict]:
    """One record per (implementation, M in LATENCY_ROWS), each checked against float64 first.

    ``log`` receives one line per M. Records carry status "ok", "wrong", "failed" or "skipped" with the
    reason; for "ok" host_us, and graph_us, or graph_reason when the call could not be captured; at
    M = TRAIN_HOST_ROWS train_host_us, or train_reason.
    """
    records = []
    for rows in LATENCY_ROWS:
        x, weight, _ = random_case(rows, LATENCY_N, torch_dtype(LATENCY_DTYPE))
        ref = reference(x, weight, None, EPS)
        line = []
        for impl in impls:
            outcome = check(impl.fn, x, weight, None, EPS, ref)
            record = {
                "impl": impl.name,
                "group": impl.group,
                "dtype": LATENCY_DTYPE,
                "rows": rows,
                "n": LATENCY_N,
            }
            record.update(check=outcome.status, status=outcome.status, reason=outcome.reason)
            records.append(_measure(impl, x, weight, record) if outcome.status == "ok" else record)
            line.append(f"{impl.name} {_cell(records[-1])}")
        log(f"latency {LATENCY_DTYPE} N={LATENCY_N} M={rows} (host/graph per call): " + " | ".join(line))
    release_memory()
    return records
