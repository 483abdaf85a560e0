"""The run-time estimate printed before the first measurement.

Timing is known from timing.py's budget per measurement; first calls (Triton JIT, Inductor, CuTe DSL)
are guesses per implementation (Implementation.first_call_guess_s). results.json records the measured
first_call_s of every check and the wall time of every phase, to correct the guesses.
"""

from __future__ import annotations

from bench.cases import (
    BACKWARD,
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_REPEATS,
    LATENCY,
    LATENCY_ROWS,
    THROUGHPUT_MODES,
)
from bench.implementations import Implementation
from bench.timing import REP_MS, WARMUP_MS

# Seconds around each measurement besides WARMUP_MS + REP_MS: the untimed first call, the calls that size
# the sample count, event creation and synchronisation.
MEASUREMENT_OVERHEAD_S = 0.01
# Per (dtype, N): random inputs, the float64 reference and its comparisons, freeing memory.
SHAPE_SETUP_S = 0.3
# Per implementation and M of the latency table: HOST_CALLS calls, a graph capture, replays.
LATENCY_POINT_S = 0.3
CEILING_S = 1.0


def estimate_seconds(
    impls: list[Implementation], dtypes: tuple[str, ...], ns: tuple[int, ...], modes: tuple[str, ...]
) -> dict[str, float]:
    """Estimated seconds of each phase of the run, and their total, for the given selection."""
    shapes = len(dtypes) * len(ns)
    measurements = sum(
        FORWARD_BACKWARD_REPEATS if m == FORWARD_BACKWARD else 1 for m in modes if m in THROUGHPUT_MODES
    )
    per_measurement = (WARMUP_MS + REP_MS) / 1e3 + MEASUREMENT_OVERHEAD_S
    # One JIT per grad mode: forward runs without grad, the backward modes share the training graph.
    grad_modes = (FORWARD in modes) + (BACKWARD in modes or FORWARD_BACKWARD in modes)
    guesses = sum(impl.first_call_guess_s for impl in impls)
    phases = {
        "ceiling": CEILING_S,
        "latency": (LATENCY in modes) * len(LATENCY_ROWS) * (len(impls) * LATENCY_POINT_S + guesses),
        "timing": shapes * len(impls) * measurements * per_measurement,
        "first_calls": shapes * grad_modes * guesses,
        "shape_setup": shapes * SHAPE_SETUP_S * bool(measurements),
    }
    phases["total"] = sum(phases.values())
    return phases


def measured_first_calls(results: dict) -> dict[str, float]:
    """Seconds each implementation spent in first calls (its checks, JIT included), from saved results.

    The measured counterpart of the guesses: one check per (dtype, N, grad mode), though its outcome is
    copied into the record of every mode it covers.
    """
    checks = {}
    for r in results["results"]:
        if r.get("first_call_s") is not None:
            checks[r["impl"], r["dtype"], r["n"], r["mode"] == FORWARD] = r["first_call_s"]
    totals = {name: 0.0 for name, info in results["implementations"].items() if info["present"]}
    for (impl, *_), seconds in checks.items():
        totals[impl] += seconds
    return totals
