"""GPU time of one call, by CUDA events, and the copy bandwidth every result is compared with.

Not triton.testing.do_bench: it zeroes a 256 MB buffer before every call to flush L2, which doubles the
wall time here for nothing, since every throughput case moves at least 512 MiB, many times the L2 (the
latency table wants L2-resident inputs anyway).
"""

from __future__ import annotations

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
# The host's time to issue one call is read over the first HOST_CALLS timed calls, issued onto an
# idle GPU: few enough that their launches never fill the launch queue (which would make the host
# wait for the GPU and read as slow as it), so the reading is the host's own.
HOST_CALLS = 8

# The ceiling: one device-to-device copy of a buffer far larger than L2, read + written.
COPY_BUFFER_BYTES = 2 * 2**30


class CallTime(NamedTuple):
    """One measurement: the median GPU milliseconds of a call (event pair per call) and the host's
    milliseconds to issue one. An event pair brackets the GPU's time from the call's first command to
    its last; where the host issues a call more slowly than the GPU runs it, the GPU waits inside that
    bracket, and ms reads the host's pace (host_ms close to ms), not the kernels'."""

    ms: float
    host_ms: float

    @property
    def host_bound(self) -> bool:
        """Whether the host took at least HOST_BOUND_FRACTION of the GPU's time to issue the call."""
        return self.host_ms >= HOST_BOUND_FRACTION * self.ms


def time_call(fn: Callable[[], object]) -> CallTime:
    """Median GPU milliseconds of one ``fn()`` call, timed with a CUDA event pair per call after warm-up,
    and the host's milliseconds to issue one."""
    fn()  # untimed: a path the correctness check did not take (backward with retain_graph) may compile
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ESTIMATE_CALLS):
        fn()
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

    def issue(timed_pairs: list) -> None:
        for begin, finish in timed_pairs:
            begin.record()
            fn()
            finish.record()

    torch.cuda.synchronize()  # the warm-up drained: the host issues the first calls onto an idle GPU
    issue_start = time.perf_counter()
    issue(pairs[:HOST_CALLS])
    host_ms = (time.perf_counter() - issue_start) * 1e3 / HOST_CALLS
    issue(pairs[HOST_CALLS:])
    torch.cuda.synchronize()
    return CallTime(statistics.median(begin.elapsed_time(finish) for begin, finish in pairs), host_ms)


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
