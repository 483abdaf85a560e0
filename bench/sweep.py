"""The throughput sweep: for each dtype and row length, check every implementation, then time each mode.

A shape is checked against the float64 reference first; an implementation that is wrong or raises there
is recorded and not timed. Every other failure is recorded too, and the sweep goes on.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from bench.cases import (
    BACKWARD,
    EPS,
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_REPEATS,
    STABLE_SPREAD_POINTS,
    bytes_moved,
    rows_for,
)
from bench.correctness import CheckOutcome, check, reference
from bench.errors import first_line
from bench.implementations import Implementation
from bench.inputs import random_case, release_memory, torch_dtype
from bench.timing import median_ms

# Device memory a shape needs at its peak, per element of x, besides x's own tensors: the float64
# reference differentiated by autograd holds about ten float64 tensors of x's size at once; the eager
# formula's fp32 intermediates are fewer. A shape that does not fit in free memory is skipped.
REFERENCE_BYTES_PER_ELEMENT = 96
# x, dy, y, dx and one more for an implementation's own copies, in x's dtype.
CASE_TENSORS = 5


def _shape_bytes(rows: int, n: int, dtype: torch.dtype) -> int:
    return rows * n * (REFERENCE_BYTES_PER_ELEMENT + CASE_TENSORS * dtype.itemsize)


def _timed_ms(fn, mode: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor) -> list[float]:
    """Median ms of one call of ``mode``: one value, or FORWARD_BACKWARD_REPEATS for forward+backward."""
    if mode == FORWARD:
        with torch.no_grad():
            return [median_ms(lambda: fn(x, weight, EPS))]
    xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
    if mode == BACKWARD:
        y = fn(xg, wg, EPS)  # one graph, backpropagated again and again
        return [median_ms(lambda: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True))]
    return [
        median_ms(lambda: torch.autograd.grad(fn(xg, wg, EPS), (xg, wg), dy))
        for _ in range(FORWARD_BACKWARD_REPEATS)
    ]


def _measure(
    impl: Implementation, mode: str, tensors, outcome: CheckOutcome, record: dict, ceiling_gbps: float
) -> dict:
    record.update(
        check=outcome.status,
        status=outcome.status,
        reason=outcome.reason,
        errors_ulps=outcome.errors_ulps,
        tolerances_ulps=outcome.tolerances_ulps,
        first_call_s=outcome.first_call_s,
    )
    if outcome.status != "ok":
        return record
    try:
        repeats = _timed_ms(impl.fn, mode, *tensors)
    except Exception as exc:  # e.g. out of memory while timing: recorded, the sweep goes on
        record.update(status="failed", reason=first_line(exc))
        return record
    pct = [100 * record["bytes"] / ms / 1e6 / ceiling_gbps for ms in repeats]
    ms = statistics.median(repeats)
    record.update(ms=ms, gbps=record["bytes"] / ms / 1e6, pct_of_ceiling=statistics.median(pct))
    if len(repeats) > 1:
        record.update(
            ms_repeats=repeats,
            pct_repeats=pct,
            stable=statistics.median(pct) - min(pct) <= STABLE_SPREAD_POINTS,
        )
    return record


def _cell(record: dict) -> str:
    return (
        f"{record['gbps']:.0f} ({record['pct_of_ceiling']:.0f}%)"
        if record["status"] == "ok"
        else record["status"]
    )


def _check_all(
    impls: list[Implementation], tensors, training: bool, forward: bool
) -> dict[tuple[str, str], CheckOutcome]:
    """(implementation, "forward" or "training") -> its check against one float64 reference."""
    x, weight, dy = tensors
    ref = reference(x, weight, dy if training else None, EPS)
    outcomes = {}
    for impl in impls:
        if forward:
            outcomes[impl.name, FORWARD] = check(impl.fn, x, weight, None, EPS, ref)
        if training:
            outcomes[impl.name, "training"] = check(impl.fn, x, weight, dy, EPS, ref)
    return outcomes


def measure_shape(
    impls: list[Implementation],
    dtype: str,
    n: int,
    modes: tuple[str, ...],
    ceiling_gbps: float,
    log: Callable[[str], None],
) -> list[dict]:
    """Check and time every implementation on one (dtype, N) in every throughput mode; one record each.

    ``log`` receives one line per mode. Records carry status "ok", "wrong", "failed" or "skipped" with
    the reason, the check's errors in ulps, and for "ok" ms, gbps and pct_of_ceiling.
    """
    rows = rows_for(n)

    def record(impl: Implementation, mode: str, **fields) -> dict:
        return {
            "impl": impl.name,
            "group": impl.group,
            "mode": mode,
            "dtype": dtype,
            "rows": rows,
            "n": n,
            "bytes": bytes_moved(mode, rows, n, dtype),
            **fields,
        }

    def skipped(reason: str) -> list[dict]:
        log(f"{dtype} N={n} M={rows}: skipped, {reason}")
        return [
            record(impl, mode, check=None, status="skipped", reason=reason)
            for mode in modes
            for impl in impls
        ]

    free, need = torch.cuda.mem_get_info()[0], _shape_bytes(rows, n, torch_dtype(dtype))
    if need > free:
        return skipped(f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
    try:
        tensors = random_case(rows, n, torch_dtype(dtype))
        outcomes = _check_all(
            impls, tensors, BACKWARD in modes or FORWARD_BACKWARD in modes, FORWARD in modes
        )
    except torch.OutOfMemoryError as exc:
        return skipped(first_line(exc))
    records = []
    for mode in modes:
        for impl in impls:
            outcome = outcomes[impl.name, FORWARD if mode == FORWARD else "training"]
            records.append(_measure(impl, mode, tensors, outcome, record(impl, mode), ceiling_gbps))
        log(
            f"{dtype} N={n} M={rows} {mode}: "
            + " | ".join(f"{r['impl']} {_cell(r)}" for r in records[-len(impls) :])
        )
    return records


def sweep(
    impls: list[Implementation],
    dtypes: tuple[str, ...],
    ns: tuple[int, ...],
    modes: tuple[str, ...],
    ceiling_gbps: float,
    results: list[dict],
    checkpoint: Callable[[], None],
    log: Callable[[str], None],
) -> None:
    """Measure every (dtype, N), appending records to ``results`` and calling ``checkpoint`` after each.

    Logs one line per (dtype, N, mode), prefixed with the shape's index and the time left at the pace so
    far; frees the shape's tensors and compiled graphs between shapes.
    """
    shapes = [(dtype, n) for dtype in dtypes for n in ns]
    start = time.perf_counter()
    for done, (dtype, n) in enumerate(shapes):
        elapsed = time.perf_counter() - start
        left = f", ~{elapsed / done * (len(shapes) - done) / 60:.1f} min left" if done else ""
        prefix = f"[{done + 1}/{len(shapes)}{left}] "
        results.extend(
            measure_shape(
                impls, dtype, n, modes, ceiling_gbps, lambda line, prefix=prefix: log(prefix + line)
            )
        )
        release_memory()
        checkpoint()
