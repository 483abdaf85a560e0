"""Our ops as real torch operators: opcheck, torch.compile(fullgraph=True) and CUDA graphs."""

import pytest
import torch

import rmsnorm
from rmsnorm import ops
from tests.conftest import DEVICE, ON_GPU
from tests.ddp_train import Block

def op_samples(backend):
    """(op, args) for every op of the backend, on small random inputs."""
    fwd, add_fwd = ops.forward_ops(backend)
    bwd = torch.ops.rmsnorm.rms_norm_bwd_triton if backend == "triton" else torch.ops.rmsnorm_cuda.rms_norm_bwd
    x, residual, dy = (torch.randn(5, 64, device=DEVICE) for _ in range(3))
    w = torch.randn(64, device=DEVICE)
    _, rstd = fwd(x, w, 0.0, 1e-6, False)
    return [
        (fwd, (x.requires_grad_(), w.requires_grad_(), 0.0, 1e-6, False)),
        (fwd, (x, None, 0.0, 1e-6, False)),
        (fwd, (x, w, 1.0, 1e-6, True)),
        (add_fwd, (x, residual.requires_grad_(), w, 1.0, 1e-6, False)),
        (add_fwd, (x, residual, w, 0.0, 1e-6, True)),
        (bwd, (dy, x.detach(), None, w.detach(), 0.0, rstd, True, False)),
        (bwd, (dy, x.detach(), None, w.detach(), 0.0, rstd, True, True)),
        (bwd, (dy, x.detach(), residual.detach(), None, 0.0, rstd, False, False)),
        *head_view_samples(fwd, add_fwd, bwd),
    ]


def head_view_samples(fwd, add_fwd, bwd):
    """The ops on per-head views ([rows, heads, D] with strides that do not merge) and an fp32
    residual stream beside bf16 x."""
    qkv = torch.randn(6, 3 * 4 * 32, device=DEVICE)
    q, k = qkv[:, : 4 * 32].view(6, 4, 32), qkv[:, 4 * 32 : 8 * 32].view(6, 4, 32)
    w = torch.randn(32, device=DEVICE)
    _, rstd = fwd(q, w, 0.0, 1e-6, False)
    x16, residual32 = torch.randn(5, 64, device=DEVICE).bfloat16(), torch.randn(5, 64, device=DEVICE)
    w64 = torch.randn(64, device=DEVICE)
    _, residual_out, rstd32 = add_fwd(x16, residual32, w64, 0.0, 1e-6, False)
    return [
        (fwd, (qkv.detach()[:, : 4 * 32].view(6, 4, 32).requires_grad_(), w, 0.0, 1e-6, False)),
        (add_fwd, (q, k, w, 0.0, 1e-6, False)),
        (bwd, (torch.randn(6, 4, 32, device=DEVICE), q, k, w, 0.0, rstd, True, False)),
        (add_fwd, (x16.requires_grad_(), residual32.requires_grad_(), w64, 0.0, 1e-6, True)),
        (bwd, (torch.randn(5, 64, device=DEVICE).bfloat16(), residual_out, None, w64, 0.0, rstd32, True, True)),
    ]


def test_opcheck(kernel_backend):
    for op, args in op_samples(kernel_backend):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("casting_mode, dtype", [("fp32", torch.float32), ("llama", torch.bfloat16)])
def test_compiled_op_is_bitwise_eager(kernel_backend, casting_mode, dtype):
    def step(x, residual, w):
        y, residual_out = rmsnorm.add_rms_norm(x, residual, w, 1e-6, casting_mode=casting_mode, backend=kernel_backend)
        return (
            rmsnorm.rms_norm(y, (y.shape[-1],), w, 1e-6, casting_mode=casting_mode, backend=kernel_backend),
            residual_out,
        )

    x, residual = (torch.randn(2, 9, 256, device=DEVICE).to(dtype) for _ in range(2))
    w = torch.randn(256, device=DEVICE).to(dtype)
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in (x, residual, w)]
        outputs = fn(*leaves)
        grads = torch.autograd.grad(outputs, leaves, [torch.ones_like(o) for o in outputs])
        results.append((*outputs, *grads))
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)


def test_dynamic_shapes_and_scalars(kernel_backend):
    """dynamic=True: the row width, eps and weight_offset arrive symbolic; still one graph, still eager's bits.

    Widths on both sides of the auto backend's switch for add_rms_norm (functional._AUTO_TRITON_WIDTHS).
    """

    def step(x, residual, w, eps, offset):
        y, residual_out = rmsnorm.add_rms_norm(x, residual, w, eps, weight_offset=offset, backend=kernel_backend)
        return rmsnorm.rms_norm(y, None, w, eps, weight_offset=offset, backend=kernel_backend), residual_out

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for n, eps, offset in ((96, 1e-6, 0.0), (200, 1e-5, 1.0), (8200, 0, 0.5)):
        x, residual = torch.randn(3, n, device=DEVICE), torch.randn(3, n, device=DEVICE)
        w = torch.randn(n, device=DEVICE)
        for eager, traced in zip(step(x, residual, w, eps, offset), compiled(x, residual, w, eps, offset)):
            assert torch.equal(eager, traced), f"N={n}"


