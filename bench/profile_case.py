"""One warmed-up call of an op on a bf16 [2^27 / N, N] case, for a profiler to look at.

`ncu --kernel-name regex:rms_norm --launch-skip 2 --launch-count 1 python -m bench.profile_case
add_rms_norm cuda 16384` profiles the third launch (after two warm-up calls): achieved DRAM
throughput, occupancy and stall reasons say why a kernel misses the copy ceiling.
"""

from __future__ import annotations

import sys

import torch

import rmsnorm
from bench.cases import ELEMENTS

CALLS = 3  # two to warm up (JIT, caches), the third to profile


def main(op: str, backend: str, n: int) -> None:
    x = torch.randn(ELEMENTS // n, n, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    for _ in range(CALLS):
        if op == "add_rms_norm":
            rmsnorm.add_rms_norm(x, residual, weight, 1e-6, backend=backend)
        else:
            rmsnorm.rms_norm(x, (n,), weight, 1e-6, backend=backend)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
