"""Launch configurations of the Triton kernels: plain arithmetic on them, which runs everywhere.

The backward's pipeline depth fits the shared memory of the GPU it runs on: rms_norm_bwd_kernel
buffers (stages - 1) row tiles of every pipelined tensor (x, dy, dresidual) in shared memory
(bench/NOTES.md v0.24); a GPU with less of it than an H100 must get fewer stages, or Triton's
compile fails there. The forward's warps follow its tile, and FP32_RESIDUAL_MAX_TILE_ELEMENTS_PER_THREAD
where fp32 x and residual fill the widest tile (v0.53); rms_norm's 16-bit rows up to FWD_HELD_MAX_TILE_N
are one tile, held as loaded (on a GPU; bf16's in Triton's interpreter too), and every other row past
FWD_MAX_TILE_N is cut into chunks (v0.57).
"""

from __future__ import annotations

import types

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


def _fwd_tile(n: int, dtype: torch.dtype, residual: bool = False, quantized: bool = False, on_gpu: bool = True):
    x = types.SimpleNamespace(
        dtype=dtype, element_size=lambda: torch.empty(0, dtype=dtype).element_size(), is_cuda=on_gpu
    )
    return triton_kernels._fwd_tile(n, x, x if residual else None, quantized)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_16_bit_rms_norm_rows_up_to_the_held_tile_are_one_tile_held_as_loaded(dtype):
    widest, held = triton_kernels.FWD_MAX_TILE_N, triton_kernels.FWD_HELD_MAX_TILE_N
    assert held > widest
    for n in (widest + 1, held):
        cfg, num_warps, hold = _fwd_tile(n, dtype)
        assert not cfg.split_rows and (cfg.block_m, cfg.block_n) == (1, held) and hold
        assert num_warps == cfg.num_warps == held // (32 * triton_kernels.FWD_HELD_ELEMENTS_PER_THREAD)
        # Triton's interpreter has no inline PTX: fp16's tile is converted as usual there.
        assert _fwd_tile(n, dtype, on_gpu=False) == (cfg, num_warps, dtype == torch.bfloat16)
    # Narrower rows keep their tiles, unheld; wider ones, and those with a residual or an fp8 store, split.
    assert _fwd_tile(widest, dtype)[2] is False and not _fwd_tile(widest, dtype)[0].split_rows
    assert _fwd_tile(held + 1, dtype)[0].split_rows
    assert _fwd_tile(held, dtype, residual=True)[0].split_rows
    assert _fwd_tile(held, dtype, quantized=True)[0].split_rows
    assert _fwd_tile(held, torch.float32)[0].split_rows


@pytest.mark.parametrize("residual", (False, True), ids=("rms_norm", "add_rms_norm"))
def test_split_forward_chunks_are_the_same_bytes_for_every_dtype(residual):
    n = triton_kernels.FWD_HELD_MAX_TILE_N + 1
    chunks = {}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for quantized in (False, True):
            cfg, num_warps, hold = _fwd_tile(n, dtype, residual=residual, quantized=quantized)
            assert cfg.split_rows and not hold and num_warps == cfg.num_warps
            chunks[dtype, quantized] = cfg
    assert chunks[torch.bfloat16, False] == chunks[torch.float16, False] == chunks[torch.bfloat16, True]
    sixteen, fp32 = chunks[torch.bfloat16, False], chunks[torch.float32, False]
    assert (sixteen.block_n, sixteen.num_warps) == (triton_kernels.FWD_SPLIT_CHUNK_N, 4)
    # fp32 x's chunk holds the same bytes of x on as many warps (bench/NOTES.md v0.59).
    assert fp32.block_n * 4 == sixteen.block_n * 2 and fp32.num_warps == sixteen.num_warps
    assert chunks[torch.float32, True] == fp32
