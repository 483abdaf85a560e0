"""The CUDA sources build with bare nvcc, cleanly and without register spills.

Every csrc/*.cu is compiled for sm_80 and sm_90 with the flags below; a compile error, a
warning, or any spill store or load that ptxas reports for any kernel fails the test, naming
the kernel. The kernels are torch-free, so this needs the CUDA toolkit but neither a GPU nor a
CUDA build of torch; it skips only where nvcc is not found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
KERNEL_SOURCES = sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cuh"))
ARCHS = ("sm_80", "sm_90")
NVCC_FLAGS = (
    "-std=c++17",
    "-O3",
    "-lineinfo",
    # What torch.utils.cpp_extension adds to every JIT build: the kernels must compile under them.
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
    "-Xptxas",
    "-v",
    *(flag for arch in ARCHS for flag in ("-gencode", f"arch=compute_{arch[3:]},code={arch}")),
)

TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10)/', re.MULTILINE)
# ptxas -v names the kernel, then reports its stack frame and spills:
#   ptxas info    : Compiling entry function '_ZN7rmsnorm...' for 'sm_90'
#   ptxas info    : Function properties for _ZN7rmsnorm...
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+)'")
FUNCTION = re.compile(r"Function properties for (?P<name>\S+)")
SPILLS = re.compile(r"(?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads")
WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)


@dataclass(frozen=True)
class CompileResult:
    command: list[str]
    returncode: int
    output: str  # stdout and stderr together


@dataclass(frozen=True)
class SpillReport:
    arch: str
    function: str  # mangled
    stores: int
    loads: int


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME, $CUDA_PATH or /usr/local/cuda."""
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def compile_one(nvcc: str, source: Path, out_dir: Path) -> CompileResult:
    command = [nvcc, *NVCC_FLAGS, "-c", str(source), "-o", str(out_dir / f"{source.stem}.o")]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    return CompileResult(command, done.returncode, done.stdout)


def spill_reports(output: str) -> list[SpillReport]:
    """One report per function ptxas describes, in the order it printed them."""
    reports = []
    arch, function = "?", "?"
    for line in output.splitlines():
        if entry := ENTRY.search(line):
            arch, function = entry["arch"], entry["name"]
        elif properties := FUNCTION.search(line):
            function = properties["name"]
        elif spills := SPILLS.search(line):
            reports.append(SpillReport(arch, function, int(spills["stores"]), int(spills["loads"])))
    return reports


def demangle(names: list[str]) -> list[str]:
    """Readable C++ names, or the mangled ones where c++filt is missing."""
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    done = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=False)
    readable = done.stdout.splitlines()
    return readable if done.returncode == 0 and len(readable) == len(names) else names


def describe(result: CompileResult) -> str:
    return f"$ {' '.join(result.command)}\n{result.output[-6000:]}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[Path, CompileResult]:
    """Every .cu compiled once, the files in parallel (one nvcc per core)."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (not on PATH, nor under $CUDA_HOME, $CUDA_PATH or /usr/local/cuda)")
    out_dir = tmp_path_factory.mktemp("nvcc")
    with ThreadPoolExecutor(max_workers=max(1, min(len(CU_FILES), os.cpu_count() or 1))) as pool:
        results = pool.map(lambda source: compile_one(nvcc, source, out_dir), CU_FILES)
        return dict(zip(CU_FILES, results))


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files in {CSRC}"


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_include_no_torch_headers(source: Path):
    includes = [m.group(0).strip() for m in TORCH_INCLUDE.finditer(source.read_text())]
    assert not includes, f"{source.name} must stay torch-free (bindings.cpp is the torch side), found {includes}"


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_compiles_without_warnings(compiled, source: Path):
    result = compiled[source]
    assert result.returncode == 0, f"{source.name} failed to compile:\n{describe(result)}"
    warnings = [line for line in result.output.splitlines() if WARNING.search(line)]
    assert not warnings, f"{source.name} compiles with warnings:\n" + "\n".join(warnings)


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_no_register_spills(compiled, source: Path):
    result = compiled[source]
    if result.returncode != 0:
        pytest.fail(f"{source.name} failed to compile, see test_compiles_without_warnings")
    reports = spill_reports(result.output)
    archs_reported = {report.arch for report in reports}
    assert archs_reported == set(ARCHS), (
        f"expected ptxas -v reports for {ARCHS}, parsed {sorted(archs_reported)} from:\n{describe(result)}"
    )
    spilled = [report for report in reports if report.stores or report.loads]
    names = demangle([report.function for report in spilled])
    assert not spilled, f"{source.name}: ptxas spilled registers in {len(spilled)} function(s):\n" + "\n".join(
        f"  {report.arch}: {report.stores} bytes spill stores, {report.loads} bytes spill loads in {name}"
        for report, name in zip(spilled, names)
    )


def test_binding_compiles(tmp_path):
    """bindings.cpp against this torch's headers and the CUDA toolkit's, syntax and types only.

    The CPU wheel of torch ships c10/cuda's headers but not the CMake-generated
    c10/cuda/impl/cuda_cmake_macros.h they include (it only sets build-configuration macros), so
    an empty one stands in for it.
    """
    torch_utils = pytest.importorskip("torch.utils.cpp_extension")
    nvcc = find_nvcc()
    compiler = shutil.which("c++") or shutil.which("g++")
    if nvcc is None or compiler is None:
        pytest.skip("needs nvcc (for the CUDA headers) and a C++ compiler")
    cuda_include = Path(nvcc).resolve().parent.parent / "include"
    if not (cuda_include / "cuda_runtime_api.h").is_file():
        cuda_include = Path("/usr/local/cuda/include")
    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("")
    includes = [tmp_path, *torch_utils.include_paths(), cuda_include, CSRC]
    command = [compiler, "-std=c++20", "-fsyntax-only", *(f"-I{path}" for path in includes), str(CSRC / "bindings.cpp")]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    errors = [line for line in done.stdout.splitlines() if "error" in line]
    assert done.returncode == 0, f"bindings.cpp does not compile:\n" + "\n".join(errors[:20] or [done.stdout[-4000:]])
