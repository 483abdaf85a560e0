"""Small-M latency: forward without grad at N = LATENCY_N, a few rows, where launch cost dominates.

Two numbers per call: host wall time of back-to-back calls (what eager inference pays, dispatch and
launch included) and GPU time per call under CUDA-graph replay (what is left once launches are free).
A shared machine's host speed drifts within seconds (bench/NOTES.md v0.28): the host times are taken
in LATENCY_HOST_ROUNDS rounds, each timing every implementation in turn, and each is the median of its
rounds, with their spread (max - min) recorded beside it.
The inputs fit in L2 and stay there: this measures latency, not bandwidth. At M = TRAIN_HOST_ROWS also
the host wall time of a forward+backward through autograd: set against the GPU time of the sweep's
forward+backward, it tells whether a row of that table can be bound by the host.

The issue's host target is a ratio to F.rms_norm's time at M = 1, which the rounds above judge
poorly: a round's reading moves by 30-70% with the host's speed within the 10 ms it takes, so two
implementations' medians of rounds put triton's ratio anywhere in 1.55-2.56x over two H100 hosts
(bench/NOTES.md v0.55). At M = REFERENCE_PAIRED_ROWS each of ours is also timed call by call
against REFERENCE_IMPL, the two alternating, so that both see the host at the same speed.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import torch

from bench.cases import EPS, LATENCY_DTYPE, LATENCY_HOST_ROUNDS, LATENCY_N, LATENCY_ROWS
from bench.correctness import check, reference
from bench.errors import first_line
from bench.implementations import Implementation
from bench.inputs import random_case, release_memory, torch_dtype
from bench.timing import median_ms

HOST_CALLS = 400  # back-to-back calls a round, timed by the host clock: ~0.02 s at 50 us each
TRAIN_HOST_ROWS = 1
TRAIN_HOST_CALLS = 100  # forward+backward calls a round: ~0.02 s at 200 us each
HOST_WARMUP_CALLS = 20
GRAPH_CALLS = 100  # calls captured in one CUDA graph; one replay is timed and divided by this
REFERENCE_IMPL = "torch-F"  # what the host ratio is taken against: F.rms_norm
REFERENCE_PAIRED_ROWS = 1
PAIRED_CALLS = 2000  # calls of each of the pair, timed one by one: ~0.1 s at 12 + 30 us a pair


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


def paired_host_us(
    call: Callable[[], object], reference: Callable[[], object], calls: int = PAIRED_CALLS
) -> tuple[float, float]:
    """Median host microseconds of one call of `call` and of `reference`, each call timed on its own
    by the host clock, the two alternating call by call and taking turns to go first: a ratio of
    the two that the host's drifting speed does not move. The GPU work of a call at these sizes is
    a few microseconds, so back-to-back calls never wait for it."""
    for _ in range(HOST_WARMUP_CALLS):
        call()
        reference()
    torch.cuda.synchronize()
    pair, times = (call, reference), ([], [])
    clock = time.perf_counter
    for i in range(calls):
        first, second = i % 2, 1 - i % 2
        start = clock()
        pair[first]()
        middle = clock()
        pair[second]()
        end = clock()
        times[first].append(middle - start)
        times[second].append(end - middle)
    torch.cuda.synchronize()
    return statistics.median(times[0]) * 1e6, statistics.median(times[1]) * 1e6


def capture_calls(call: Callable[[], object], calls: int = GRAPH_CALLS) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `calls` calls back to back."""
    side = torch.cuda.Stream()  # capture wants the first call on a side stream (lazy initialisations)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            call()
    return graph


def graph_us_per_call(call: Callable[[], object], calls: int = GRAPH_CALLS) -> float:
    """GPU microseconds per call: `calls` calls captured in one CUDA graph, replays timed by events."""
    return median_ms(capture_calls(call, calls).replay) * 1e3 / calls


def _training_step(
    impl: Implementation, x: torch.Tensor, weight: torch.Tensor, record: dict
) -> Callable[[], object] | None:
    """A forward+backward of impl once checked against float64, or None with train_reason set."""
    dy = torch.randn_like(x)
    outcome = check(impl.fn, x, weight, dy, EPS, reference(x, weight, dy, EPS))
    if outcome.status != "ok":
        record["train_reason"] = f"{outcome.status}: {outcome.reason}"
        return None
    xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
    return lambda: torch.autograd.grad(impl.fn(xg, wg, EPS), (xg, wg), dy)