def test_transformer_block_compiles_fullgraph(kernel_backend):
    torch.manual_seed(0)
    block = Block(128, kernel_backend).to(DEVICE)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(4, 16, 128, device=DEVICE)
    results = []
    for fn in (block, compiled):
        block.zero_grad()
        out = fn(x)
        out.square().mean().backward()
        results.append((out.detach(), *(p.grad.clone() for p in block.parameters())))
    # Inductor fuses the Linear/GELU epilogues and may order their sums differently: agreement to
    # fp32 rounding of a few dependent layers, not bits (the op alone is bitwise, above).
    for eager, compiled_result in zip(*results):
        torch.testing.assert_close(compiled_result, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("n", [4096, 3000])
def test_cuda_graph_replay(kernel_backend, n):
    """Captured on first use of the shape (n = 3000 is met nowhere else), replayed on new inputs."""
    x, residual = torch.randn(64, n, device="cuda"), torch.randn(64, n, device="cuda")
    w = torch.randn(n, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        y, residual_out = rmsnorm.add_rms_norm(x, residual, w, 1e-6, backend=kernel_backend)
        z = rmsnorm.rms_norm(y, (n,), w, 1e-6, backend=kernel_backend)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        residual.copy_(torch.randn_like(residual))
        graph.replay()
        torch.cuda.synchronize()
        y_eager, residual_eager = rmsnorm.add_rms_norm(x, residual, w, 1e-6, backend=kernel_backend)
        assert torch.equal(residual_out, residual_eager) and torch.equal(y, y_eager)
        assert torch.equal(z, rmsnorm.rms_norm(y_eager, (n,), w, 1e-6, backend=kernel_backend))


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize(
    "rows, n",
    # Each backward path of bf16 rows: held in registers (4096), staged in shared memory (cuda) or
    # in one pass (triton) at 16384, one pass on a cooperative grid at 65536 (both backends; the
    # launch waits on every block being resident), and 2^20 in few rows (cuda's two passes).
    [(64, 4096), (64, 16384), (64, 65536), (4, 2**20)],
)
def test_cuda_graph_replay_of_training_step(kernel_backend, rows, n):
    """torch.cuda.make_graphed_callables of an RMSNorm: forward and backward captured, then replayed
    on fresh inputs with the bits of the eager step."""
    norm = rmsnorm.RMSNorm(n, eps=1e-6, device="cuda", dtype=torch.bfloat16, backend=kernel_backend)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(n, device="cuda"))
    sample = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(norm, (sample,))  # norm itself, its forward replaced
    for _ in range(2):
        x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        results = []
        for step in (graphed, lambda x: rmsnorm.rms_norm(x, (n,), norm.weight, 1e-6, backend=kernel_backend)):
            y = step(x)
            results.append((y.detach().clone(), *torch.autograd.grad(y, (x, norm.weight), dy)))
        for replayed, eager in zip(*results):
            assert torch.equal(replayed, eager)


def test_compiled_qk_norm_is_bitwise_eager(kernel_backend):
    """QK-norm on per-head views of a fused projection, and an fp32 residual stream, in one graph.

    Each output comes from one of our ops alone: an output used twice would have its two gradients
    summed by Inductor in fp32 and by eager autograd in bf16, a difference that is not ours.
    """
    heads, d = 4, 64

    def step(qkv, x, residual, wq, wk):
        q = qkv[..., : heads * d].view(*qkv.shape[:-1], heads, d)
        k = qkv[..., heads * d : 2 * heads * d].view(*qkv.shape[:-1], heads, d)
        q = rmsnorm.rms_norm(q, (d,), wq, 1e-6, backend=kernel_backend)
        k = rmsnorm.rms_norm(k, (d,), wk, 1e-6, backend=kernel_backend)
        y, residual_out = rmsnorm.add_rms_norm(x, residual, None, 1e-6, backend=kernel_backend)
        return q, k, y, residual_out

    qkv = torch.randn(2, 9, 3 * heads * d, device=DEVICE).bfloat16()
    x = torch.randn(2, 9, heads * d, device=DEVICE).bfloat16()
    residual = torch.randn(2, 9, heads * d, device=DEVICE)  # fp32 residual stream beside bf16 x
    wq, wk = (torch.randn(d, device=DEVICE).bfloat16() for _ in range(2))
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in (qkv, x, residual, wq, wk)]
        outputs = fn(*leaves)
        grads = torch.autograd.grad(outputs, leaves, [torch.ones_like(o) for o in outputs])
        results.append((*outputs, *grads))
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)
