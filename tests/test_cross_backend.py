"""triton, cuda and torch agree with the float64 reference and with each other, forward and backward."""

import pytest
import torch

from rmsnorm import rms_norm
from tests.conftest import ON_GPU
from tests.numerics import FP32_UNIT, check_rms_norm, reduction_units, ulp

pytestmark = pytest.mark.skipif(not ON_GPU, reason="the three backends run side by side only on a CUDA GPU")

BACKENDS = ("triton", "cuda", "torch")
DTYPES = (torch.float16, torch.float32, torch.bfloat16)
WIDTHS = (1, 64, 127, 1024, 4097, 16384, 65536)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", WIDTHS)
def test_backends_agree(n, dtype):
    x = torch.randn(67, n, device="cuda").to(dtype)
    w = (1 + 0.5 * torch.randn(n, device="cuda")).to(dtype)
    dy = torch.randn(67, n, device="cuda").to(dtype)
    outputs = {}
    for backend in BACKENDS:
        check_rms_norm(backend, x, (n,), w, 1e-5, dy=dy)  # y, dx and dweight against float64
        outputs[backend] = rms_norm(x, (n,), w, 1e-5, backend=backend).double()
    # Each y is within half an ulp (plus fp32 reduction error) of the exact result, so two backends
    # differ by at most one ulp plus twice that error; more would mean one of them is biased.
    reference = outputs["torch"]
    allowed = ulp(reference, dtype) + 2 * reduction_units(n) * FP32_UNIT * reference.abs()
    for backend in ("triton", "cuda"):
        worst = ((outputs[backend] - reference).abs() / allowed).max().item()
        assert worst <= 1, f"{backend} y differs from torch's by {worst:.2f} times the allowed difference"
