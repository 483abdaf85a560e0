"""Build, cache and load the CUDA extension in csrc/, whose ops then appear as torch.ops.rmsnorm_cuda.*
and whose direct forward entries (bindings.cpp's Python module) as direct().

The extension is compiled on first use with torch.utils.cpp_extension (ninja) for the architectures
of the visible GPUs, into a directory whose name hashes the sources, the flags, the architectures
and the torch version: a changed source or a different GPU never loads a stale build, and a second
process finds the finished build and loads it without invoking the compiler. `setup.py develop` /
`pip install` put the same build inside the package ahead of time.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

logger = logging.getLogger("rmsnorm")

_PACKAGE_DIR = Path(__file__).resolve().parent
# Installed packages carry a copy of csrc/ (setup.py puts it there); a source checkout has csrc/ beside the package.
_SOURCE_DIRS = (_PACKAGE_DIR / "_csrc", _PACKAGE_DIR.parent / "csrc")
PREBUILT_DIR = _PACKAGE_DIR / "_prebuilt"
# Written last, after a successful build: a directory without it is a partial or failed build.
_BUILD_OK = "build.ok"
# -O3 without --use_fast_math: the kernels' IEEE sqrt and division must stay exact.
# -lineinfo lets compute-sanitizer and ncu point at source lines; it does not change the code.
_NVCC_FLAGS = ("-O3", "-lineinfo")
_CXX_FLAGS = ("-O3",)

_lock = threading.Lock()
_loaded = False
_load_error: str | None = None
_direct = None  # the library imported as a Python module, once loaded


def source_dir() -> Path:
    for directory in _SOURCE_DIRS:
        if (directory / "bindings.cpp").is_file():
            return directory
    raise RuntimeError(f"the rmsnorm CUDA sources were not found in {' or '.join(map(str, _SOURCE_DIRS))}")


def _sources(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.cpp")) + sorted(directory.glob("*.cu"))


def _arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST for the build: the caller's setting, else the visible GPUs' capabilities."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    if not capabilities:
        raise RuntimeError("no CUDA GPU is visible and TORCH_CUDA_ARCH_LIST is not set: nothing to build for")
    return ";".join(f"{major}.{minor}" for major, minor in sorted(capabilities))


def extension_name(arch_list: str) -> str:
    """A name unique to these sources, flags, architectures and torch build."""
    digest = hashlib.sha256()
    directory = source_dir()
    for path in sorted(directory.glob("*.cu*")) + sorted(directory.glob("*.h")) + sorted(directory.glob("*.cpp")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for item in (*_NVCC_FLAGS, *_CXX_FLAGS, arch_list, torch.__version__, str(torch.version.cuda)):
        digest.update(item.encode())
    return f"rmsnorm_cuda_{digest.hexdigest()[:16]}"


def cache_dir() -> Path:
    """Where JIT builds go: $RMSNORM_CACHE_DIR, else $XDG_CACHE_HOME/rmsnorm, else ~/.cache/rmsnorm."""
    if os.environ.get("RMSNORM_CACHE_DIR"):
        return Path(os.environ["RMSNORM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rmsnorm"


def _library_path(build_dir: Path, name: str) -> Path:
    return build_dir / f"{name}.so"


def build(root: Path, arch_list: str | None = None, *, rebuild: bool = False) -> Path:
    """Compile the extension under root/<name>/, or find it there already built; return the .so path.

    Concurrent callers (threads or processes) compile once: the others wait on a file lock, then
    find the finished build. A directory without the build.ok marker (an interrupted build) is wiped
    and built again, as is everything when `rebuild` is set (a library that failed to load).
    Raises RuntimeError naming the compiler log when the build fails.
    """
    from torch.utils import cpp_extension

    arch_list = arch_list or _arch_list()
    name = extension_name(arch_list)
    build_dir = root / name
    library = _library_path(build_dir, name)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild and (build_dir / _BUILD_OK).is_file() and library.is_file():
            return library
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir()
        log = build_dir / "build.log"
        directory = source_dir()
        previous_arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        try:
            cpp_extension.load(
                name=name,
                sources=[str(p) for p in _sources(directory)],
                extra_cflags=list(_CXX_FLAGS),
                extra_cuda_cflags=list(_NVCC_FLAGS),
                extra_include_paths=[str(directory)],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
        except Exception as error:
            log.write_text(str(error))
            raise RuntimeError(
                f"building the rmsnorm CUDA extension failed; the compiler log is at {log}. "
                f"Last lines:\n{_tail(str(error))}"
            ) from error
        finally:
            if previous_arch_list is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = previous_arch_list
        (build_dir / _BUILD_OK).write_text("ok\n")
    return library


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def available() -> bool:
    """Whether the cuda backend can work here (a GPU, a CUDA torch, and a compiler or a prebuilt library), without building."""
    if _loaded:
        return True
    if _load_error is not None or not torch.cuda.is_available() or torch.version.cuda is None:
        return False
    if any(PREBUILT_DIR.glob(f"rmsnorm_cuda_*/{_BUILD_OK}")):
        return True
    from torch.utils import cpp_extension

    return cpp_extension.CUDA_HOME is not None


def _import(library: Path):
    """The loaded library as the Python module bindings.cpp defines (named after its file)."""
    spec = importlib.util.spec_from_file_location(library.stem, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct():
    """The extension's direct Python entries (rms_norm_fwd, add_rms_norm_fwd; see bindings.cpp),
    loading it first where needed."""
    load()
    return _direct


def load() -> None:
    """Make torch.ops.rmsnorm_cuda.* available: load the prebuilt or cached build, or compile it.

    A failure is remembered: later calls raise the same error at once instead of compiling again.
    """
    global _loaded, _load_error, _direct
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        if _load_error is not None:
            raise RuntimeError(_load_error)
        try:
            if not torch.cuda.is_available() or torch.version.cuda is None:
                raise RuntimeError("the cuda backend needs a CUDA GPU and a CUDA build of torch; none is available here")
            arch_list = _arch_list()
            name = extension_name(arch_list)
            prebuilt = _library_path(PREBUILT_DIR / name, name)
            if (PREBUILT_DIR / name / _BUILD_OK).is_file() and prebuilt.is_file():
                torch.ops.load_library(str(prebuilt))
                library = prebuilt
            else:
                library = build(cache_dir(), arch_list)
                try:
                    torch.ops.load_library(str(library))
                except OSError:  # a corrupt file behind a build.ok marker: build it again
                    library = build(cache_dir(), arch_list, rebuild=True)
                    torch.ops.load_library(str(library))
            _direct = _import(library)
            from . import ops

            ops.register_cuda_ops()
            logger.debug("rmsnorm: loaded CUDA extension %s", library)
            _loaded = True
        except Exception as error:
            _load_error = str(error)
            raise RuntimeError(_load_error) from error
