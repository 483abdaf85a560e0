"""Packaging of rmsnorm.

Installs the Python package and a copy of the CUDA sources in csrc/. Where a CUDA build of torch,
nvcc and a GPU (or TORCH_CUDA_ARCH_LIST) are present, it also compiles the CUDA extension ahead of
time, into the package's _prebuilt/ directory, so that the first use of the cuda backend does not
compile; anywhere else (a CPU-only machine, CI) it skips that step with a message and installs
cleanly. A failed ahead-of-time build does not fail the install: the first use then compiles
again and reports the compiler log.
"""

import os
import shutil
import sys
import time
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).resolve().parent


def prebuild_cuda_extension(package_dir: Path) -> None:
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        print("rmsnorm: torch is not importable at install time; the CUDA extension will be built on first use")
        return
    if torch.version.cuda is None or CUDA_HOME is None:
        print("rmsnorm: no CUDA build of torch or no nvcc; skipping the ahead-of-time CUDA build")
        return
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        print("rmsnorm: no GPU visible and TORCH_CUDA_ARCH_LIST unset; skipping the ahead-of-time CUDA build")
        return
    sys.path.insert(0, str(ROOT))
    from rmsnorm import cuda_ext

    start = time.perf_counter()
    try:
        library = cuda_ext.build(package_dir / "_prebuilt")
        print(f"rmsnorm: built the CUDA extension ahead of time in {time.perf_counter() - start:.1f} s: {library}")
    except RuntimeError as error:
        print(f"rmsnorm: WARNING: the ahead-of-time CUDA build failed; it will be retried on first use.\n{error}")


class BuildPy(build_py):
    """Copies csrc/ into the package (an installed package has no source tree beside it), then prebuilds."""

    def run(self):
        super().run()
        if self.editable_mode:  # pip install -e: the package is the source tree
            prebuild_cuda_extension(ROOT / "rmsnorm")
            return
        package_dir = Path(self.build_lib) / "rmsnorm"
        shutil.copytree(ROOT / "csrc", package_dir / "_csrc", dirs_exist_ok=True)
        prebuild_cuda_extension(package_dir)


class Develop(develop):
    def run(self):
        super().run()
        prebuild_cuda_extension(ROOT / "rmsnorm")


setup(
    name="rmsnorm",
    version="0.1.0",
    description="RMS normalization for PyTorch on the GPU: Triton and CUDA C++ kernels behind one dispatcher",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rmsnorm", "rmsnorm.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "triton>=3.0", "ninja"],
    extras_require={
        # numpy < 2.4: Triton 3.6's CPU interpreter converts one-element arrays to int, which numpy 2.4 refuses.
        "test": ["pytest", "hypothesis", "numpy<2.4"],
        "bench": ["matplotlib"],
    },
    cmdclass={"build_py": BuildPy, "develop": Develop},
)
