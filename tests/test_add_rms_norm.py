"""add_rms_norm (fused residual add) and weight_offset (Gemma), forward and backward, against float64."""


import pytest
import torch

from rmsnorm import add_rms_norm, rms_norm
from tests.conftest import DEVICE, ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import check_rms_norm

DTYPES = (torch.float16, torch.float32, torch.bfloat16)
# Every path: sub-warp rows, one warp, one block, the CUDA register limit (8K backward, 32K forward
# for half types), the split rows beyond, and odd widths that take the scalar paths.
WIDTHS = (1, 3, 64, 127, 1024, 4097, 8192, 12288, 65537) if ON_GPU else (1, 3, 64, 127, 1024, 4097, 12288, 32769)
ROWS = 37 if ON_GPU else 3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", WIDTHS)
def test_add_rms_norm(backend, n, dtype):
    x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=dtype, scale=4.0)
    check_rms_norm(backend, x, (n,), random_weight(n, dtype), 1e-6, residual=residual)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm_3d_strided_no_weight(backend, dtype):
    base = randn(4, 6, 2 * 300 + 1, dtype=dtype)
    x = base[..., 1:301]  # misaligned start, row stride 601
    residual = randn(300, 6, 4, dtype=dtype).permute(2, 1, 0)  # no row view: copied
    check_rms_norm(backend, x, (300,), None, 1e-5, residual=residual)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (64, 4097, 12288))
def test_add_rms_norm_gemma_offset(backend, n, dtype):
    x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=dtype)
    check_rms_norm(backend, x, (n,), random_weight(n, dtype, mean=0.0), 1e-6, residual=residual, weight_offset=1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", (64, 1000, 12288))
def test_rms_norm_weight_offset(backend, n, dtype):
    check_rms_norm(backend, randn(ROWS, n, dtype=dtype), (n,), random_weight(n, dtype, mean=0.0), 1e-6, weight_offset=1.0)


def test_gradient_only_through_residual_out(backend):
    """residual_out alone feeds the loss: dx = dresidual = that gradient, dweight = 0."""
    x = randn(5, 96, dtype=torch.float32).requires_grad_()
    residual = randn(5, 96, dtype=torch.float32).requires_grad_()
    w = random_weight(96, torch.float32).requires_grad_()
    _, residual_out = add_rms_norm(x, residual, w, backend=backend)
    g = randn(5, 96, dtype=torch.float32)
    dx, dres, dw = torch.autograd.grad(residual_out, (x, residual, w), g, allow_unused=True)
    assert torch.equal(dx, g) and torch.equal(dres, g)
    assert dw is None or torch.equal(dw, torch.zeros_like(w))


def test_y_is_rms_norm_of_residual_out(backend):
    """The same bits as the two-step computation: y normalizes residual_out as stored."""
    for dtype in DTYPES:
        x, residual = randn(9, 640, dtype=dtype), randn(9, 640, dtype=dtype)
        w = random_weight(640, dtype)
        y, residual_out = add_rms_norm(x, residual, w, 1e-6, backend=backend)
        if backend != "torch":  # the reference need not reproduce the kernels' summation order
            assert torch.equal(y, rms_norm(residual_out, (640,), w, 1e-6, backend=backend))


@pytest.mark.parametrize("casting_mode", ("fp32", "llama"))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("n", (64, 4097, 12288) if ON_GPU else (64, 300))
def test_fp32_residual_stream(backend, n, dtype, casting_mode):
    """An fp32 residual beside 16-bit x: residual_out stays fp32, y has x's dtype, gradients their own."""
    x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=torch.float32, scale=8.0)
    check_rms_norm(backend, x, (n,), random_weight(n, dtype), 1e-6, residual=residual, casting_mode=casting_mode)


@pytest.mark.skipif(not ON_GPU, reason="the cuda and triton backends run side by side only on a CUDA GPU")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_fp32_residual_stream_same_bits_on_both_backends(dtype):
    """The CUDA kernels and the Triton kernels add, round and normalize the fp32 stream alike."""
    x, residual = randn(37, 4096, dtype=dtype), randn(37, 4096, dtype=torch.float32, scale=8.0)
    w = random_weight(4096, dtype)
    cuda, triton = (add_rms_norm(x, residual, w, 1e-6, backend=b) for b in ("cuda", "triton"))
    assert torch.equal(cuda[1], triton[1]) and cuda[1].dtype == torch.float32
    assert (cuda[0].float() - triton[0].float()).abs().max() <= (triton[0].float().abs() * 2**-7).max()


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (lambda x: x[:, :-1], ValueError, "residual must have x's shape"),
        (lambda x: x.double(), TypeError, "residual must have x's dtype"),
        (lambda x: x.tolist(), TypeError, "residual must be a torch.Tensor"),
    ],
)
def test_add_rms_norm_bad_residual(backend, bad, error, message):
    x = randn(4, 16, dtype=torch.float32)
    with pytest.raises(error, match=message):
        add_rms_norm(x, bad(x.clone()), backend=backend)


def test_weight_offset_needs_weight(backend):
    x = randn(4, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="weight_offset needs a weight"):
        rms_norm(x, weight_offset=1.0, backend=backend)
    with pytest.raises(ValueError, match="weight_offset must be finite"):
        rms_norm(x, weight=torch.ones(16, device=DEVICE), weight_offset=float("nan"), backend=backend)
    with pytest.raises(TypeError, match="weight_offset must be a real number"):
        rms_norm(x, weight=torch.ones(16, device=DEVICE), weight_offset="1", backend=backend)
