"""rmsnorm: RMS normalization for PyTorch on the GPU, a Triton and a CUDA C++ backend behind one dispatcher."""

from .functional import add_rms_norm, add_rms_norm_quant, available_backends, rms_norm, rms_norm_quant
from .module import RMSNorm, patch

__all__ = ["RMSNorm", "add_rms_norm", "add_rms_norm_quant", "available_backends", "patch", "rms_norm", "rms_norm_quant"]
__version__ = "0.1.0"
