"""Per-head norms on strided views (QK-norm): read in place, without a copy, forward and backward.

q = qkv[..., :H * D].view(B, S, H, D) normalized over (D,) is a view whose leading dims cannot merge
into one row stride. The kernels take up to four leading dims with their own strides; these tests
check that such views reach them as views (no copy), give the bits of the same values laid out
contiguously, and are right against float64 (tests/test_reliability.py checks more layouts).
"""

import pytest
import torch

from rmsnorm import add_rms_norm, rms_norm
from rmsnorm.functional import MAX_LEAD_DIMS, as_rows
from tests.conftest import ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import check_rms_norm

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (batch, sequence, heads, head dim): QK-norm of a fused QKV projection.
QKV_SHAPE = (2, 64, 8, 128) if ON_GPU else (2, 3, 4, 16)


def qkv_views(dtype, shape=QKV_SHAPE):
    """(q, k): views into one fused projection [B, S, 3 * H * D], each [B, S, H, D]."""
    b, s, h, d = shape
    qkv = randn(b, s, 3 * h * d, dtype=dtype)
    return qkv[..., : h * d].view(shape), qkv[..., h * d : 2 * h * d].view(shape)


def non_mergeable(lead_dims: int, d: int, dtype):
    """A view [*lead, d] whose lead_dims leading dims all have strides that cannot merge."""
    sizes = (2, 3, 2, 3, 2)[:lead_dims]
    base = randn(*(2 * s for s in sizes), d, dtype=dtype)  # every leading dim strided by 2
    return base[(slice(None, None, 2),) * lead_dims]


@pytest.mark.parametrize("lead_dims", (2, 3, 4))
def test_strided_views_reach_the_kernels_uncopied(lead_dims):
    """as_rows keeps a non-mergeable view of up to MAX_LEAD_DIMS leading dims as a view of x's memory."""
    x = non_mergeable(lead_dims, 16, torch.float32)
    rows = as_rows(x, 16)
    assert rows.data_ptr() == x.data_ptr() and rows.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert rows.dim() == lead_dims + 1 and rows.stride(-1) == 1
    q, _ = qkv_views(torch.float32)
    rows = as_rows(q, q.shape[-1])
    assert rows.data_ptr() == q.data_ptr() and rows.dim() == 3  # B and S merge, H cannot


def test_too_many_leading_dims_are_copied():
    x = non_mergeable(MAX_LEAD_DIMS + 1, 16, torch.float32)
    rows = as_rows(x, 16)
    assert rows.is_contiguous() and rows.shape == (x.numel() // 16, 16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qk_norm_same_bits_as_contiguous(kernel_backend, dtype):
    """q and k normalized in place give the bits, and gradients, of their contiguous copies."""
    backend = kernel_backend
    q, k = qkv_views(dtype)
    d = q.shape[-1]
    weight = random_weight(d, dtype)
    for view in (q, k):
        dy = randn(*view.shape, dtype=dtype)
        results = []
        for x in (view, view.contiguous()):
            leaf, w = x.detach().requires_grad_(), weight.detach().requires_grad_()  # detach keeps the strides
            y = rms_norm(leaf, (d,), w, 1e-6, backend=backend)
            y.backward(dy)
            results.append((y, leaf.grad, w.grad))
        (y_view, dx_view, dw_view), (y_copy, dx_copy, dw_copy) = results
        assert y_view.is_contiguous() and y_view.shape == view.shape
        assert torch.equal(y_view, y_copy)
        assert torch.equal(dx_view, dx_copy)
        assert torch.equal(dw_view, dw_copy)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead_dims", (1, 2, 3, 4, 5))
def test_leading_dims_against_float64(backend, lead_dims, dtype):
    """One to five non-mergeable leading dims (five: through a copy), forward and backward."""
    x = non_mergeable(lead_dims, 24, dtype)
    check_rms_norm(backend, x, (24,), random_weight(24, dtype), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qkv_heads_add_rms_norm(backend, dtype):
    """add_rms_norm with x a per-head view and a contiguous residual (and the reverse)."""
    q, _ = qkv_views(dtype)
    residual = randn(*q.shape, dtype=dtype)
    weight = random_weight(q.shape[-1], dtype)
    check_rms_norm(backend, q, (q.shape[-1],), weight, 1e-6, residual=residual)
    check_rms_norm(backend, residual, (q.shape[-1],), weight, 1e-6, residual=q)


def test_qkv_heads_no_grad_path(kernel_backend):
    """Inference calls (no autograd) take the same views: y equal to the autograd path's."""
    q, _ = qkv_views(torch.bfloat16)
    weight = random_weight(q.shape[-1], torch.bfloat16)
    with torch.no_grad():
        y = rms_norm(q, (q.shape[-1],), weight, backend=kernel_backend)
        y_add, _ = add_rms_norm(q, q, weight, backend=kernel_backend)
    assert torch.equal(y, rms_norm(q.contiguous(), (q.shape[-1],), weight, backend=kernel_backend))
    assert torch.equal(y_add, add_rms_norm(q.contiguous(), q.contiguous(), weight, backend=kernel_backend)[0])
