"""The throughput sweep: for each dtype and row length, check every implementation, then time each mode.

A shape is checked against the float64 reference first; an implementation that is wrong or raises there
is recorded and not timed. Every other failure is recorded too, and the sweep goes on. add-forward has its
own inputs (x and residual), reference and check, and times the implementations that have an add+norm.
Forward+backward is timed FORWARD_BACKWARD_REPEATS times, the other modes once, but a cell of ours that
reads more than OFF_CELL_POINTS below its row's best is timed OFF_CELL_REPEATS times (repeat_off_cells).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import torch

from bench.cases import (
    ADD_FORWARD,
    BACKWARD,
    EPS,
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_REPEATS,
    NORM_MODES,
    OFF_CELL_POINTS,
    OFF_CELL_REPEATS,
    STABLE_SPREAD_POINTS,
    bytes_moved,
    rows_for,
)
from bench.correctness import CheckOutcome, add_reference, check, check_add, reference
from bench.errors import first_line
from bench.implementations import Implementation
from bench.inputs import random_add_case, random_case, release_memory, torch_dtype
from bench.timing import CallTime, percent_of_ceiling, time_call

# Device memory a shape needs at its peak, per element of x, besides x's own tensors: the float64
# reference differentiated by autograd holds about ten float64 tensors of x's size at once; the eager
# formula's fp32 intermediates are fewer. A shape that does not fit in free memory is skipped.
REFERENCE_BYTES_PER_ELEMENT = 96
# x, dy, y, dx and one more for an implementation's own copies, in x's dtype.
CASE_TENSORS = 5
# add-forward's reference is forward only: y and residual_out in float64, the fp32 sum and the float64
# row math on the way, then two float64 temporaries per comparison: about six float64 tensors.
ADD_REFERENCE_BYTES_PER_ELEMENT = 48
# x, residual, y, residual_out and one more for an implementation's own copies, in x's dtype.
ADD_CASE_TENSORS = 5


def _memory_shortfall(rows: int, n: int, per_element: int) -> str | None:
    """Why a case of ``per_element`` bytes per element of [rows, n] does not fit in free memory, or None."""
    free, need = torch.cuda.mem_get_info()[0], rows * n * per_element
    return f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free" if need > free else None


def mode_call(fn, mode: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor) -> Callable[[], object]:
    """One call of ``mode`` as the sweep times it: the forward; the backward, of one graph backpropagated
    again and again; or a forward+backward through autograd."""
    if mode == FORWARD:
        return lambda: fn(x, weight, EPS)
    xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
    if mode == BACKWARD:
        y = fn(xg, wg, EPS)
        return lambda: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True)
    return lambda: torch.autograd.grad(fn(xg, wg, EPS), (xg, wg), dy)


def time_mode(fn, mode: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor) -> list[CallTime]:
    """Times of one call of ``mode``: one measurement, or FORWARD_BACKWARD_REPEATS for forward+backward."""
    if mode == FORWARD:
        with torch.no_grad():
            return [time_call(mode_call(fn, mode, x, weight, dy))]
    call = mode_call(fn, mode, x, weight, dy)
    return [time_call(call) for _ in range(FORWARD_BACKWARD_REPEATS if mode == FORWARD_BACKWARD else 1)]


def _add_timed(add_fn, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> list[CallTime]:
    """Times of one add+norm call without grad, as a one-measurement list like time_mode's."""
    with torch.no_grad():
        return [time_call(lambda: add_fn(x, residual, weight, EPS))]


def _measure(
    timed: Callable[[], list[CallTime]], outcome: CheckOutcome, record: dict, ceiling_gbps: float
) -> dict:
    """Fill ``record`` with the check's outcome and, when it passed, the times ``timed()`` measures."""
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
        repeats = timed()
    except Exception as exc:  # e.g. out of memory while timing: recorded, the sweep goes on
        record.update(status="failed", reason=first_line(exc))
        return record
    _set_times(record, repeats, ceiling_gbps)
    return record


