"""One warmed-up call of an op on a bf16 [2^27 / N, N] case (or [M, N]: a fourth argument), for a
profiler to look at.

`ncu --kernel-name regex:rms_norm --launch-skip 2 --launch-count 1 python -m bench.profile_case
add_rms_norm cuda 16384` profiles the third launch (after two warm-up calls): achieved DRAM
throughput, occupancy and stall reasons say why a kernel misses the copy ceiling. bench/profile.sh
runs a list of such cases.

Backends: ours (cuda, triton, auto), or a peer of PEERS for rms_norm: `bench/profile.sh "rms_norm
quack 131072"` with KERNEL=regex:[Rr][Mm][Ss]_?[Nn]orm profiles quack's kernel on the same row.

Ops: rms_norm, add_rms_norm, quant_static and quant_dynamic (rms_norm_quant with a given scale or
per-row scales), add_quant (add_rms_norm_quant), qk_norm (N = D: a [tokens, H, D] view of a wider
qkv row, H = 32, as bench/features.py's QK-norm rows), backward (the gradients of x and the weight
of one recorded rms_norm, as the benchmark's backward rows: profile.sh with
KERNEL=regex:rms_norm_bwd_(kernel|staged|split) keeps to the row kernel, not the dweight reduction).
"""

from __future__ import annotations

import sys

import torch

import rmsnorm
from bench.cases import ELEMENTS
from bench.implementations import REGISTRY

# Peers whose forward can be profiled beside ours, for the same row: `backend` names them as
# bench.implementations does. Their kernels are named otherwise: KERNEL=regex:[Rr][Mm][Ss]_?[Nn]orm.
PEERS = ("quack", "liger")

CALLS = 3  # two to warm up (JIT, caches), the third to profile
EPS = 1e-6
QK_HEADS = 32


def make_call(op: str, backend: str, n: int, rows: int | None = None):
    x = torch.randn(rows or ELEMENTS // n, n, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    scale = torch.tensor([0.02], device="cuda")
    if backend in PEERS:
        if op != "rms_norm":
            raise SystemExit(f"profile_case: {backend} is profiled for rms_norm only, not {op}")
        peer_norm = REGISTRY[backend][1]()
        return lambda: peer_norm(x, weight, EPS)
    if op == "qk_norm":
        tokens = ELEMENTS // (QK_HEADS * n)
        q = torch.randn(tokens, 3 * QK_HEADS * n, device="cuda", dtype=torch.bfloat16)[:, : QK_HEADS * n]
        q = q.view(tokens, QK_HEADS, n)
        return lambda: rmsnorm.rms_norm(q, (n,), weight, EPS, backend=backend)
    if op == "backward":
        x.requires_grad_(True)
        weight.requires_grad_(True)
        y = rmsnorm.rms_norm(x, (n,), weight, EPS, backend=backend)
        dy = torch.randn_like(y)
        return lambda: torch.autograd.grad(y, (x, weight), dy, retain_graph=True)
    calls = {
        "rms_norm": lambda: rmsnorm.rms_norm(x, (n,), weight, EPS, backend=backend),
        "add_rms_norm": lambda: rmsnorm.add_rms_norm(x, residual, weight, EPS, backend=backend),
        "quant_static": lambda: rmsnorm.rms_norm_quant(x, weight, EPS, scale=scale, backend=backend),
        "quant_dynamic": lambda: rmsnorm.rms_norm_quant(x, weight, EPS, backend=backend),
        "add_quant": lambda: rmsnorm.add_rms_norm_quant(x, residual, weight, EPS, backend=backend),
    }
    return calls[op]


def main(op: str, backend: str, n: int, rows: int | None = None) -> None:
    call = make_call(op, backend, n, rows)
    with torch.no_grad() if op != "backward" else torch.enable_grad():
        for _ in range(CALLS):
            call()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
