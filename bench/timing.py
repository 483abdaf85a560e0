"""GPU time of one call, by CUDA events, and the copy bandwidth every result is compared with.

Not triton.testing.do_bench: it zeroes a 256 MB buffer before every call to flush L2, which doubles the
wall time here for nothing, since every throughput case moves at least 512 MiB, many times the L2 (the
latency table wants L2-resident inputs anyway).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, NamedTuple

import torch

from bench.cases import HOST_BOUND_FRACTION

# Per measurement: the function runs WARMUP_MS of GPU time untimed (clocks up; it has already run in
# the correctness check and a few more times here, so JIT and allocator are warm), then REP_MS timed, one
# event pair per call, at least MIN_SAMPLES calls. Small on purpose: the full run makes ~2000
# measurements, and a 2^27-element call takes 0.2-4 ms, so REP_MS still gives 8-125 samples.
WARMUP_MS = 5.0
REP_MS = 25.0
MIN_SAMPLES = 8
ESTIMATE_CALLS = 3  # calls timed together to size the warm-up and the sample count
# The host's time to issue one call is read over the first HOST_CALLS timed calls, issued onto a
# waiting GPU: few enough that their launches never fill the launch queue (which would make the host
# wait for the GPU and read as slow as it), so the reading is the host's own.
HOST_CALLS = 8
# The timed calls are queued behind a GPU-side wait (torch.cuda._sleep spins the GPU's clock): the
# host issues while the GPU waits, the GPU then runs the calls back to back, and each event pair
# brackets kernels, not the host's pace (cells the host bounded read up to 10x slow, bench/NOTES.md
# v0.42, v0.46). Two batches, each behind its own wait: QUEUE_WAIT_MARGIN_MS plus QUEUE_WAIT_FACTOR
# times the host's lead its calls need: one call's issue, then each call's whole issue in the first
# batch, what the host is slower than the GPU in the second. A call the GPU began before the host had
# issued all of it is not counted; a batch with less than half of its calls left is issued again
# behind a wait for its whole issue, up to QUEUE_ATTEMPTS times (a host that slows mid-run, a call that
# synchronizes), then kept as it is. The launch queue filling up (about a thousand launches) makes the
# host wait, which the GPU's start of each call still tells apart.
QUEUE_WAIT_FACTOR = 1.5
QUEUE_WAIT_MARGIN_MS = 0.2
QUEUE_ATTEMPTS = 3
SPIN_CALIBRATION_CYCLES = 10**7  # ~5 ms at the H100's ~1.98 GHz

# The ceiling: one device-to-device copy of a buffer far larger than L2, read + written.
COPY_BUFFER_BYTES = 2 * 2**30


class CallTime(NamedTuple):
    """One measurement: the median GPU milliseconds of a call (event pair per call, the calls queued
    behind a GPU-side wait, so the kernels' time) and the host's milliseconds to issue one."""

    ms: float
    host_ms: float

    @property
    def host_bound(self) -> bool:
        """Whether the host took at least HOST_BOUND_FRACTION of the GPU's time to issue the call: issued
        one after another without a queue ahead of them, such calls run at the host's pace."""
        return self.host_ms >= HOST_BOUND_FRACTION * self.ms


def time_call(fn: Callable[[], object]) -> CallTime:
    """Median GPU milliseconds of one ``fn()`` call, timed with a CUDA event pair per call after warm-up,
    the calls queued behind a GPU-side wait, and the host's milliseconds to issue one."""
    fn()  # untimed: a path the correctness check did not take (backward with retain_graph) may compile
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    estimate_start = time.perf_counter()
    for _ in range(ESTIMATE_CALLS):
        fn()
    host_ms_per_call = (time.perf_counter() - estimate_start) * 1e3 / ESTIMATE_CALLS
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / ESTIMATE_CALLS, 1e-3)
    for _ in range(int(WARMUP_MS / estimate_ms)):
        fn()
    samples = max(MIN_SAMPLES, HOST_CALLS, int(REP_MS / estimate_ms))
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(samples)]
    # An event is created on its first record, ~10 us of host each (H100 machine, bench/NOTES.md v0.44),
    # which the host's reading would count as the call's. Recorded once here, every event exists before
    # the clock starts; the timed records overwrite these.
    for begin, finish in pairs:
        begin.record()
        finish.record()
    # Two batches: the HOST_CALLS calls the host's time is read over, which tell the GPU's time a call;
    # then the rest, behind a wait sized from both.
    readings: list[float] = []
    host_ms = None
    for batch in (pairs[:HOST_CALLS], pairs[HOST_CALLS:]):
        if not batch:  # samples == HOST_CALLS: calls of REP_MS / HOST_CALLS or more
            continue
        for attempt in range(QUEUE_ATTEMPTS):
            # The host's lead each call adds: its whole issue, until the GPU's time is known and while a
            # batch is issued again; then only what the host is slower than the GPU. The first call's
            # issue is ahead of the GPU's start either way.
            behind_ms = host_ms_per_call
            if readings and attempt == 0:
                behind_ms = max(host_ms_per_call - statistics.median(readings), 0.0)
            wait_ms = QUEUE_WAIT_MARGIN_MS + QUEUE_WAIT_FACTOR * (host_ms_per_call + len(batch) * behind_ms)
            issue = _issue_behind_wait(fn, batch, wait_ms, origin=start)
            host_ms = issue.host_ms_per_call if host_ms is None else host_ms
            host_ms_per_call = max(host_ms_per_call, issue.host_ms_per_call)
            if 2 * len(issue.queued_ms) >= len(batch):
                break
        readings += issue.queued_ms or issue.all_ms
    return CallTime(statistics.median(readings), host_ms)


