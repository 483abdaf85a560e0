"""The check every implementation passes on a case before it is timed: y, dx and dw against float64.

The yardstick is the project's one reference, rmsnorm.reference.rms_norm_reference, run in float64 on
the same inputs and differentiated by autograd; for add_rms_norm, add_rms_norm_reference (y and
residual_out, forward only).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from bench.errors import first_line
from rmsnorm.reference import add_rms_norm_reference, rms_norm_reference

# The tolerance, in one place. Element i of a quantity passes if
#     |err_i| <= (|ref_i| + rms(ref)) * (OUTPUT_ULPS * eps(dtype) + ACCUMULATION_ULPS * eps(fp32) * sqrt(L)).
# eps(dtype) * |a| is one to two ulps of the output dtype at magnitude |a|: the bound is a count of ulps
# at the reference's magnitude. The rms(ref) floor is there because dx and dw are differences and sums,
# whose rounding errors scale with their terms, not with a result that happens to be near zero.
# OUTPUT_ULPS: implementations round a few times (Hugging Face's formula rounds x_hat to the input dtype
# before the weight product, and its dweight sums products rounded to the input dtype); 4 ulps hold
# those, and nothing broken: a wrong element errs by a sizeable fraction of its magnitude.
# ACCUMULATION_ULPS: rounding errors of an fp32 sum of L terms add up like a random walk, ~sqrt(L) eps
# (~3e-4 relative for dw over M = 2^21 rows). L = N for y and dx (row statistics), L = M for dw (sum
# over rows). It matters for fp32 outputs only; in bf16 and fp16 the output ulp dominates.
# L = 1 for add_rms_norm's residual_out: one rounding of a sum of two, no reduction (the eager formula's
# sum in the input dtype rounds once too).
OUTPUT_ULPS = 4
ACCUMULATION_ULPS = 2


def relative_tolerance(dtype: torch.dtype, reduction_length: int) -> float:
    """Largest accepted |err_i| / (|ref_i| + rms(ref)) for a quantity of ``dtype`` (see above)."""
    relative = OUTPUT_ULPS * torch.finfo(dtype).eps
    return relative + ACCUMULATION_ULPS * torch.finfo(torch.float32).eps * math.sqrt(reduction_length)


@dataclass
class Reference:
    """float64 results of one case, and the rms of each, the floor of the tolerance's magnitude."""

    y: torch.Tensor  # [M, N] float64
    dx: torch.Tensor | None  # [M, N] float64, None when no backward mode is measured
    dw: torch.Tensor | None  # [N] float64
    residual_out: torch.Tensor | None = None  # [M, N] float64, add_rms_norm's only
    rms: dict[str, float] = field(default_factory=dict)


@dataclass
class CheckOutcome:
    """Result of one implementation's check on one case and grad mode."""

    status: str  # "ok", "wrong" (out of tolerance), "failed" (raised) or "skipped" (out of memory)
    reason: str | None = None
    # quantity -> max |err_i| / (|ref_i| + rms(ref)), and the largest accepted, in ulps of the dtype
    errors_ulps: dict[str, float] = field(default_factory=dict)
    tolerances_ulps: dict[str, float] = field(default_factory=dict)
    first_call_s: float | None = None  # wall time of the check, JIT or compile included


def reference(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor | None, eps: float) -> Reference:
    """float64 y (and dx, dw when ``dy`` is given) of RMSNorm over the last dim of x [M, N]."""
    x64 = x.detach().double().requires_grad_(dy is not None)
    w64 = weight.detach().double().requires_grad_(dy is not None)
    y = rms_norm_reference(x64, (x.shape[-1],), w64, eps, compute_dtype=torch.float64)
    dx = dw = None
    if dy is not None:
        dx, dw = torch.autograd.grad(y, (x64, w64), dy.double())
    ref = Reference(y.detach(), dx, dw)
    ref.rms = _rms(ref)
    return ref


