"""rmsnorm: RMS normalization for PyTorch on the GPU, a Triton and a CUDA C++ backend behind one dispatcher."""

from .functional import available_backends, rms_norm

__all__ = ["available_backends", "rms_norm"]
__version__ = "0.1.0"