class _Issue(NamedTuple):
    host_ms_per_call: float
    all_ms: list[float]  # the GPU's milliseconds of each call
    queued_ms: list[float]  # those of the calls the GPU began after the host had issued all of them


def _issue_behind_wait(fn: Callable[[], object], batch: list, wait_ms: float, origin) -> _Issue:
    """Issue ``fn`` once between each event pair of ``batch``, behind a GPU-side wait of ``wait_ms``;
    ``origin``, an event, marks on the GPU the host's start."""
    cycles = int(wait_ms * _spin_cycles_per_ms())
    torch.cuda.synchronize()  # an idle GPU: origin is recorded as soon as it is issued
    issue_start = time.perf_counter()
    origin.record()
    torch.cuda._sleep(cycles)
    calls_start = time.perf_counter()
    issued = []
    for begin, finish in batch:
        begin.record()
        fn()
        finish.record()
        issued.append(time.perf_counter())
    torch.cuda.synchronize()
    all_ms = [begin.elapsed_time(finish) for begin, finish in batch]
    # The GPU records origin no earlier than the host issued it: a call that began on the GPU later,
    # counted from origin, than the host finished issuing it, counted from issue_start, began after,
    # and the GPU never waited for the host inside it.
    queued_ms = [
        ms
        for ms, (begin, _), done in zip(all_ms, batch, issued)
        if origin.elapsed_time(begin) >= (done - issue_start) * 1e3
    ]
    return _Issue((issued[-1] - calls_start) * 1e3 / len(batch), all_ms, queued_ms)


@functools.cache
def _spin_cycles_per_ms() -> float:
    """The GPU clock cycles torch.cuda._sleep spins in a millisecond, read once."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(SPIN_CALIBRATION_CYCLES)
    end.record()
    torch.cuda.synchronize()
    return SPIN_CALIBRATION_CYCLES / start.elapsed_time(end)


def median_ms(fn: Callable[[], object]) -> float:
    """Median GPU milliseconds of one ``fn()`` call (time_call's)."""
    return time_call(fn).ms


def _copy_ms() -> float:
    src = torch.randn(COPY_BUFFER_BYTES // 4, device="cuda")  # 4-byte floats
    dst = torch.empty_like(src)
    return median_ms(lambda: dst.copy_(src))


def percent_of_ceiling(moved_bytes: float, ms: float, ceiling_gbps: float) -> float:
    """moved_bytes read and written in ms milliseconds, as a percent of ceiling_gbps (GB = 1e9 bytes)."""
    return 100 * moved_bytes / ms / 1e6 / ceiling_gbps


def copy_ceiling() -> dict:
    """Device-to-device copy bandwidth: {bytes, ms, gbps} with bytes = read + written, GB = 1e9 bytes."""
    ms = _copy_ms()
    torch.cuda.empty_cache()  # the buffers died with _copy_ms's frame; give their 4 GiB back
    moved = 2 * COPY_BUFFER_BYTES
    return {"bytes": moved, "ms": ms, "gbps": moved / ms / 1e6}