def add_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> Reference:
    """float64 y and residual_out of add_rms_norm on x, residual [M, N]; residual_out is the fp32 sum
    rounded to x's dtype (what every implementation stores), y the float64 norm of it."""
    y, residual_out = add_rms_norm_reference(
        x, residual, (x.shape[-1],), weight, eps, compute_dtype=torch.float64
    )
    ref = Reference(y, None, None, residual_out.double())
    ref.rms = _rms(ref)
    return ref


def _rms(ref: Reference) -> dict[str, float]:
    quantities = {"y": ref.y, "dx": ref.dx, "dw": ref.dw, "residual_out": ref.residual_out}
    return {k: v.square().mean().sqrt().item() for k, v in quantities.items() if v is not None}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor, rms: float) -> float:
    """max |actual_i - expected_i| / (|expected_i| + rms); in place where it can, as a case reaches 2 GiB."""
    err = actual.detach().double().sub_(expected).abs_()
    return err.div_(expected.abs().add_(rms)).max().item()  # NaN propagates, and fails the comparison


def _compare(outcome: CheckOutcome, results: dict[str, torch.Tensor], ref: Reference, rows: int) -> None:
    for quantity, actual in results.items():
        ulp = torch.finfo(actual.dtype).eps
        length = {"dw": rows, "residual_out": 1}.get(quantity, actual.shape[-1])  # L of the tolerance
        err = _relative_error(actual, getattr(ref, quantity), ref.rms[quantity]) / ulp
        tol = relative_tolerance(actual.dtype, length) / ulp
        outcome.errors_ulps[quantity], outcome.tolerances_ulps[quantity] = err, tol
        if not err <= tol and outcome.status == "ok":
            outcome.status, outcome.reason = "wrong", f"{quantity}: error {err:.3g} ulps > {tol:.3g} allowed"


def _checked(run: Callable[[], dict[str, torch.Tensor]], ref: Reference, rows: int) -> CheckOutcome:
    """Call ``run`` once, time it (JIT included) and compare what it returns with ``ref``; never raises."""
    outcome = CheckOutcome("ok")
    start = time.perf_counter()
    try:
        results = run()
        torch.cuda.synchronize()
        outcome.first_call_s = time.perf_counter() - start
        _compare(outcome, results, ref, rows)
    except torch.OutOfMemoryError as exc:  # the case, not the implementation: skipped, not failed
        outcome.status, outcome.reason = "skipped", first_line(exc)
    except Exception as exc:  # one implementation's failure must not stop the run
        outcome.status, outcome.reason = "failed", first_line(exc)
    return outcome


def check(
    fn, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor | None, eps: float, ref: Reference
) -> CheckOutcome:
    """Run ``fn`` once on the case and compare with ``ref``.

    Without ``dy``: forward under torch.no_grad(), y compared. With ``dy``: forward with grad, then dx and
    dw from torch.autograd.grad; y, dx and dw compared. Never raises: an exception is a "failed" outcome,
    running out of memory a "skipped" one.
    """

    def run() -> dict[str, torch.Tensor]:
        if dy is None:
            with torch.no_grad():
                return {"y": fn(x, weight, eps)}
        xg, wg = x.detach().requires_grad_(), weight.detach().requires_grad_()
        y = fn(xg, wg, eps)
        dx, dw = torch.autograd.grad(y, (xg, wg), dy)
        return {"y": y, "dx": dx, "dw": dw}

    return _checked(run, ref, x.shape[0])


def check_add(
    fn, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, ref: Reference
) -> CheckOutcome:
    """Run the add+norm ``fn`` once under torch.no_grad() and compare y and residual_out with ``ref``
    (from add_reference); outcomes as check's."""

    def run() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            y, residual_out = fn(x, residual, weight, eps)
        return {"y": y, "residual_out": residual_out}

    return _checked(run, ref, x.shape[0])
