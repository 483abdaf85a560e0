"""rms_norm against the float64 reference, forward and backward, for every backend, dtype and shape family."""

import pytest
import torch
import torch.nn.functional as F

from rmsnorm import rms_norm, rms_norm_quant
from tests.conftest import DEVICE, ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import check_rms_norm

DTYPES = (torch.float16, torch.float32, torch.bfloat16)
EPSILONS = (1e-6, 1e-5, 1e-4)
# Triton's interpreter is roughly a thousand times slower than the GPU: on CPU the grids shrink,
# every axis keeps several values.
BATCH_SIZES = (1, 3, 127, 2048) if ON_GPU else (1, 3)
FEATURES = (512, 1000, 4096, 8192) if ON_GPU else (512, 1000, 4096)
TRANSFORMER_BATCHES = (1, 4, 16, 64) if ON_GPU else (1, 2)
SEQUENCE_LENGTHS = (128, 512, 1024) if ON_GPU else (3, 16)
HIDDEN_SIZES = (256, 512, 1024, 2048) if ON_GPU else (256, 1024)
# Odd widths hit every masking and splitting path: scalar tails, widths past one tile, split rows;
# on the GPU also the widest rows promised (2^20).
ODD_SIZES = (1, 3, 127, 4097, 12288, 65537) + ((2**20,) if ON_GPU else ())
ODD_SIZE_ROWS = 37 if ON_GPU else 2
# Rows whose aligned and misaligned forms take different CUDA kernels (staged in shared memory, held
# in registers, or walked twice): 16384 and 32768 halves, 65536 (8 Vecs a thread), 16384 floats;
# 131072 (on sm_90 cut across a cluster, its slices staged or walked from L2); backward: 16384 and
# 32768 halves and 16384 floats staged aligned, walked twice misaligned, and 2048 and 5120 (staged from
# 2 KB a row, kBwdStagedMinRowBytes; 2048 on kBwdStagedShortRowChunksPerThread, keeping dy * w).
ALIGNMENT_WIDTHS = (520, 2048, 5120, 16384, 32768, 65536, 131072)


