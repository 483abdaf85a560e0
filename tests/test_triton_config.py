"""Launch configurations of the Triton kernels: plain arithmetic on them, which runs everywhere.

The backward's pipeline depth fits the shared memory of the GPU it runs on: rms_norm_bwd_kernel
buffers (stages - 1) row tiles of every pipelined tensor (x, dy, dresidual) in shared memory
(bench/NOTES.md v0.24); a GPU with less of it than an H100 must get fewer stages, or Triton's
compile fails there. The forward's warps follow its tile, and FP32_RESIDUAL_MAX_TILE_ELEMENTS_PER_THREAD
where fp32 x and residual fill the widest tile (v0.53).
"""

from __future__ import annotations

import pytest
import torch

from rmsnorm import triton_kernels

# Shared memory a block may opt in to: H100, A100 (cudaDevAttrMaxSharedMemoryPerBlockOptin).
H100_BYTES, A100_BYTES = 232448, 166912


def stages_for(n: int, dtypes: tuple[torch.dtype, ...], shared_bytes: int, monkeypatch) -> int:
    monkeypatch.setattr(triton_kernels, "_shared_memory_per_block", lambda device: shared_bytes)
    tensors = tuple(torch.empty(1, dtype=d) for d in dtypes)
    return triton_kernels._bwd_pipeline(triton_kernels.tile_config(n, "backward"), torch.device("cpu"), tensors)[1]


@pytest.mark.parametrize("shared_bytes", (H100_BYTES, A100_BYTES, 48 << 10))
@pytest.mark.parametrize("n", (512, 4096, 5120, 8192))
@pytest.mark.parametrize("tensors", (2, 3), ids=("x-dy", "x-dy-dresidual"))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_pipeline_buffers_fit_the_block(dtype, tensors, n, shared_bytes, monkeypatch):
    cfg = triton_kernels.tile_config(n, "backward")
    stages = stages_for(n, (dtype,) * tensors, shared_bytes, monkeypatch)
    buffers = (stages - 1) * cfg.block_m * cfg.block_n * torch.empty(0, dtype=dtype).element_size() * tensors
    assert 1 <= stages and buffers + triton_kernels.BWD_PIPELINE_SHARED_MARGIN <= shared_bytes


def test_the_cap_binds_only_where_memory_is_short(monkeypatch):
    """fp32 x, dy and dresidual at 8192: 96 KB a tile. An H100 holds the rule's 3 stages, an A100 2."""
    fp32_with_dresidual = (torch.float32,) * 3
    assert stages_for(8192, fp32_with_dresidual, H100_BYTES, monkeypatch) == 3
    assert stages_for(8192, fp32_with_dresidual, A100_BYTES, monkeypatch) == 2
    assert stages_for(4096, (torch.bfloat16,) * 2, A100_BYTES, monkeypatch) == 4


@pytest.mark.parametrize("per_thread", (64, 32))
def test_fp32_residual_rows_of_the_widest_tile_alone_take_their_own_warps(per_thread, monkeypatch):
    monkeypatch.setattr(triton_kernels, "FP32_RESIDUAL_MAX_TILE_ELEMENTS_PER_THREAD", per_thread)
    widest = triton_kernels.FWD_MAX_TILE_N

    def warps(n: int, x_dtype: torch.dtype, residual_dtype: torch.dtype | None, quantized: bool = False) -> int:
        x = torch.empty(1, dtype=x_dtype)
        residual = None if residual_dtype is None else torch.empty(1, dtype=residual_dtype)
        return triton_kernels._fwd_num_warps(triton_kernels.tile_config(n, "forward"), x, residual, quantized)

    assert warps(widest, torch.float32, torch.float32) == widest // (32 * per_thread)
    tile_warps = triton_kernels.tile_config(widest, "forward").num_warps
    assert warps(widest, torch.float32, torch.float32, quantized=True) == tile_warps
    assert warps(widest, torch.float32, None) == tile_warps
    assert warps(widest, torch.bfloat16, torch.bfloat16) == tile_warps
    assert warps(widest, torch.bfloat16, torch.float32) == tile_warps
    half_tile_warps = triton_kernels.tile_config(widest // 2, "forward").num_warps
    assert warps(widest // 2, torch.float32, torch.float32) == half_tile_warps
