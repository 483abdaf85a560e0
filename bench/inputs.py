"""The tensors of every case: random normal on the GPU, seeded, so that two runs time the same data.

Never zeros: a kernel may skip work on them, and an all-zero row has no meaningful RMS.
"""

from __future__ import annotations

import gc

import torch

from bench.cases import DTYPES

SEED = 0


def torch_dtype(name: str) -> torch.dtype:
    """torch dtype of a short dtype name of bench.cases.DTYPES ("bf16" -> torch.bfloat16)."""
    return getattr(torch, DTYPES[name])


def random_case(rows: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [rows, n], weight [n] and dy [rows, n], all of ``dtype``, standard normal, on the current GPU."""
    generator = torch.Generator(device="cuda").manual_seed(SEED)
    x, dy = (torch.randn(rows, n, device="cuda", dtype=dtype, generator=generator) for _ in range(2))
    weight = torch.randn(n, device="cuda", dtype=dtype, generator=generator)
    return x, weight, dy


def random_add_case(rows: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [rows, n], residual [rows, n] and weight [n] of add_rms_norm, all of ``dtype``, standard normal."""
    x, weight, residual = random_case(rows, n, dtype)  # random_case's dy is as random as a residual
    return x, residual, weight


def release_memory() -> None:
    """Between shapes, never inside a timing: free the last shape's tensors and compiled graphs."""
    # torch.compile(dynamic=False) keeps a graph per shape and grad mode under one code object; forgetting
    # them keeps its recompile limit (8) from sending a later shape back to eager without a word.
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
