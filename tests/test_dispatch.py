"""Which backend runs: "auto", the RMSNORM_BACKEND override, available_backends(), and logging."""

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rmsnorm
from rmsnorm import cuda_ext
from tests.conftest import DEVICE, ON_GPU


def test_available_backends():
    names = rmsnorm.available_backends()
    assert names[-1] == "torch"
    assert "triton" in names  # the GPU, or the interpreter the test suite switches on without one
    assert ("cuda" in names) == (ON_GPU and cuda_ext.available())


def test_auto_on_cpu_is_the_reference(caplog):
    x = torch.randn(3, 8)
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.rms_norm(x)
    assert "backend=torch" in caplog.text


@pytest.mark.skipif(not ON_GPU, reason="auto picks a GPU backend only for CUDA tensors")
def test_auto_on_gpu_is_a_kernel_backend(caplog):
    x = torch.randn(3, 8, device="cuda")
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.rms_norm(x)
    assert "backend=cuda" in caplog.text or "backend=triton" in caplog.text


@pytest.mark.skipif(not ON_GPU, reason="auto chooses between the kernel backends only for CUDA tensors")
@pytest.mark.parametrize("n", [1, 64, 8192, 8193, 16383, 16384, 32768, 32769])
def test_auto_choice_follows_the_row_width(n, caplog):
    """add_rms_norm goes to triton above 8192, rms_norm up to 8192 and from 16384, rms_norm_quant up
    to 8192 and add_rms_norm_quant up to 32768 when cuda loads (functional._AUTO_TRITON_WIDTHS)."""
    if "cuda" not in rmsnorm.available_backends():
        pytest.skip("auto takes triton everywhere when the cuda backend cannot load")
    x = torch.randn(2, n, device="cuda")
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.add_rms_norm(x, x)
        rmsnorm.rms_norm(x)
        rmsnorm.rms_norm_quant(x, None)
        rmsnorm.add_rms_norm_quant(x, x, None)
    add_backend = "triton" if n > 8192 else "cuda"
    norm_backend = "cuda" if 8193 <= n <= 16383 else "triton"
    quant_backend = "triton" if n <= 8192 else "cuda"
    add_quant_backend = "triton" if n <= 32768 else "cuda"
    calls = [m.split(" shape=")[0] for m in caplog.messages if "backend=" in m]
    assert calls == [
        f"add_rms_norm: backend={add_backend}",
        f"rms_norm: backend={norm_backend}",
        f"rms_norm_quant: backend={quant_backend}",
        f"add_rms_norm_quant: backend={add_quant_backend}",
    ]


