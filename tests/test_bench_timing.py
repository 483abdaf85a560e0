"""bench.timing's time_call: the calls it times are queued behind a GPU-side wait, so that a slow host
reads as a slow host (host_ms, host_bound), not as slow kernels (ms).

Without a GPU, on a simulated stream: a host clock, and a GPU that runs each command in order, no
earlier than the host issued it. On a GPU, with real calls.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from bench import timing
from bench.cases import HOST_BOUND_FRACTION
from bench.timing import QUEUE_ATTEMPTS, time_call
from tests.conftest import ON_GPU

CYCLES_PER_MS = 2e6  # the simulated GPU's clock
EVENT_CREATION_MS = 0.01  # host time of an event's first record, which creates the CUDA event


class SimulatedStream:
    """One stream in milliseconds: `host` is the host's clock, `gpu` when the GPU finishes what it was
    given. A call costs the host `host_ms_per_call(calls so far)` and the GPU `gpu_ms_per_call`."""

    def __init__(self, host_ms_per_call, gpu_ms_per_call: float) -> None:
        self.host_ms_per_call = host_ms_per_call
        self.gpu_ms_per_call = gpu_ms_per_call
        self.host = self.gpu = 0.0
        self.calls = self.waits = 0

    def run_on_gpu(self, ms: float) -> float:
        self.gpu = max(self.gpu, self.host) + ms
        return self.gpu

    def call(self) -> None:
        self.host += self.host_ms_per_call(self.calls)
        self.calls += 1
        self.run_on_gpu(self.gpu_ms_per_call)

    def sleep(self, cycles: int) -> None:
        self.waits += 1
        self.run_on_gpu(cycles / CYCLES_PER_MS)

    def synchronize(self) -> None:
        self.host = max(self.host, self.gpu)

    def event(self, enable_timing: bool = False) -> SimpleNamespace:
        stream, event = self, SimpleNamespace(at=None)

        def record() -> None:
            if event.at is None:
                stream.host += EVENT_CREATION_MS
            event.at = stream.run_on_gpu(0.0)

        event.record = record
        event.elapsed_time = lambda end: end.at - event.at
        return event


@pytest.fixture
def simulate(monkeypatch):
    """simulate(host_ms_per_call, gpu_ms_per_call): time_call on a SimulatedStream, and that stream."""

    def run(host_ms_per_call, gpu_ms_per_call: float):
        stream = SimulatedStream(host_ms_per_call, gpu_ms_per_call)
        monkeypatch.setattr(torch.cuda, "Event", stream.event)
        monkeypatch.setattr(torch.cuda, "synchronize", stream.synchronize)
        monkeypatch.setattr(torch.cuda, "_sleep", stream.sleep)
        monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: stream.host / 1e3))
        timing._spin_cycles_per_ms.cache_clear()
        try:
            return time_call(stream.call), stream
        finally:
            timing._spin_cycles_per_ms.cache_clear()

    return run


def test_a_slow_host_reads_as_the_host_not_as_the_kernels(simulate):
    """The host takes 1 ms to issue a call the GPU runs in 0.25: the GPU time is 0.25, the host's 1.0
    (no event created on its clock: it would add EVENT_CREATION_MS), host-bound. Timed one call after
    another onto an idle GPU, as before v0.46, the reading was the host's 1.0 ms."""
    result, stream = simulate(lambda calls: 1.0, 0.25)
    assert result.ms == pytest.approx(0.25) and result.host_ms == pytest.approx(1.0)
    assert result.host_bound and stream.waits > 1


def test_calls_too_long_for_a_second_batch_are_timed_in_one(simulate):
    """REP_MS / 4 ms a call is fewer than HOST_CALLS: the first batch is all of the samples."""
    result, stream = simulate(lambda calls: 0.02, 4.0)
    assert result.ms == pytest.approx(4.0) and stream.waits == 1 + 1


def test_a_fast_host_reads_the_kernels(simulate):
    result, _ = simulate(lambda calls: 0.02, 0.25)
    assert result.ms == pytest.approx(0.25) and result.host_ms == pytest.approx(0.02)
    assert not result.host_bound


def test_a_batch_the_host_outlasts_is_issued_again_behind_a_longer_wait(simulate):
    """The host issues the first calls (correctness, estimate, warm-up) in 0.02 ms, then slows to 6 ms
    a call of 2.5 ms on the GPU: the first batch's wait, sized from 0.02 ms, ends before its calls are
    issued, and its pairs read the host's pace; it is issued again behind a wait sized from what it
    took. The second batch's wait covers what the host is slower than the GPU."""
    slowed_after = 1 + 3 + 2  # the untimed call, ESTIMATE_CALLS, the warm-up's 5 ms of 2.5 ms calls
    result, stream = simulate(lambda calls: 0.02 if calls < slowed_after else 6.0, 2.5)
    assert stream.waits == 1 + 2 + 1 and QUEUE_ATTEMPTS >= 2  # calibration, first batch twice, second
    assert result.ms == pytest.approx(2.5) and result.host_ms == pytest.approx(6.0)


@pytest.mark.skipif(not ON_GPU, reason="bench.timing times CUDA events; no GPU here")
def test_time_call_reads_the_kernels_of_a_call_the_host_bounds():
    """A call that sleeps 2 ms on the host before a small kernel reads that kernel's microseconds of
    GPU time, 2 ms of host: host-bound. A call of ~1 ms of copies on the GPU, issued in microseconds,
    reads its copies and is not host-bound."""
    small, big = torch.randn(1024, device="cuda"), torch.randn(2**26, device="cuda")
    out = torch.empty_like(big)

    def sleepy():
        time.sleep(2e-3)
        small.mul_(1.0)

    slow_host = time_call(sleepy)
    assert slow_host.host_ms >= 2.0 and slow_host.ms < 0.1
    assert slow_host.host_ms >= HOST_BOUND_FRACTION * slow_host.ms and slow_host.host_bound
    gpu_bound = time_call(lambda: [out.copy_(big) for _ in range(4)])
    assert gpu_bound.ms >= 0.5 and gpu_bound.host_ms < 0.5 * gpu_bound.ms and not gpu_bound.host_bound
