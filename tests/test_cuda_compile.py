"""The CUDA sources build with bare nvcc, cleanly and without register spills.

Every csrc/*.cu is compiled for sm_80 and sm_90 with the flags below; a compile error, a
warning, or any spill store or load that ptxas reports for any kernel fails the test, naming
the kernel. The kernels are torch-free, so this needs the CUDA toolkit but neither a GPU nor a
CUDA build of torch; it skips only where nvcc is not found. bindings.cpp is compiled against
torch's headers, and the launchers it calls must be among those the .cu objects define: a
launcher whose signature drifted between rms_norm.h, its explicit instantiations and the binding
would otherwise be found only when the extension is loaded on a GPU machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
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
    object_file: Path


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
    object_file = out_dir / f"{source.stem}.o"
    command = [nvcc, *NVCC_FLAGS, "-c", str(source), "-o", str(object_file)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    return CompileResult(command, done.returncode, done.stdout, object_file)


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


@pytest.fixture(scope="module")
def binding(tmp_path_factory) -> CompileResult:
    """bindings.cpp compiled to an object against this torch's headers and the CUDA toolkit's.

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
    out_dir = tmp_path_factory.mktemp("binding")
    stub = out_dir / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("")
    # Python's headers and the module name too: bindings.cpp is also a Python module (PYBIND11_MODULE).
    includes = [out_dir, *torch_utils.include_paths(), sysconfig.get_paths()["include"], cuda_include, CSRC]
    object_file = out_dir / "bindings.o"
    command = [
        compiler,
        "-std=c++20",
        "-DTORCH_EXTENSION_NAME=rmsnorm_cuda_compile_check",
        *(f"-I{path}" for path in includes),
        "-c",
        str(CSRC / "bindings.cpp"),
        "-o",
        str(object_file),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    return CompileResult(command, done.returncode, done.stdout, object_file)


def test_binding_compiles(binding):
    """bindings.cpp against this torch's headers and the CUDA toolkit's."""
    errors = [line for line in binding.output.splitlines() if "error" in line]
    assert binding.returncode == 0, "bindings.cpp does not compile:\n" + "\n".join(
        errors[:20] or [binding.output[-4000:]]
    )


def symbols(nm: str, object_file: Path, kind: str) -> set[str]:
    """Mangled names of the rmsnorm:: functions an object file leaves undefined or defines."""
    done = subprocess.run([nm, f"--{kind}-only", str(object_file)], capture_output=True, text=True, check=True)
    names = (line.split()[-1] for line in done.stdout.splitlines() if line.strip())
    return {name for name in names if name.startswith("_ZN7rmsnorm")}


def test_binding_calls_only_instantiated_launchers(compiled, binding):
    """Every rmsnorm:: launcher bindings.cpp calls is defined by a .cu object (what the JIT build links)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")
    if binding.returncode != 0 or any(result.returncode != 0 for result in compiled.values()):
        pytest.fail("a source failed to compile, see test_binding_compiles and test_compiles_without_warnings")
    called = symbols(nm, binding.object_file, "undefined")
    defined = set().union(*(symbols(nm, result.object_file, "defined") for result in compiled.values()))
    assert called, "bindings.cpp calls no rmsnorm:: launcher: the symbol filter is out of date"
    missing = sorted(called - defined)
    assert not missing, "bindings.cpp calls launchers no .cu instantiates (a signature drifted?):\n" + "\n".join(
        f"  {name}" for name in demangle(missing)
    )


def test_every_declared_op_is_implemented():
    """Each schema TORCH_LIBRARY declares has a CUDA kernel in TORCH_LIBRARY_IMPL, and no other."""
    source = (CSRC / "bindings.cpp").read_text()
    declared = set(re.findall(r'm\.def\(\s*"(\w+)\(', source))
    implemented = set(re.findall(r'm\.impl\(\s*"(\w+)"', source))
    assert declared, "no m.def schemas found in bindings.cpp"
    assert declared == implemented, f"declared {sorted(declared)}, implemented {sorted(implemented)}"
