"""The run-time estimate printed before the first measurement.

Timing is known from timing.py's budget per measurement; first calls (Triton JIT, Inductor, CuTe DSL)
are guesses per implementation (Implementation.first_call_guess_s), the model row bench.model's estimate.
results.json records the measured first_call_s of every check and the wall time of every phase, to
correct the guesses.
"""

from __future__ import annotations

from bench.cases import (
    ADD_FORWARD,
    BACKWARD,
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_REPEATS,
    LATENCY,
    LATENCY_ROWS,
    MODEL,
    OFF_CELL_REPEATS,
    FEATURES,
)
from bench.implementations import Implementation
from bench.model import ESTIMATED_S as MODEL_S

# bench.features: 16 QK-norm and 36 quant measurements of ~0.05 s, their checks and first calls (Triton
# JIT of the quant kernels, a few seconds): guessed, not yet measured.
FEATURES_S = 15.0
from bench.timing import REP_MS, WARMUP_MS

# Seconds around each measurement besides WARMUP_MS + REP_MS: the untimed first call, the calls that size
# the sample count, event creation and synchronisation.
MEASUREMENT_OVERHEAD_S = 0.01
# Per (dtype, N): random inputs, the float64 reference and its comparisons, freeing memory.
SHAPE_SETUP_S = 0.3
# Per implementation and M of the latency table: LATENCY_HOST_ROUNDS rounds of HOST_CALLS calls, a graph
# capture, replays.
LATENCY_POINT_S = 0.3
CEILING_S = 1.0
# The share of our single-reading cells measured again for reading off their row (sweep.repeat_off_cells):
# a guess, about what the full run at 476a9bd would have repeated.
OFF_CELL_SHARE = 0.5


def estimate_seconds(
    impls: list[Implementation], plan: list[tuple[str, int, tuple[str, ...]]], modes: tuple[str, ...]
) -> dict[str, float]:
    """Estimated seconds of each phase of the run, and their total, for the shapes of ``plan``
    (cases.shape_plan) and the other ``modes`` selected."""
    adders = [impl for impl in impls if impl.add_fn is not None]
    guesses = sum(impl.first_call_guess_s for impl in impls)
    add_guesses = sum(impl.first_call_guess_s for impl in adders)
    measurements = first_calls = 0.0
    for _, _, here in plan:
        for mode in here:
            timed = adders if mode == ADD_FORWARD else impls
            if mode == FORWARD_BACKWARD:
                measurements += FORWARD_BACKWARD_REPEATS * len(timed)
            else:
                ours = sum(impl.group == "ours" for impl in timed)
                measurements += len(timed) + OFF_CELL_SHARE * (OFF_CELL_REPEATS - 1) * ours
        # One JIT per grad mode: forward runs without grad, the backward modes share the training graph;
        # the add+norm is a kernel (or graph) of its own.
        grad_modes = (FORWARD in here) + (BACKWARD in here or FORWARD_BACKWARD in here)
        first_calls += grad_modes * guesses + (ADD_FORWARD in here) * add_guesses
    phases = {
        "ceiling": CEILING_S,
        # One point a row count, and the forward+backward's host time at one of them (a training JIT).
        "latency": (LATENCY in modes) * (len(LATENCY_ROWS) + 1) * (len(impls) * LATENCY_POINT_S + guesses),
        "timing": measurements * ((WARMUP_MS + REP_MS) / 1e3 + MEASUREMENT_OVERHEAD_S),
        "first_calls": first_calls,
        "shape_setup": len(plan) * SHAPE_SETUP_S,
        "model": (MODEL in modes) * MODEL_S,
        "features": (FEATURES in modes) * FEATURES_S,
    }
    phases["total"] = sum(phases.values())
    return phases


def _check_kind(mode: str) -> str:
    """Which check a record's outcome came from: one per grad mode, and add-forward's own."""
    return mode if mode in (FORWARD, ADD_FORWARD) else "training"


def measured_first_calls(results: dict) -> dict[str, float]:
    """Seconds each implementation spent in first calls (its checks, JIT included), from saved results.

    The measured counterpart of the guesses: one check per (dtype, N, check kind), though its outcome is
    copied into the record of every mode it covers.
    """
    checks = {}
    for r in results["results"]:
        if r.get("first_call_s") is not None:
            checks[r["impl"], r["dtype"], r["n"], _check_kind(r["mode"])] = r["first_call_s"]
    totals = {name: 0.0 for name, info in results["implementations"].items() if info["present"]}
    for (impl, *_), seconds in checks.items():
        totals[impl] += seconds
    return totals
