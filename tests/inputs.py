"""Random inputs the tests draw: never zeros, weights that look trained."""

import torch

from tests.conftest import DEVICE


def randn(*shape, dtype, scale=1.0):
    """Standard normal values times scale, drawn in fp32 and rounded to dtype, on the test device."""
    return (torch.randn(*shape, dtype=torch.float32, device=DEVICE) * scale).to(dtype)


def random_weight(n, dtype, mean=1.0):
    """Weights around mean with a spread, as trained RMSNorm weights look; never all ones."""
    return (mean + 0.5 * torch.randn(n, device=DEVICE)).to(dtype)
