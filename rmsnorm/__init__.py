"""rmsnorm: RMS normalization for PyTorch on the GPU, a Triton and a CUDA C++ backend behind one dispatcher."""

from .functional import add_rms_norm, available_backends, rms_norm
from .module import RMSNorm, patch

__all__ = ["RMSNorm", "add_rms_norm", "available_backends", "patch", "rms_norm"]
__version__ = "0.1.0"
