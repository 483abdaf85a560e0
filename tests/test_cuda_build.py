"""The CUDA extension's build: failures are reported with the compiler log; "auto" falls back to
Triton; processes that use the cuda backend at once on an empty cache compile it once; a corrupt
or partial cache is detected and built again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import rmsnorm
from rmsnorm import cuda_ext, functional
from rmsnorm.reference import rms_norm_reference
from tests.conftest import ON_GPU
from tests.numerics import FP32_UNIT, assert_close, reduction_units, ulp

REPO_ROOT = Path(__file__).resolve().parent.parent
# Processes that use the cuda backend at once on an empty cache.
FIRST_USERS = 4
# The inputs every one of them runs on: fp32 [ROWS, N], weight [N].
ROWS, N, EPS = 5, 1000, 1e-6
# A child's limit: its share of the build (~30 s on an H100 host) and its wait for the others.
CHILD_TIMEOUT_S = 600


def _compiler_missing() -> str | None:
    """Why the extension cannot be compiled here, or None."""
    if not ON_GPU or torch.version.cuda is None:
        return "compiling and loading the extension needs a CUDA GPU and a CUDA build of torch"
    nvcc = Path(cpp_extension.CUDA_HOME or "/nonexistent") / "bin" / "nvcc"
    if not nvcc.is_file():
        return f"compiling the extension needs nvcc; none at {nvcc}"
    if not cpp_extension.is_ninja_available():
        return "compiling the extension needs ninja"
    return None


needs_compiler = pytest.mark.skipif(
    _compiler_missing() is not None,
    reason=str(_compiler_missing()),
)
FAILED_BUILD = "building the rmsnorm CUDA extension failed; the compiler log is at"


def test_failed_build_names_the_compiler_log(tmp_path, monkeypatch):
    """A source that does not compile: the error says where the log is, and the log has the compiler's words.

    The broken source is C++ alone, so the attempt needs a host compiler and ninja, not nvcc or a GPU.
    """
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "bindings.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(cuda_ext, "_SOURCE_DIRS", (sources,))
    with pytest.raises(RuntimeError, match=FAILED_BUILD) as error:
        cuda_ext.build(tmp_path / "cache", arch_list="9.0")
    log = str(error.value).split("the compiler log is at ")[1].split(". Last lines")[0]
    assert "error" in Path(log).read_text().lower()
    # A second attempt builds again (no build.ok marker was left), and fails the same way.
    with pytest.raises(RuntimeError, match="the compiler log is at"):
        cuda_ext.build(tmp_path / "cache", arch_list="9.0")


def test_extension_name_follows_the_sources(tmp_path, monkeypatch):
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "bindings.cpp").write_text("// one\n")
    monkeypatch.setattr(cuda_ext, "_SOURCE_DIRS", (sources,))
    first = cuda_ext.extension_name("9.0")
    assert first == cuda_ext.extension_name("9.0")
    assert first != cuda_ext.extension_name("8.0")
    (sources / "kernel.cu").write_text("// two\n")
    assert first != cuda_ext.extension_name("9.0")


@pytest.mark.skipif(
    not ON_GPU,
    reason="auto picks between GPU backends only for CUDA tensors",
)
def test_auto_falls_back_to_triton_with_one_warning(monkeypatch, caplog):
    def failing_load():
        raise RuntimeError(f"{FAILED_BUILD} /nowhere")

    monkeypatch.setattr(cuda_ext, "load", failing_load)
    monkeypatch.setattr(functional, "_warned_cuda_fallback", False)
    monkeypatch.delenv("RMSNORM_BACKEND", raising=False)
    x = torch.randn(4, 64, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = rmsnorm.rms_norm(x)
        second = rmsnorm.rms_norm(x)
    messages = [str(w.message) for w in caught]
    messages = [text for text in messages if "cuda backend is unavailable" in text]
    assert len(messages) == 1 and "/nowhere" in messages[0]
    assert torch.equal(first, rmsnorm.rms_norm(x, backend="triton"))
    assert torch.equal(first, second)
    with pytest.raises(RuntimeError, match="compiler log is at /nowhere"):
        rmsnorm.rms_norm(x, backend="cuda")


def first_use(out: str, ready_dir: str, processes: str, stand_in: str = "") -> None:
    """One process's first use of the cuda backend; the tests below run it in child processes.

    The package's prebuilt library is hidden (cuda_ext.PREBUILT_DIR points at nothing), so the
    extension comes from $RMSNORM_CACHE_DIR or is compiled there, and every call of the compiler
    (torch.utils.cpp_extension.load) is counted. With `stand_in`, a library path, the compiler is
    replaced by a copy of that library into the build directory. The process waits until
    `processes` of them are ready (one file each in ready_dir), so that they all reach the
    build at once, then saves to `out` the count and rms_norm's and add_rms_norm's results.
    """
    compiles = []
    compile_for_real = cpp_extension.load

    def counted_load(**kwargs):
        compiles.append(kwargs["name"])
        if not stand_in:
            return compile_for_real(**kwargs)
        library = Path(kwargs["build_directory"]) / f"{kwargs['name']}.so"
        shutil.copyfile(stand_in, library)
        return str(library)

    cpp_extension.load = counted_load
    cuda_ext.PREBUILT_DIR = Path(ready_dir) / "no-prebuilt-library"
    (Path(ready_dir) / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + CHILD_TIMEOUT_S / 2
    while len(list(Path(ready_dir).glob("ready-*"))) < int(processes):
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {processes} processes got ready")
        time.sleep(0.01)

    x, residual, weight, dy = (t.cuda() for t in fixed_inputs())
    x.requires_grad_()
    weight.requires_grad_()
    y = rmsnorm.rms_norm(x, (N,), weight, EPS, backend="cuda")
    dx, dweight = torch.autograd.grad(y, (x, weight), dy)
    with torch.no_grad():
        add_y, res_out = rmsnorm.add_rms_norm(x, residual, weight, EPS, backend="cuda")
    results = {"y": y, "dx": dx, "dweight": dweight, "add_y": add_y, "res_out": res_out}
    results = {name: t.detach().cpu() for name, t in results.items()}
    torch.save({"compiles": len(compiles), "results": results}, out)


def fixed_inputs() -> tuple[torch.Tensor, ...]:
    """x, residual, weight, dy on the CPU, the same in every process."""
    generator = torch.Generator().manual_seed(20261125)
    x, residual, dy = (torch.randn(ROWS, N, generator=generator) for _ in range(3))
    weight = 1 + 0.5 * torch.randn(N, generator=generator)
    return x, residual, weight, dy


def run_first_users(work: Path, cache: Path, processes: int, stand_in=None) -> list:
    """Start `processes` children running first_use() at once on `cache`, each in a fresh
    process; return what each saved."""
    ready = work / f"ready-{time.monotonic_ns()}"
    ready.mkdir()
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "RMSNORM_CACHE_DIR": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    script = "import sys; from tests.test_cuda_build import first_use; first_use(*sys.argv[1:])"
    outs = [ready / f"result-{i}.pt" for i in range(processes)]
    logs = [ready / f"log-{i}.txt" for i in range(processes)]
    children = []
    for out, log in zip(outs, logs):
        arguments = [str(out), str(ready), str(processes), str(stand_in or "")]
        with open(log, "w") as sink:
            command = [sys.executable, "-c", script, *arguments]
            child = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
            children.append(child)
    for child, log in zip(children, logs):
        try:
            child.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in children:
                other.kill()
            raise
        output = log.read_text()[-6000:]
        assert child.returncode == 0, f"a first use failed; its output:\n{output}"
    return [torch.load(out) for out in outs]


@dataclass
class FirstUse:
    cache: Path  # the cache the children filled
    saved: list[dict]  # what each child saved: the compiler calls it made, its results
    builds: list[str]  # the directories in the cache after them
    marked: list[str]  # those with a build.ok marker


@pytest.fixture(scope="module")
def first_use_cache(tmp_path_factory) -> FirstUse:
    """A fresh cache that FIRST_USERS processes filled by using the cuda backend at once."""
    work = tmp_path_factory.mktemp("first-use")
    cache = work / "cache"
    saved = run_first_users(work, cache, FIRST_USERS)
    builds = sorted(p.name for p in cache.iterdir() if p.is_dir())
    marked = [name for name in builds if (cache / name / "build.ok").is_file()]
    return FirstUse(cache, saved, builds, marked)


def assert_same_results(saved: dict, expected: dict, who: str) -> None:
    for name, tensor in expected["results"].items():
        same = torch.equal(saved["results"][name], tensor)
        assert same, f"{who}: {name} differs bitwise"


@needs_compiler
def test_concurrent_first_uses_compile_once(first_use_cache):
    """FIRST_USERS processes on an empty cache: one compiles, the others wait and load its build;
    all succeed and agree bitwise, and y is rms_norm of the input to within check_rms_norm's bound.
    """
    compiles = [saved["compiles"] for saved in first_use_cache.saved]
    assert sum(compiles) == 1, f"compiler calls per process: {compiles}"
    builds = first_use_cache.builds
    assert len(builds) == 1, f"build directories: {builds}"
    assert first_use_cache.marked == builds, "the build has no build.ok marker"
    first = first_use_cache.saved[0]
    for i, saved in enumerate(first_use_cache.saved[1:], start=1):
        assert_same_results(saved, first, f"process {i} against process 0")
    x, _, weight, _ = fixed_inputs()
    y64 = rms_norm_reference(x.double(), (N,), weight.double(), EPS, torch.float64)
    tolerance = 0.5 * ulp(y64, torch.float32)
    tolerance += reduction_units(N) * FP32_UNIT * y64.abs()
    assert_close(first["results"]["y"], y64, tolerance, torch.float32, "cuda y")


@needs_compiler
def test_corrupt_or_partial_cache_is_built_again(first_use_cache, tmp_path):
    """A truncated library behind its build.ok marker fails to load and is compiled again; a
    build directory without the marker (an interrupted build) is wiped and built again.

    The first case compiles for real; in the second the compiler is stood in for by a copy of the
    good library (two real builds in this file are enough to show that compiling works).
    """
    [name] = first_use_cache.builds
    build_dir = first_use_cache.cache / name
    library = build_dir / f"{name}.so"
    good = tmp_path / "good.so"
    shutil.copyfile(library, good)
    expected = first_use_cache.saved[0]

    library.write_bytes(b"")
    [saved] = run_first_users(tmp_path, first_use_cache.cache, 1)
    assert saved["compiles"] == 1, "a truncated library was loaded without a rebuild"
    assert library.stat().st_size > 0 and (build_dir / "build.ok").is_file()
    assert_same_results(saved, expected, "after the rebuild of a truncated library")

    (build_dir / "build.ok").unlink()
    library.write_bytes(good.read_bytes()[:4096])
    stray = build_dir / "rms_norm_fwd_bf16.cuda.o"
    stray.write_bytes(b"half an object file")
    [saved] = run_first_users(tmp_path, first_use_cache.cache, 1, stand_in=good)
    assert saved["compiles"] == 1, "a build directory without build.ok was used"
    assert not stray.exists(), "the partial build was not wiped before the rebuild"
    assert (build_dir / "build.ok").is_file()
    assert_same_results(saved, expected, "after the rebuild of a partial build")