class TestRMSNormCorrectness:
    @pytest.mark.parametrize("eps", EPSILONS)
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("features", FEATURES)
    @pytest.mark.parametrize("batch", BATCH_SIZES)
    def test_forward_correctness(self, backend, batch, features, dtype, eps):
        x = randn(batch, features, dtype=dtype)
        check_rms_norm(backend, x, (features,), random_weight(features, dtype), eps, backward=False)

    @pytest.mark.parametrize("eps", EPSILONS)
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("features", FEATURES)
    @pytest.mark.parametrize("batch", BATCH_SIZES)
    def test_backward_correctness(self, backend, batch, features, dtype, eps):
        x = randn(batch, features, dtype=dtype)
        check_rms_norm(backend, x, (features,), random_weight(features, dtype), eps)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("hidden", HIDDEN_SIZES)
    @pytest.mark.parametrize("sequence", SEQUENCE_LENGTHS)
    @pytest.mark.parametrize("batch", TRANSFORMER_BATCHES)
    def test_transformer_dimensions(self, backend, batch, sequence, hidden, dtype):
        x = randn(batch, sequence, hidden, dtype=dtype)
        check_rms_norm(backend, x, (hidden,), random_weight(hidden, dtype), 1e-6)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize(
        "case",
        ["1x1", "zeros", "zero_row", "near_1e-6", "times_100", "eps_zero", "eps_tiny", "eps_huge", "constant_rows"],
    )
    def test_edge_cases(self, backend, case, dtype):
        n, eps = 256, 1e-6
        x = randn(8, n, dtype=dtype)
        if case == "1x1":
            x, n = randn(1, 1, dtype=dtype), 1
        elif case == "zeros":
            x = torch.zeros_like(x)
        elif case == "zero_row":
            x[3] = 0
        elif case == "near_1e-6":
            x = randn(8, n, dtype=dtype, scale=1e-6) if dtype != torch.float16 else randn(8, n, dtype=dtype, scale=1e-4)
            eps = 1e-12
        elif case == "times_100":
            x = randn(8, n, dtype=dtype, scale=100.0)
        elif case == "eps_zero":
            eps = 0.0
        elif case == "eps_tiny":
            eps = 1e-30
        elif case == "eps_huge":
            eps = 1e4
        elif case == "constant_rows":
            x = torch.full_like(x, 3.0)
        check_rms_norm(backend, x, (n,), random_weight(n, dtype), eps)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_numerical_stability(self, backend, dtype):
        """Scaling x by 2^k leaves y unchanged: squares must not overflow or underflow in fp32.

        fp16 and bf16 squares would overflow their own range (|x| > 256 in fp16); the fp32 math
        must not. With eps = 0 every fp32 step scales exactly, so the kernels' y is bitwise the same.
        """
        n = 1024
        x = randn(4, n, dtype=dtype)
        w = random_weight(n, dtype)
        baseline = rms_norm(x, (n,), w, 0.0, backend=backend)
        exponents = (3, 6) if dtype == torch.float16 else (-40, 40)
        for k in exponents:
            scaled = x * 2.0**k
            assert torch.isfinite(scaled).all()
            check_rms_norm(backend, scaled, (n,), w, 0.0)
            if backend != "torch":  # the reference's rsqrt need not scale exactly
                assert torch.equal(rms_norm(scaled, (n,), w, 0.0, backend=backend), baseline), f"2^{k}"

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("n", ODD_SIZES)
    def test_odd_sizes(self, backend, n, dtype):
        x = randn(ODD_SIZE_ROWS, n, dtype=dtype)
        check_rms_norm(backend, x, (n,), random_weight(n, dtype), 1e-5)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_no_weight(self, backend, dtype):
        check_rms_norm(backend, randn(5, 3, 300, dtype=dtype), (300,), None, 1e-5)

    @pytest.mark.parametrize(
        "x_dtype, w_dtype",
        [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float16, torch.bfloat16),
         (torch.float32, torch.bfloat16)],
        ids=str,
    )  # fmt: skip
    def test_weight_dtype_differs(self, backend, x_dtype, w_dtype):
        check_rms_norm(backend, randn(6, 768, dtype=x_dtype), (768,), random_weight(768, w_dtype), 1e-6)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_multi_dim_normalized_shape(self, backend, dtype):
        x = randn(3, 5, 6, 40, dtype=dtype)
        w = random_weight(240, dtype).view(6, 40)
        check_rms_norm(backend, x, (6, 40), w, 1e-5)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_nan_and_inf_stay_in_their_row(self, backend, dtype):
        x = randn(6, 200, dtype=dtype)
        x[1, 7] = float("nan")
        x[4, 0] = float("inf")
        check_rms_norm(backend, x, (200,), random_weight(200, dtype), 1e-6, backward=False)
        y = rms_norm(x, (200,), random_weight(200, dtype), 1e-6, backend=backend)
        clean = [0, 2, 3, 5]
        assert torch.isfinite(y[clean]).all()
        assert torch.isnan(y[1]).all() and torch.isnan(y[4]).any()

    def test_default_eps_matches_torch(self, backend):
        """eps=None means what it means in F.rms_norm: fp32's machine epsilon whatever x's dtype.

        At |x| ~ 1e-3 the mean square is ~1e-6, so bf16's epsilon (7.8e-3) would shrink y ~90x and
        eps=0 would grow it ~6%: agreement within two ulps pins the default down.
        """
        for dtype in DTYPES:
            x = randn(4, 64, dtype=dtype, scale=1e-3)
            w = random_weight(64, dtype)
            check_rms_norm(backend, x, (64,), w, None)
            rtol = (16 if dtype == torch.float32 else 2) * torch.finfo(dtype).eps
            torch.testing.assert_close(
                rms_norm(x, (64,), w, backend=backend), F.rms_norm(x, (64,), w), rtol=rtol, atol=0
            )


class TestRMSNormLayouts:
    """Inputs that are views: rows with a stride, shifted starts, non-contiguous gradients."""

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("view", ["row_stride", "misaligned_start", "every_other_row", "3d_sliced"])
    def test_strided_rows(self, backend, view, dtype):
        base = randn(12, 2 * 520 + 1, dtype=dtype)
        if view == "row_stride":
            x = base[:, :520]
        elif view == "misaligned_start":
            x = base[:, 1:521]
        elif view == "every_other_row":
            x = base[::2, 3:523]
        else:
            x = base.view(3, 4, -1)[:, 1:, :520]
        assert not x.is_contiguous()
        check_rms_norm(backend, x, (520,), random_weight(520, dtype), 1e-5)

    def test_rows_are_not_copied(self, backend):
        if backend == "torch":
            pytest.skip("the reference makes no promise about copies")
        base = randn(16, 1024, dtype=torch.float32)
        x = base[:, :512]
        before = x.clone()
        rms_norm(x, (512,), None, backend=backend)
        assert torch.equal(x, before)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_non_contiguous_gradient(self, backend, dtype):
        x = randn(7, 96, dtype=dtype)
        w = random_weight(96, dtype)
        dy = randn(96, 7, dtype=dtype).t()
        check_rms_norm(backend, x, (96,), w, 1e-5, dy=dy)
        if backend == "torch":
            return  # PyTorch's own reductions may order a strided gradient differently
        x.requires_grad_()
        w.requires_grad_()
        strided = torch.autograd.grad(rms_norm(x, (96,), w, 1e-5, backend=backend), (x, w), dy)
        contiguous = torch.autograd.grad(rms_norm(x, (96,), w, 1e-5, backend=backend), (x, w), dy.contiguous())
        assert all(torch.equal(a, b) for a, b in zip(strided, contiguous))

    def test_expanded_gradient_from_sum(self, backend):
        """y.sum().backward() sends a gradient with zero strides."""
        x = randn(9, 130, dtype=torch.float32)
        check_rms_norm(backend, x, (130,), random_weight(130, torch.float32), 1e-5, dy=torch.ones(1, device=DEVICE).expand(9, 130))


