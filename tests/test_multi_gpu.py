"""Several GPUs: kernels run on the tensor's own device, and DDP training matches one GPU.

These need two CUDA GPUs and skip, with that reason, elsewhere; `.ci/gpu` runs them (with the rest
of the suite) on a two-GPU machine and saves the log.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rmsnorm

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

KERNEL_BACKENDS = ("triton", "cuda")
DDP_SCRIPT = Path(__file__).resolve().parent / "ddp_train.py"
REPO_ROOT = DDP_SCRIPT.parent.parent


def forward_backward(backend, x, residual, w, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, residual, w)]
    y, residual_out = rmsnorm.add_rms_norm(leaves[0], leaves[1], leaves[2], 1e-6, backend=backend)
    z = rmsnorm.rms_norm(y, (y.shape[-1],), leaves[2], 1e-6, backend=backend)
    grads = torch.autograd.grad((z, residual_out), leaves, (dy, dy))
    return (z, residual_out, *grads)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("n", [1000, 4096, 12288])
def test_second_gpu_while_first_is_current(backend, n):
    """On cuda:1 with cuda:0 current: the results live on cuda:1 and equal the same call on cuda:0."""
    tensors = [torch.randn(67, n) for _ in range(2)] + [torch.randn(n), torch.randn(67, n)]
    with torch.cuda.device(0):
        on_first = forward_backward(backend, *(t.to("cuda:0") for t in tensors))
        on_second = forward_backward(backend, *(t.to("cuda:1") for t in tensors))
        assert torch.cuda.current_device() == 0
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    for first, second in zip(on_first, on_second):
        assert second.device == torch.device("cuda:1")
        assert torch.equal(first.cpu(), second.cpu())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_weight_on_another_gpu(backend):
    x = torch.randn(4, 64, device="cuda:1")
    with pytest.raises(ValueError, match="weight must be on x's device cuda:1, got cuda:0"):
        rmsnorm.rms_norm(x, (64,), torch.ones(64, device="cuda:0"), backend=backend)
    with pytest.raises(ValueError, match="residual must be on x's device cuda:1, got cuda:0"):
        rmsnorm.add_rms_norm(x, torch.randn(4, 64, device="cuda:0"), backend=backend)


def train(backend: str, gpus: int, out: Path, compile_model: bool = False) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "--standalone",
               str(DDP_SCRIPT), "--backend", backend, "--out", str(out)] + (["--compile"] if compile_model else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return torch.load(out)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_ddp_on_two_gpus_matches_one(backend, tmp_path):
    one = train(backend, 1, tmp_path / "one.pt")
    two = train(backend, 2, tmp_path / "two.pt")
    # Same global batch; only the all-reduce's summation order differs: fp32 rounding, compounded
    # over three SGD steps.
    torch.testing.assert_close(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_compiled_ddp_has_no_graph_breaks(backend, tmp_path):
    eager = train(backend, 2, tmp_path / "eager.pt")
    compiled = train(backend, 2, tmp_path / "compiled.pt", compile_model=True)
    assert compiled["graph_breaks"] == {}, f"graph breaks: {compiled['graph_breaks']}"
    torch.testing.assert_close(compiled["losses"], eager["losses"], rtol=1e-4, atol=1e-6)
