"""The cases tests/sanitize.py runs under each compute-sanitizer tool.

Both kernel backends, rms_norm and add_rms_norm, forward and backward, with and without a weight,
in bf16 and fp32, on ROWS rows of every width in WIDTHS, contiguous and as strided and misaligned
views; and at the FEATURE_WIDTHS, per-head views with two strided leading dims, the fp32 residual
stream, and the fp8 quantization ops (static, dynamic, dynamic with scale_ub after a residual add). `python -m tests.sanitize_cases [TEXT ...]` runs each case (or those whose name contains
every TEXT) once, printing its name first, so that a sanitizer's report follows the name of the
case that caused it; a case that raises ends the run with its traceback (exit status 1; 2 without
a GPU).

Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (tests/sanitize.py does): every tensor is then its
own allocation, so memcheck sees an access past a tensor's end instead of one that lands in a
neighbour inside the caching allocator's pool. Two more choices give initcheck something to find:
- strided and misaligned rows are views into a wider tensor whose other elements are never
  written: a kernel that reads past its row's end, or before its start, reads uninitialized memory;
- every output (y, residual_out, dx, dresidual, dweight) is read back by a sum: an element the
  kernels leave unwritten shows up as an uninitialized read in that sum.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

import rmsnorm

BACKENDS = ("triton", "cuda")
DTYPES = (torch.bfloat16, torch.float32)
# 1 and 3: less than one vector; 127: rows shorter than a warp's loads; 4096: one aligned register
# tile in every kernel; 4097: one tile, unaligned; 16384: one tile forward, the split-row
# (Triton) and staged or column (CUDA) backward; 65536: the CUDA one-pass backward's aligned rows,
# held in registers a row long (rms_norm_bwd_split_kernel); 65537: split-row / looped everywhere,
# unaligned (the CUDA backward in one pass, its rows loaded again); 2^20: the widest rows the README
# promises, aligned.
WIDTHS = (1, 3, 127, 4096, 4097, 16384, 65536, 65537, 2**20)
# Widths of the feature cases: less than a vector, one unaligned tile, the wide-row paths.
FEATURE_WIDTHS = (3, 4097, 65537)
# Few rows keep the instrumented runs short; three still give a last row that is not the first,
# and a tile that is partly past the last row.
ROWS = 3
EPS = 1e-6
# Extra elements at the end of each row of the wider tensor behind a strided view: 16 keeps
# 16-byte alignment of every row for both dtypes, so the aligned paths run on strided rows too.
STRIDE_PAD = 16


@dataclass(frozen=True)
class Case:
    backend: str
    dtype: torch.dtype
    n: int
    # "rms_norm", "add_rms_norm", "add_rms_norm fp32-residual" (bf16 x), "rms_norm_quant static",
    # "rms_norm_quant dynamic", "add_rms_norm_quant dynamic scale_ub" (the quant ops: forward only)
    op: str
    # "contiguous"; "strided": x[:, :n] of a wider x; "misaligned": x[:, 1:] of a wider x;
    # "heads": [ROWS, 2, n], one of three head pairs of a wider tensor (two strided leading dims)
    layout: str
    # "none"; "same": x's dtype; "fp32"; "frozen": x's dtype, no dweight asked for
    weight: str

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.op} {self.backend} {dtype} n={self.n} {self.layout} weight={self.weight}"


def all_cases() -> list[Case]:
    """Every op with and without a weight on contiguous rows; each op with a weight on strided
    and misaligned rows; a weight of another dtype (fp32 beside bf16) and one without dweight."""
    cases = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            for n in WIDTHS:
                variants = [
                    ("rms_norm", "contiguous", "none"),
                    ("rms_norm", "contiguous", "same"),
                    ("add_rms_norm", "contiguous", "none"),
                    ("add_rms_norm", "contiguous", "same"),
                    ("rms_norm", "strided", "same"),
                    ("add_rms_norm", "strided", "same"),
                    ("rms_norm", "misaligned", "frozen"),
                    ("add_rms_norm", "misaligned", "same"),
                ]
                if dtype != torch.float32:
                    variants.append(("rms_norm", "contiguous", "fp32"))
                if n in FEATURE_WIDTHS:
                    variants += [
                        ("rms_norm", "heads", "same"),
                        ("add_rms_norm", "heads", "same"),
                        ("rms_norm_quant static", "misaligned", "same"),
                        ("rms_norm_quant dynamic", "heads", "same"),
                        ("add_rms_norm_quant dynamic scale_ub", "strided", "same"),
                    ]
                    if dtype != torch.float32:
                        variants.append(("add_rms_norm fp32-residual", "strided", "same"))
                cases += [Case(backend, dtype, n, *variant) for variant in variants]
    return cases


def random_rows(layout: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[ROWS, n] ([ROWS, 2, n] for "heads") standard normal values in `layout`; the rest of a wider
    tensor stays unwritten."""
    if layout == "heads":
        rows = torch.empty(ROWS, 3, 2, n, dtype=dtype, device="cuda")[:, 1]
        rows.copy_(torch.randn(ROWS, 2, n, device="cuda"))
        return rows
    wider = {"contiguous": n, "strided": n + STRIDE_PAD, "misaligned": n + 1}[layout]
    start = 1 if layout == "misaligned" else 0
    rows = torch.empty(ROWS, wider, dtype=dtype, device="cuda")[:, start : start + n]
    rows.copy_(torch.randn(ROWS, n, device="cuda"))
    return rows