def _set_times(record: dict, repeats: list[CallTime], ceiling_gbps: float) -> None:
    """Fill ``record``'s times from the measurements ``repeats``: the median of their ms and of their
    host_ms, whether the host bounds the cell (CallTime.host_bound), and with several their spread and
    whether it is stable."""
    times = [ms for ms, _ in repeats]
    host_times = [host_ms for _, host_ms in repeats]
    pct = [percent_of_ceiling(record["bytes"], ms, ceiling_gbps) for ms in times]
    ms, host_ms = statistics.median(times), statistics.median(host_times)
    record.update(
        ms=ms,
        gbps=record["bytes"] / ms / 1e6,
        pct_of_ceiling=statistics.median(pct),
        host_ms=host_ms,
        host_bound=CallTime(ms, host_ms).host_bound,
    )
    if len(repeats) > 1:
        record.update(
            ms_repeats=times,
            host_ms_repeats=host_times,
            pct_repeats=pct,
            stable=statistics.median(pct) - min(pct) <= STABLE_SPREAD_POINTS,
        )


def repeat_off_cells(
    records: list[dict], timers: list[Callable[[], list[CallTime]]], ceiling_gbps: float
) -> None:
    """Measure again each of our cells in ``records`` (one mode of one shape; ``timers`` their timing
    functions, in the same order) that has one reading more than OFF_CELL_POINTS below the row's best,
    until it has OFF_CELL_REPEATS; the record then reports their median. A timing that fails leaves
    the first reading, and its reason in repeat_reason."""
    best = max((r["pct_of_ceiling"] for r in records if r["status"] == "ok"), default=None)
    for record, timed in zip(records, timers):
        if record["status"] != "ok" or record["group"] != "ours" or "ms_repeats" in record:
            continue
        if record["pct_of_ceiling"] >= best - OFF_CELL_POINTS:
            continue
        try:
            more = [reading for _ in range(OFF_CELL_REPEATS - 1) for reading in timed()]
        except Exception as exc:  # e.g. out of memory: the reading already taken stands
            record["repeat_reason"] = first_line(exc)
        else:
            _set_times(record, [CallTime(record["ms"], record["host_ms"]), *more], ceiling_gbps)


def _cell(record: dict) -> str:
    if record["status"] != "ok":
        return record["status"]
    text = f"{record['gbps']:.0f} ({record['pct_of_ceiling']:.0f}%)"
    return text + " host-bound" if record["host_bound"] else text


def _record(impl: Implementation, mode: str, dtype: str, rows: int, n: int, **fields) -> dict:
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


def _skipped(
    impls: list[Implementation], modes: tuple[str, ...], dtype: str, rows: int, n: int, reason: str, log
) -> list[dict]:
    log(f"{dtype} N={n} M={rows} {', '.join(modes)}: skipped, {reason}")
    return [
        _record(impl, mode, dtype, rows, n, check=None, status="skipped", reason=reason)
        for mode in modes
        for impl in impls
    ]


def _log_mode(records: list[dict], dtype: str, n: int, rows: int, mode: str, log) -> None:
    log(f"{dtype} N={n} M={rows} {mode}: " + " | ".join(f"{r['impl']} {_cell(r)}" for r in records))


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


def _norm_records(
    impls: list[Implementation], dtype: str, n: int, modes: tuple[str, ...], ceiling_gbps: float, log
) -> list[dict]:
    """rms_norm's modes on one (dtype, N): check every implementation, then time each mode."""
    rows = rows_for(n)
    shortfall = _memory_shortfall(
        rows, n, REFERENCE_BYTES_PER_ELEMENT + CASE_TENSORS * torch_dtype(dtype).itemsize
    )
    if shortfall:
        return _skipped(impls, modes, dtype, rows, n, shortfall, log)
    try:
        tensors = random_case(rows, n, torch_dtype(dtype))
        outcomes = _check_all(
            impls, tensors, BACKWARD in modes or FORWARD_BACKWARD in modes, FORWARD in modes
        )
    except torch.OutOfMemoryError as exc:
        return _skipped(impls, modes, dtype, rows, n, first_line(exc), log)
    records = []
    for mode in modes:
        timers = [functools.partial(time_mode, impl.fn, mode, *tensors) for impl in impls]
        check_kind = FORWARD if mode == FORWARD else "training"
        mode_records = [
            _measure(
                timed, outcomes[impl.name, check_kind], _record(impl, mode, dtype, rows, n), ceiling_gbps
            )
            for impl, timed in zip(impls, timers)
        ]
        repeat_off_cells(mode_records, timers, ceiling_gbps)
        _log_mode(mode_records, dtype, n, rows, mode, log)
        records += mode_records
    return records


