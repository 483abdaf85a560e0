"""Bad input gets a clear exception naming the problem, never a crash or a wrong answer."""

import pytest
import torch

from rmsnorm import rms_norm
from tests.conftest import DEVICE, ON_GPU

N = 16


def x_and_weight(dtype=torch.float32):
    return torch.randn(4, N, device=DEVICE, dtype=dtype), torch.randn(N, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8], ids=str)
def test_non_floating_x(backend, dtype):
    x = torch.ones(4, N, device=DEVICE).to(dtype)
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64"):
        rms_norm(x, (N,), backend=backend)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64], ids=str)
def test_non_floating_weight(backend, dtype):
    x, _ = x_and_weight()
    with pytest.raises(TypeError, match="weight must be float32"):
        rms_norm(x, (N,), torch.ones(N, device=DEVICE).to(dtype), backend=backend)


def test_float64_needs_the_reference(backend):
    x, w = x_and_weight(torch.float64)
    if backend == "torch":
        assert rms_norm(x, (N,), w, backend=backend).dtype == torch.float64
        return
    with pytest.raises(TypeError, match=f"the {backend} backend supports float32, float16 and bfloat16"):
        rms_norm(x, (N,), w, backend=backend)


def test_weight_shape(backend):
    x, _ = x_and_weight()
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\) to match normalized_shape, got \(15,\)"):
        rms_norm(x, (N,), torch.ones(N - 1, device=DEVICE), backend=backend)


@pytest.mark.parametrize("shape", [(N + 1,), (3, N), (5, 4, N)])
def test_normalized_shape_must_match_trailing_dims(backend, shape):
    x, _ = x_and_weight()
    with pytest.raises(ValueError, match="normalized_shape .* must match the trailing dims of x"):
        rms_norm(x, shape, backend=backend)


def test_empty_normalized_shape(backend):
    x, _ = x_and_weight()
    with pytest.raises(ValueError, match="normalized_shape must name at least one dim"):
        rms_norm(x, (), backend=backend)


@pytest.mark.parametrize("shape", [1.5, "16", (16.0,), (True,), None])
def test_normalized_shape_type(backend, shape):
    x, _ = x_and_weight()
    if shape is None:
        rms_norm(x, shape, backend=backend)  # None is the default: x.shape[-1:]
        return
    with pytest.raises(TypeError, match="normalized_shape must be an int or a sequence of ints"):
        rms_norm(x, shape, backend=backend)


def test_scalar_x(backend):
    with pytest.raises(ValueError, match="normalized_shape must name at least one dim"):
        rms_norm(torch.tensor(1.0, device=DEVICE), backend=backend)


def test_x_not_a_tensor(backend):
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        rms_norm([[1.0, 2.0]], backend=backend)


def test_weight_not_a_tensor(backend):
    x, _ = x_and_weight()
    with pytest.raises(TypeError, match="weight must be a torch.Tensor or None, got list"):
        rms_norm(x, (N,), [1.0] * N, backend=backend)


@pytest.mark.parametrize("eps", [-1e-6, float("nan"), float("inf"), -float("inf")])
def test_bad_eps_value(backend, eps):
    x, w = x_and_weight()
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        rms_norm(x, (N,), w, eps, backend=backend)


@pytest.mark.parametrize("eps", ["1e-5", True, torch.tensor(1e-5), [1e-5]])
def test_bad_eps_type(backend, eps):
    x, w = x_and_weight()
    with pytest.raises(TypeError, match="eps must be a real number or None"):
        rms_norm(x, (N,), w, eps, backend=backend)


@pytest.mark.parametrize("name", ["Triton", "cudnn", "", None, 3])
def test_unknown_backend(name):
    x, w = x_and_weight()
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'triton', 'cuda', 'torch'"):
        rms_norm(x, (N,), w, backend=name)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU to put the weight on another device than x")
def test_weight_on_another_device(backend):
    x, w = x_and_weight()
    with pytest.raises(ValueError, match="weight must be on x's device"):
        rms_norm(x, (N,), w.cpu(), backend=backend)


def test_weight_on_another_device_cpu_meta():
    """Without a GPU, the meta device stands in for "another device"."""
    x = torch.randn(4, N)
    with pytest.raises(ValueError, match="weight must be on x's device cpu, got meta"):
        rms_norm(x, (N,), torch.empty(N, device="meta"))


@pytest.mark.skipif(ON_GPU, reason="checks the error raised where there is no GPU")
def test_cuda_backend_without_gpu():
    x, w = x_and_weight()
    with pytest.raises(RuntimeError, match=r"the cuda backend needs a CUDA tensor, got one on cpu \(no CUDA GPU"):
        rms_norm(x, (N,), w, backend="cuda")


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, N)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1"):
        rms_norm(x, (N,), backend="triton")


def test_process_still_usable_after_errors(backend):
    x, w = x_and_weight()
    for bad in (torch.ones(N - 1, device=DEVICE), torch.ones(N, device=DEVICE, dtype=torch.int32)):
        with pytest.raises((TypeError, ValueError)):
            rms_norm(x, (N,), bad, backend=backend)
    y = rms_norm(x, (N,), w, backend=backend)
    assert torch.isfinite(y).all()