def test_auto_sends_float64_to_the_reference(caplog):
    x = torch.randn(3, 8, device=DEVICE, dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.rms_norm(x)
    assert "backend=torch" in caplog.text


def test_environment_overrides_auto(monkeypatch, caplog):
    monkeypatch.setenv("RMSNORM_BACKEND", "triton")
    x = torch.randn(3, 8, device=DEVICE)
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.rms_norm(x)
    assert "backend=triton" in caplog.text
    # ...but not an explicit choice
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.rms_norm(x, backend="torch")
    assert "backend=torch" in caplog.text


def test_environment_must_name_a_backend(monkeypatch):
    monkeypatch.setenv("RMSNORM_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"\$RMSNORM_BACKEND must be one of"):
        rmsnorm.rms_norm(torch.randn(3, 8, device=DEVICE))


def test_triton_logs_its_configuration(caplog):
    x = torch.randn(3, 100, device=DEVICE)
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        rmsnorm.rms_norm(x, backend="triton")
    assert "triton rms_norm_fwd: M=3 N=100" in caplog.text
    assert "TileConfig(block_m=" in caplog.text


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_inference_calls_skip_the_operators_with_the_same_bits(backend, op, monkeypatch):
    """No input requires grad: the kernels are called without the torch operator layers, same bits."""
    if backend == "torch":
        pytest.skip("the reference has no operators to skip")
    x, residual = torch.randn(5, 300, device=DEVICE), torch.randn(5, 300, device=DEVICE)
    w = torch.randn(300, device=DEVICE)

    def call():
        if op == "rms_norm":
            return (rmsnorm.rms_norm(x, None, w, backend=backend),)
        return rmsnorm.add_rms_norm(x, residual, w, backend=backend)

    untracked = call()
    with torch.no_grad():
        untracked_no_grad = call()
    w.requires_grad_()
    tracked = call()
    assert tracked[0].requires_grad and not untracked[0].requires_grad
    for a, b, c in zip(untracked, untracked_no_grad, tracked):
        assert torch.equal(a, b) and torch.equal(a, c.detach())
    # ...and a tracked call does not take the untracked path: a spy on it sees none.
    calls = []
    monkeypatch.setattr(rmsnorm.ops, "untracked_forward_ops", lambda name: calls.append(name))
    call()
    assert calls == []


@pytest.mark.skipif(not ON_GPU, reason="the cuda backend runs only on a CUDA GPU; none here")
@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_untracked_cuda_calls_take_the_direct_entries(op, monkeypatch):
    """An inference call on cuda reaches the kernels through the extension's direct entries
    (cuda_ext.direct()), not torch.ops: a spy on the op sees no call, the entries return no rstd,
    and the result is the op's, bit for bit."""
    cuda_ext.load()
    x, residual = torch.randn(5, 300, device=DEVICE), torch.randn(5, 300, device=DEVICE)
    w = torch.randn(300, device=DEVICE)
    op_name = "rms_norm_fwd" if op == "rms_norm" else "add_rms_norm_fwd"
    through_op = getattr(torch.ops.rmsnorm_cuda, op_name)(*((x,) if op == "rms_norm" else (x, residual)), w, 0.0,
                                                          1e-6, False)  # fmt: skip
    calls = []
    monkeypatch.setattr(torch.ops.rmsnorm_cuda, op_name, lambda *args: calls.append(args))
    if op == "rms_norm":
        direct = (rmsnorm.rms_norm(x, None, w, 1e-6, backend="cuda"),)
        raw = cuda_ext.direct().rms_norm_fwd(x, w, 0.0, 1e-6, False, False)
    else:
        direct = rmsnorm.add_rms_norm(x, residual, w, 1e-6, backend="cuda")
        raw = cuda_ext.direct().add_rms_norm_fwd(x, residual, w, 0.0, 1e-6, False, False)
    assert calls == []
    assert raw[-1] is None  # rstd, neither allocated nor stored
    for a, b in zip(direct, through_op[:-1]):
        assert torch.equal(a, b)


class _LoggingTensor(torch.Tensor):
    """A __torch_function__ subclass that records the functions called on it."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(str(func))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_tensor_subclasses_see_the_operators(kernel_backend, op):
    """A tensor subclass is not called below the operators: its __torch_function__ sees our op (a
    __torch_dispatch__ one, such as DTensor, needs the dispatcher), and the values are the same."""
    x, residual = torch.randn(5, 300, device=DEVICE), torch.randn(5, 300, device=DEVICE)
    w = torch.randn(300, device=DEVICE)
    _LoggingTensor.seen = []
    if op == "rms_norm":
        plain = (rmsnorm.rms_norm(x, None, w, backend=kernel_backend),)
        logged = (rmsnorm.rms_norm(x.as_subclass(_LoggingTensor), None, w, backend=kernel_backend),)
    else:
        plain = rmsnorm.add_rms_norm(x, residual, w, backend=kernel_backend)
        logged = rmsnorm.add_rms_norm(x, residual.as_subclass(_LoggingTensor), w, backend=kernel_backend)
    assert any(f"{op}_fwd" in name for name in _LoggingTensor.seen), _LoggingTensor.seen[-5:]
    assert all(type(t) is _LoggingTensor for t in logged)
    for a, b in zip(plain, logged):
        assert torch.equal(a, b.as_subclass(torch.Tensor))


class _TransparentMode(TorchDispatchMode):
    """A dispatch mode that runs every op as it is: it only makes rms_norm go through the operators."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_training_calls_skip_the_operators_with_the_same_bits(kernel_backend, op):
    """Eager calls that autograd records run an autograd.Function around the kernels (ops._eager_autograd),
    not the torch operators: the same outputs and gradients, bit for bit, as through the operators, which a
    dispatch mode forces."""
    x = torch.randn(5, 300, device=DEVICE, requires_grad=True)
    residual = torch.randn(5, 300, device=DEVICE, requires_grad=True)
    w = torch.randn(300, device=DEVICE, requires_grad=True)

    grad_outputs = [torch.randn(5, 300, device=DEVICE) for _ in range(1 if op == "rms_norm" else 2)]

    def step():
        if op == "rms_norm":
            outputs, inputs = (rmsnorm.rms_norm(x, None, w, backend=kernel_backend),), (x, w)
        else:
            outputs, inputs = rmsnorm.add_rms_norm(x, residual, w, backend=kernel_backend), (x, residual, w)
        grads = torch.autograd.grad(outputs, inputs, grad_outputs)
        return [*outputs, *grads], type(outputs[0].grad_fn).__name__

    eager, eager_node = step()
    with _TransparentMode():
        through_operators, operator_node = step()
    kind = "RMSNorm" if op == "rms_norm" else "AddRMSNorm"
    assert eager_node == f"{kind}{kernel_backend.capitalize()}Backward"
    assert operator_node != eager_node
    assert len(eager) == len(through_operators)
    for a, b in zip(eager, through_operators):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op", ["rms_norm", "add_rms_norm"])
def test_double_backward_raises_rather_than_dropping_the_gradient(kernel_backend, op):
    """The backward is not differentiable: a gradient taken with create_graph=True still has a graph, and
    differentiating it raises, rather than leaving rms_norm's share out of a second-order gradient."""
    x = torch.randn(4, 64, device=DEVICE, requires_grad=True)
    residual = torch.randn(4, 64, device=DEVICE)
    w = torch.randn(64, device=DEVICE, requires_grad=True)
    if op == "rms_norm":
        y = rmsnorm.rms_norm(x, None, w, backend=kernel_backend)
    else:
        y, _ = rmsnorm.add_rms_norm(x, residual, w, backend=kernel_backend)
    dx, dw = torch.autograd.grad(y.square().sum(), (x, w), create_graph=True)
    assert dx.requires_grad and dw.requires_grad
    # The first-order gradients themselves are those of a plain backward.
    plain = torch.autograd.grad(y.square().sum(), (x, w))
    assert torch.equal(dx, plain[0]) and torch.equal(dw, plain[1])
    for grad in (dx, dw):
        with pytest.raises(RuntimeError, match="cannot be differentiated again"):
            torch.autograd.grad(grad.sum(), (x, w), allow_unused=True)
