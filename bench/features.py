"""The feature rows: per-head QK-norm on strided views, and the fused fp8 quantization, for our backends.

No peer has these in the same form, so each row sets our kernel against our own plain case on the same
bytes, and every row against the copy ceiling of the run:
  - qk-norm: q = qkv[..., :H * D].view(S * B, H, D) normalized over (D,), a strided view read in place,
    beside a contiguous q of the same shape; forward (reads q, writes y) and forward+backward (also reads
    dy and writes dq), D = 128, H = 32 and 64, S * B = 8192 tokens, bf16;
  - quant: rms_norm_quant with a static and with dynamic per-row scales, and add_rms_norm_quant with
    dynamic scales, bf16 in, float8_e4m3fn out, M * N = 2^27. Bytes: rms_norm_quant reads 2 and writes 1
    per element; add_rms_norm_quant reads x and residual (2 + 2) and writes residual_out (2) and y_q (1).
Each case is checked first (QK-norm against the contiguous case, bitwise; quant against the reference
quantization of the same backend's own rms_norm output, bitwise) and timed only when right.

Every row is timed as CUDA-graph replays (GPU time only): at S * B = 8192 tokens a QK-norm forward
moves 67-134 MB, 22-45 us at 3 TB/s, and an rms_norm_quant of 2^27 elements 403 MB, 94 us on an
H200: no more than an eager call's host time, so eager timing would have measured the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import rmsnorm
from bench.cases import ELEMENTS, EPS
from bench.errors import first_line
from bench.inputs import release_memory
from bench.latency import graph_us_per_call
from rmsnorm.reference import fp8_ordinal, quantize_fp8_reference

QK_HEAD_DIM = 128
QK_HEADS = (32, 64)
QK_TOKENS = 8192
QUANT_NS = (1024, 2048, 4096, 8192, 16384, 32768)
# Calls in one timed CUDA graph: the outputs of every call stay allocated in the graph's pool (up to
# 268 MB a call: add_rms_norm_quant's residual_out, or a QK-norm forward+backward's y and dq), so few.
GRAPH_CALLS = 10
MAX_FP8_DIFFERENCE_SHARE = 0.01
BACKENDS = ("triton", "cuda")
# Bytes per element of x each case moves: see the module docstring.
QK_FORWARD_BYTES = 2 * 2
QK_FORWARD_BACKWARD_BYTES = 5 * 2
QUANT_BYTES = 2 + 1
ADD_QUANT_BYTES = 2 + 2 + 2 + 1


def _record(kind: str, backend: str, case: str, n: int, rows: int, nbytes: int, ms: float, ceiling: float) -> dict:
    gbps = nbytes / ms / 1e6
    return {
        "kind": kind, "impl": f"ours-{backend}", "case": case, "n": n, "rows": rows, "ms": ms,
        "gbps": gbps, "pct_of_copy": 100.0 * gbps / ceiling, "check": "ok",
    }  # fmt: skip


def _failed(kind: str, backend: str, case: str, n: int, rows: int, error: BaseException | str) -> dict:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {first_line(error)}"
    return {"kind": kind, "impl": f"ours-{backend}", "case": case, "n": n, "rows": rows, "check": reason}


def _qk_views(heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = QK_HEAD_DIM
    qkv = torch.randn(QK_TOKENS, 3 * heads * d, device="cuda", dtype=torch.bfloat16)
    q_strided = qkv[:, : heads * d].view(QK_TOKENS, heads, d)
    weight = torch.randn(d, device="cuda", dtype=torch.bfloat16)
    return q_strided, q_strided.contiguous(), weight


def _fwd_bwd(q: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, backend: str) -> Callable[[], None]:
    qg, wg = q.detach().requires_grad_(), weight.detach().requires_grad_()

    def step() -> None:
        y = rmsnorm.rms_norm(qg, (QK_HEAD_DIM,), wg, EPS, backend=backend)
        torch.autograd.grad(y, (qg, wg), dy)  # new gradient tensors each call: nothing accumulates

    return step


def _graph_ms(call: Callable[[], object]) -> float:
    return graph_us_per_call(call, GRAPH_CALLS) / 1e3


def measure_qk_norm(ceiling: float, log: Callable[[str], None]) -> list[dict]:
    records = []
    for heads in QK_HEADS:
        q_strided, q_contiguous, weight = _qk_views(heads)
        rows, elements = QK_TOKENS * heads, q_strided.numel()
        dy = torch.randn_like(q_contiguous)
        for backend in BACKENDS:
            try:
                with torch.no_grad():
                    y_strided = rmsnorm.rms_norm(q_strided, (QK_HEAD_DIM,), weight, EPS, backend=backend)
                    y_contiguous = rmsnorm.rms_norm(q_contiguous, (QK_HEAD_DIM,), weight, EPS, backend=backend)
                if not torch.equal(y_strided, y_contiguous):
                    raise AssertionError("the strided view's output differs from the contiguous copy's")
            except Exception as error:  # noqa: BLE001 - recorded, the run goes on
                records += [_failed("qk-norm", backend, f"H={heads} {layout}", QK_HEAD_DIM, rows, error)
                            for layout in ("strided", "contiguous")]  # fmt: skip
                continue
            for layout, q in (("strided", q_strided), ("contiguous", q_contiguous)):
                forward = functools.partial(rmsnorm.rms_norm, q, (QK_HEAD_DIM,), weight, EPS, backend=backend)
                with torch.no_grad():
                    ms = _graph_ms(forward)
                case = f"H={heads} {layout} forward"
                records.append(_record("qk-norm", backend, case, QK_HEAD_DIM, rows, QK_FORWARD_BYTES * elements,
                                       ms, ceiling))  # fmt: skip
                ms = _graph_ms(_fwd_bwd(q, weight, dy, backend))
                case = f"H={heads} {layout} forward+backward"
                records.append(_record("qk-norm", backend, case, QK_HEAD_DIM, rows,
                                       QK_FORWARD_BACKWARD_BYTES * elements, ms, ceiling))  # fmt: skip
            log(f"qk-norm H={heads}: " + ", ".join(f"{r['impl']} {r['case']} {r['pct_of_copy']:.0f}%"
                                                   for r in records[-4:] if r["check"] == "ok"))  # fmt: skip
        del q_strided, q_contiguous, dy
        release_memory()
    return records


def _check_fp8(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """At most one fp8 step from the reference quantization of the backend's own output, in at most 1%
    of the elements: Triton's quantizing kernel may sum a row in another order than its plain one
    (tests/test_quant.py, assert_alike); the CUDA kernels match bitwise (the tests hold them to it)."""
    steps = (fp8_ordinal(got) - fp8_ordinal(expected)).abs()
    if int(steps.max()) > 1 or float((steps > 0).float().mean()) > MAX_FP8_DIFFERENCE_SHARE:
        raise AssertionError(f"{what} differs from the reference quantization of the same backend's output")


def _check_quant(backend: str, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, scale) -> None:
    """The fused kernels quantize the y that the unquantized op of that backend returns (see _check_fp8)."""
    y = rmsnorm.rms_norm(x, None, weight, EPS, backend=backend)
    got, _ = rmsnorm.rms_norm_quant(x, weight, EPS, scale=scale, backend=backend)
    _check_fp8(got, quantize_fp8_reference(y, 1, scale)[0], "rms_norm_quant")
    y, residual_out = rmsnorm.add_rms_norm(x, residual, weight, EPS, backend=backend)
    got, got_residual, _ = rmsnorm.add_rms_norm_quant(x, residual, weight, EPS, backend=backend)
    _check_fp8(got, quantize_fp8_reference(y, 1, None)[0], "add_rms_norm_quant")
    if not torch.equal(got_residual, residual_out):
        raise AssertionError("add_rms_norm_quant's residual_out differs from add_rms_norm's")


def _quant_records(n: int, ceiling: float) -> list[dict]:
    rows = ELEMENTS // n
    x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    static_scale = torch.tensor([0.02], device="cuda")
    cases = {
        "rms_norm_quant static": (
            lambda backend: rmsnorm.rms_norm_quant(x, weight, EPS, scale=static_scale, backend=backend),
            QUANT_BYTES,
        ),
        "rms_norm_quant dynamic": (
            lambda backend: rmsnorm.rms_norm_quant(x, weight, EPS, backend=backend),
            QUANT_BYTES,
        ),
        "add_rms_norm_quant dynamic": (
            lambda backend: rmsnorm.add_rms_norm_quant(x, residual, weight, EPS, backend=backend),
            ADD_QUANT_BYTES,
        ),
    }
    records = []
    for backend in BACKENDS:
        try:
            with torch.no_grad():
                _check_quant(backend, x[:64], residual[:64], weight, static_scale)
        except Exception as error:  # noqa: BLE001 - recorded, the run goes on
            records += [_failed("quant", backend, case, n, rows, error) for case in cases]
            continue
        for case, (call, per_element) in cases.items():
            with torch.no_grad():
                ms = _graph_ms(functools.partial(call, backend))
            records.append(_record("quant", backend, case, n, rows, per_element * x.numel(), ms, ceiling))
    return records


def measure_quant(ceiling: float, log: Callable[[str], None]) -> list[dict]:
    records = []
    for n in QUANT_NS:
        records += _quant_records(n, ceiling)
        release_memory()
        log(f"quant N={n}: " + ", ".join(f"{r['impl']} {r['case']} {r['pct_of_copy']:.0f}%"
                                         for r in records if r["n"] == n and r["check"] == "ok"))  # fmt: skip
    return records


def measure_features(ceiling: float, log: Callable[[str], None]) -> list[dict]:
    """Every feature row, as records of kind "qk-norm" or "quant" (see the module docstring)."""
    return measure_qk_norm(ceiling, log) + measure_quant(ceiling, log)