class TestRMSNormEmpty:
    @pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64)])
    def test_zero_rows(self, backend, shape):
        x = torch.randn(shape, device=DEVICE).requires_grad_()
        w = torch.randn(64, device=DEVICE).requires_grad_()
        y = rms_norm(x, (64,), w, backend=backend)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(w.grad, torch.zeros_like(w))

    def test_zero_width(self, backend):
        x = torch.randn(3, 0, device=DEVICE).requires_grad_()
        y = rms_norm(x, (0,), backend=backend)
        assert y.shape == (3, 0)


class TestReproducibility:
    """Same input, same bits: run to run, and whatever rows surround a row."""

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("n", [64, 4096, 12288])
    def test_run_to_run(self, backend, n, dtype):
        x = randn(300 if ON_GPU else 9, n, dtype=dtype).requires_grad_()
        w = random_weight(n, dtype).requires_grad_()
        dy = randn(x.shape[0], n, dtype=dtype)
        first = None
        for _ in range(3):
            y = rms_norm(x, (n,), w, backend=backend)
            result = (y, *torch.autograd.grad(y, (x, w), dy))
            if first is None:
                first = result
            for a, b in zip(first, result):
                assert torch.equal(a, b)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("n", [64, 4096, 12288])
    def test_batch_invariance(self, backend, n, dtype):
        if backend == "torch":
            pytest.skip("the reference's vectorised CPU/GPU reductions may depend on the batch")
        rows = 4097 if ON_GPU else 33
        x = randn(rows, n, dtype=dtype)
        w = random_weight(n, dtype)
        full = rms_norm(x, (n,), w, backend=backend)
        for index in (0, rows // 2, rows - 1):
            alone = rms_norm(x[index : index + 1].clone(), (n,), w, backend=backend)
            assert torch.equal(alone[0], full[index]), f"row {index} differs alone and in a batch of {rows}"


@pytest.mark.skipif(not ON_GPU, reason="the cuda backend runs only on a CUDA GPU; none here")
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("n", ALIGNMENT_WIDTHS)
def test_cuda_same_bits_whatever_the_alignment(n, dtype):
    """On the cuda backend a row gives the same y, the same fp8 y_q and scale, and the same dx, whether
    it starts on a 16-byte boundary or not: the kernels for either keep one order of every sum.
    (Triton promises less: it compiles each alignment apart and may lay a row out, so sum it,
    differently.)"""
    x = randn(3, n, dtype=dtype)
    misaligned = torch.empty(3, n + 1, dtype=dtype, device=DEVICE)[:, 1:]
    misaligned.copy_(x)
    w = random_weight(n, dtype)
    assert torch.equal(rms_norm(x, (n,), w, backend="cuda"), rms_norm(misaligned, (n,), w, backend="cuda"))
    y_q, scale = rms_norm_quant(x, w, backend="cuda")
    misaligned_y_q, misaligned_scale = rms_norm_quant(misaligned, w, backend="cuda")
    assert torch.equal(y_q.view(torch.uint8), misaligned_y_q.view(torch.uint8))
    assert torch.equal(scale, misaligned_scale)
    dy = randn(3, n, dtype=dtype)
    grads = [
        torch.autograd.grad(rms_norm(leaf, (n,), w, backend="cuda"), leaf, dy)[0]
        for leaf in (x.detach().requires_grad_(), misaligned.detach().requires_grad_())
    ]
    assert misaligned.detach().data_ptr() % 16 != 0
    assert torch.equal(*grads)