def run_quant(case: Case) -> None:
    """Forward of one quantization case; every output is read back."""
    x = random_rows(case.layout, case.n, case.dtype)
    weight = (1 + 0.5 * torch.randn(case.n, device="cuda")).to(case.dtype)
    if case.op.startswith("add_"):
        residual = random_rows(case.layout, case.n, case.dtype)
        scale_ub = torch.tensor([2.0], device="cuda")
        outputs = rmsnorm.add_rms_norm_quant(x, residual, weight, EPS, scale_ub=scale_ub, backend=case.backend)
    else:
        scale = torch.tensor([0.05], device="cuda") if case.op.endswith("static") else None
        outputs = rmsnorm.rms_norm_quant(x, weight, EPS, scale=scale, backend=case.backend)
    total = sum(t.double().sum() for t in outputs)
    if not torch.isfinite(total):
        raise ArithmeticError(f"{case}: an output is not finite")


def run(case: Case) -> None:
    """Forward and backward of one case; every output is read back."""
    if "quant" in case.op:
        return run_quant(case)
    x = random_rows(case.layout, case.n, case.dtype).requires_grad_()
    leaves = [x]
    if case.op.startswith("add_rms_norm"):
        residual_dtype = torch.float32 if case.op.endswith("fp32-residual") else case.dtype
        leaves.append(random_rows(case.layout, case.n, residual_dtype).requires_grad_())
    weight = None
    if case.weight != "none":
        w_dtype = torch.float32 if case.weight == "fp32" else case.dtype
        weight = (1 + 0.5 * torch.randn(case.n, device="cuda")).to(w_dtype)
        if case.weight != "frozen":
            leaves.append(weight.requires_grad_())
    if case.op.startswith("add_rms_norm"):
        residual = leaves[1]
        outputs = rmsnorm.add_rms_norm(x, residual, weight, EPS, backend=case.backend)
    else:
        outputs = [rmsnorm.rms_norm(x, (case.n,), weight, EPS, backend=case.backend)]
    output_grads = [random_rows(case.layout, case.n, output.dtype) for output in outputs]
    grads = torch.autograd.grad(outputs, leaves, output_grads)
    total = sum(t.detach().double().sum() for t in [*outputs, *grads])
    if not torch.isfinite(total):
        raise ArithmeticError(f"{case}: an output is not finite")


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("sanitize_cases: these cases need a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cases = [case for case in all_cases() if all(text in str(case) for text in argv)]
    for case in cases:
        print(f"case: {case}", flush=True)
        try:
            run(case)
        except Exception as error:
            error.add_note(f"sanitize_cases: in case {case}")
            raise
    torch.cuda.synchronize()
    print(f"sanitize_cases: {len(cases)} cases ran", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
