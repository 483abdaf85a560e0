"""cProfile of back-to-back small eager calls: which Python functions the host time of a call goes to.

`python -m bench.host_profile` profiles CALLS calls of rms_norm on bf16 x of [1, 4096] without grad,
for each kernel backend, and prints the functions with the most time of their own (cProfile's
overhead inflates Python calls, so read the shares, not the absolute numbers).
"""

from __future__ import annotations

import torch

import rmsnorm
from bench.host_breakdown import profile

CALLS = 5000
N = 4096
TOP = 30


def main() -> None:
    x = torch.randn(1, N, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    for backend in ("triton", "cuda"):

        def call(backend: str = backend) -> torch.Tensor:
            return rmsnorm.rms_norm(x, (N,), w, 1e-6, backend=backend)

        for _ in range(100):
            call()
        profile(f"rms_norm(backend={backend!r}), bf16 [1, {N}]", call, CALLS, TOP)


if __name__ == "__main__":
    main()