def _host_rounds(timed: list[tuple[dict, str, str, Callable[[], object], int, bool]]) -> None:
    """Times every (record, field, reason field, call, calls, grad) in turn, LATENCY_HOST_ROUNDS times
    over, with autograd on or off as grad says; sets record[field] to the median of its rounds and
    record[field + "_spread"] to their max - min, or, where the call raised, record[reason field]
    to the error and no time."""
    rounds: list[list[float]] = [[] for _ in timed]
    failed: dict[int, str] = {}
    for _ in range(LATENCY_HOST_ROUNDS):
        for i, (_record, _field, _reason, call, calls, grad) in enumerate(timed):
            if i in failed:
                continue
            try:
                with torch.set_grad_enabled(grad):
                    rounds[i].append(host_us_per_call(call, calls=calls))
            except Exception as exc:
                failed[i] = first_line(exc)
    for i, (record, field, reason, *_) in enumerate(timed):
        if i in failed:
            record[reason] = failed[i]
        else:
            record[field] = statistics.median(rounds[i])
            record[field + "_spread"] = max(rounds[i]) - min(rounds[i])


def _time_against_reference(impls: list[Implementation], records: list[dict], x: torch.Tensor, weight) -> None:
    """paired_host_us of each of ours that ran, against REFERENCE_IMPL where it ran too."""
    ran = {impl.name: impl for impl, record in zip(impls, records) if "host_us" in record}
    reference = ran.get(REFERENCE_IMPL)
    if reference is None:
        return
    reference_call = functools.partial(reference.fn, x, weight, EPS)
    with torch.no_grad():
        for impl, record in zip(impls, records):
            if impl.group == "ours" and impl.name in ran:
                ours, theirs = paired_host_us(functools.partial(impl.fn, x, weight, EPS), reference_call, PAIRED_CALLS)
                record["paired_host_us"], record["reference_paired_host_us"] = ours, theirs
                record["paired_reference"], record["paired_calls"] = REFERENCE_IMPL, PAIRED_CALLS


def _cell(record: dict) -> str:
    if record["status"] != "ok":
        return record["status"]
    graph = f"{record['graph_us']:.1f}" if "graph_us" in record else "no graph"
    return f"{record['host_us']:.1f}/{graph} us"


def measure_latency(impls: list[Implementation], log: Callable[[str], None]) -> list[dict]:
    """One record per (implementation, M in LATENCY_ROWS), each checked against float64 first.

    ``log`` receives one line per M. Records carry status "ok", "wrong", "failed" or "skipped" with the
    reason; for "ok" host_us and host_us_spread, and graph_us, or graph_reason when the call could not
    be captured; at M = TRAIN_HOST_ROWS train_host_us and train_host_us_spread, or train_reason; at M =
    REFERENCE_PAIRED_ROWS, for ours, paired_host_us and reference_paired_host_us (REFERENCE_IMPL's time
    in the same pairing), with paired_reference and paired_calls.
    """
    records = []
    for rows in LATENCY_ROWS:
        x, weight, _ = random_case(rows, LATENCY_N, torch_dtype(LATENCY_DTYPE))
        ref = reference(x, weight, None, EPS)
        timed = []
        these = []
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
            these.append(record)
            if outcome.status != "ok":
                continue
            timed.append((record, "host_us", "reason", functools.partial(impl.fn, x, weight, EPS), HOST_CALLS, False))
            if rows == TRAIN_HOST_ROWS:
                step = _training_step(impl, x, weight, record)
                if step is not None:
                    timed.append((record, "train_host_us", "train_reason", step, TRAIN_HOST_CALLS, True))
        _host_rounds(timed)
        if rows == REFERENCE_PAIRED_ROWS:
            _time_against_reference(impls, these, x, weight)
        for impl, record in zip(impls, these):
            if record["status"] == "ok" and "host_us" not in record:
                record["status"] = "failed"  # its call raised: _host_rounds gave the reason
            elif record["status"] == "ok":
                try:
                    with torch.no_grad():
                        record["graph_us"] = graph_us_per_call(functools.partial(impl.fn, x, weight, EPS))
                except Exception as exc:  # not capturable: a CPU sync or a lazy compile inside the call
                    record["graph_reason"] = first_line(exc)
        records.extend(these)
        line = [f"{record['impl']} {_cell(record)}" for record in these]
        log(f"latency {LATENCY_DTYPE} N={LATENCY_N} M={rows} (host/graph per call): " + " | ".join(line))
    release_memory()
    return records
