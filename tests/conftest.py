"""Test set-up shared by every file: the device the suite runs on and the backends it covers.

On a machine without a GPU the Triton kernels run on CPU tensors under Triton's interpreter, which
must be switched on before Triton compiles them, hence before any test imports rmsnorm's kernels.
"""

import os
import random
import zlib

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
BACKENDS = ("triton", "cuda", "torch")
KERNEL_BACKENDS = ("triton", "cuda")
# Fresh inputs on every run, reproducible on demand: RMSNORM_TEST_SEED=<the seed in the header>.
BASE_SEED = int(os.environ.get("RMSNORM_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"rmsnorm: device {DEVICE}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}, RMSNORM_TEST_SEED={BASE_SEED}"


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark: timing tests, deselected by default (-m benchmark runs them)")


def _skip_without_gpu(name: str) -> None:
    if name == "cuda" and not ON_GPU:
        pytest.skip("the cuda backend runs only on a CUDA GPU; none here")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend; cuda skips, with the reason, where there is no GPU to run it on."""
    _skip_without_gpu(request.param)
    return request.param


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """The two kernel backends, as `backend`; cuda's extension is loaded (built) before the test."""
    _skip_without_gpu(request.param)
    if request.param == "cuda":
        import rmsnorm  # not at the top: TRITON_INTERPRET must be set before rmsnorm imports Triton

        rmsnorm.cuda_ext.load()
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    """Each test draws its own inputs: the base seed mixed with the test's id."""
    torch.manual_seed(BASE_SEED ^ zlib.crc32(request.node.nodeid.encode()))
