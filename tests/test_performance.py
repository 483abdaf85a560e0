"""Timing checks against the copy ceiling. Marked `benchmark`: deselected by default; `-m benchmark` runs them.

The full measurement is `python -m bench`; these only guard against a gross regression.
"""

import pytest
import torch

from rmsnorm import rms_norm
from tests.conftest import ON_GPU

pytestmark = [pytest.mark.benchmark, pytest.mark.skipif(not ON_GPU, reason="timing needs a CUDA GPU")]

# M * N = 2^27 bf16 elements: 256 MiB per tensor, several times the L2 of any current GPU.
ELEMENTS = 2**27
# A gross-regression guard, far under the benchmark's targets so that noise never trips it.
MIN_FRACTION_OF_COPY = 0.7


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    import triton.testing

    src = torch.randn(ELEMENTS, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


@pytest.mark.parametrize("n", [1024, 4096, 16384])
def test_forward_near_copy_bandwidth(backend, n):
    import triton.testing

    if backend == "torch":
        pytest.skip("the reference is not held to the copy ceiling")
    x = torch.randn(ELEMENTS // n, n, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: rms_norm(x, (n,), w, backend=backend), return_mode="median")
    bandwidth = 2 * x.numel() * x.element_size() / (ms * 1e-3)
    assert bandwidth >= MIN_FRACTION_OF_COPY * copy_bandwidth()