def _add_records(impls: list[Implementation], dtype: str, n: int, ceiling_gbps: float, log) -> list[dict]:
    """add-forward on one (dtype, N): check every add+norm against one float64 reference, then time it."""
    rows, modes = rows_for(n), (ADD_FORWARD,)
    shortfall = _memory_shortfall(
        rows, n, ADD_REFERENCE_BYTES_PER_ELEMENT + ADD_CASE_TENSORS * torch_dtype(dtype).itemsize
    )
    if shortfall:
        return _skipped(impls, modes, dtype, rows, n, shortfall, log)
    try:
        x, residual, weight = random_add_case(rows, n, torch_dtype(dtype))
        ref = add_reference(x, residual, weight, EPS)
        outcomes = {impl.name: check_add(impl.add_fn, x, residual, weight, EPS, ref) for impl in impls}
        del ref  # its float64 tensors are not needed while timing
    except torch.OutOfMemoryError as exc:
        return _skipped(impls, modes, dtype, rows, n, first_line(exc), log)
    timers = [functools.partial(_add_timed, impl.add_fn, x, residual, weight) for impl in impls]
    records = [
        _measure(timed, outcomes[impl.name], _record(impl, ADD_FORWARD, dtype, rows, n), ceiling_gbps)
        for impl, timed in zip(impls, timers)
    ]
    repeat_off_cells(records, timers, ceiling_gbps)
    _log_mode(records, dtype, n, rows, ADD_FORWARD, log)
    return records


def measure_shape(
    impls: list[Implementation],
    dtype: str,
    n: int,
    modes: tuple[str, ...],
    ceiling_gbps: float,
    log: Callable[[str], None],
) -> list[dict]:
    """Check and time every implementation on one (dtype, N) in every throughput mode; one record each.

    add-forward covers only the implementations with an add+norm. ``log`` receives one line per mode.
    Records carry status "ok", "wrong", "failed" or "skipped" with the reason, the check's errors in
    ulps, and for "ok" ms, gbps and pct_of_ceiling.
    """
    records = []
    norm_modes = tuple(m for m in modes if m in NORM_MODES)
    if norm_modes:
        records += _norm_records(impls, dtype, n, norm_modes, ceiling_gbps, log)
    adders = [impl for impl in impls if impl.add_fn is not None]
    if ADD_FORWARD in modes and adders:
        records += _add_records(adders, dtype, n, ceiling_gbps, log)
    return records


def sweep(
    impls: list[Implementation],
    plan: list[tuple[str, int, tuple[str, ...]]],
    ceiling_gbps: float,
    results: list[dict],
    checkpoint: Callable[[], None],
    log: Callable[[str], None],
) -> None:
    """Measure every (dtype, N, modes) of ``plan`` (cases.shape_plan), appending records to ``results``
    and calling ``checkpoint`` after each shape.

    Logs one line per (dtype, N, mode), prefixed with the shape's index and the time left at the pace so
    far; frees the shape's tensors and compiled graphs between shapes.
    """
    start = time.perf_counter()
    for done, (dtype, n, modes) in enumerate(plan):
        elapsed = time.perf_counter() - start
        left = f", ~{elapsed / done * (len(plan) - done) / 60:.1f} min left" if done else ""
        prefix = f"[{done + 1}/{len(plan)}{left}] "
        results.extend(
            measure_shape(
                impls, dtype, n, modes, ceiling_gbps, lambda line, prefix=prefix: log(prefix + line)
            )
        )
        release_memory()
        checkpoint()
