"""Side-by-side timings of CUDA launch-configuration candidates, to choose csrc's constants.

`python -m bench.tune_cuda` compiles one build of the extension per candidate, each from a copy of
csrc/ whose `constexpr` constants named in CANDIDATES are rewritten, all builds in parallel. Two
builds cannot share a process (each registers the torch.ops.rmsnorm_cuda namespace), so every
candidate is timed in a child process of its own, at M·N = 2^27, bf16 (or --dtypes), against the
copy ceiling of that process. It prints one table a dtype; the choice and the numbers behind it go
to bench/NOTES.md and to the comments beside the constants. `--baseline DIR` adds a candidate built
from another copy of csrc/ (for example the last commit's, `git archive HEAD csrc | tar -x -C DIR
--strip-components 1`): a change to the code, not to a constant, timed beside the code it replaces.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NS = (1024, 2048, 4096, 8192, 16384, 32768)
# label -> {constant name in csrc/*.cu: value written in its place}; {} is csrc as it is.
CANDIDATES: dict[str, dict[str, str]] = {
    "as is": {},
}


def _rewrite(sources: Path, overrides: dict[str, str]) -> None:
    for name, value in overrides.items():
        pattern = re.compile(rf"(constexpr\s+\w+\s+{name}\s*=\s*)[^;]+;")
        files = sorted(sources.glob("*.cu")) + sorted(sources.glob("*.cuh"))
        hits = [p for p in files if pattern.search(p.read_text())]
        if len(hits) != 1:
            raise SystemExit(f"constant {name} found in {len(hits)} files of csrc/, expected one")
        hits[0].write_text(pattern.sub(rf"\g<1>{value};", hits[0].read_text()))


def _build(index: int, overrides: dict[str, str], source_dir: Path, root: Path) -> Path:
    """Compile one candidate in a child process (cpp_extension.load imports the library it builds)."""
    sources = root / f"csrc{index}"
    shutil.copytree(source_dir, sources)
    _rewrite(sources, overrides)
    build_dir = root / f"build{index}"
    build_dir.mkdir()
    name = f"rmsnorm_cuda_tune{index}"
    script = (
        "import torch\nfrom torch.utils import cpp_extension\nfrom rmsnorm import cuda_ext\n"
        f"cpp_extension.load(name={name!r}, sources=[str(p) for p in cuda_ext._sources(__import__('pathlib').Path({str(sources)!r}))],"
        f" extra_cflags=list(cuda_ext._CXX_FLAGS), extra_cuda_cflags=list(cuda_ext._NVCC_FLAGS),"
        f" extra_include_paths=[{str(sources)!r}], build_directory={str(build_dir)!r}, is_python_module=False)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    return build_dir / f"{name}.so"


# The operations _time_width times, in its order: the table's columns.
OPS = ("fwd", "add fwd", "bwd", "quant static", "quant dynamic", "dynamic, no weight")


def _time(library: str, ns: tuple[int, ...], ops_timed: tuple[str, ...], dtype_name: str) -> None:
    """Child process: load one build and print, for each N, _time_width's rows of ops_timed in % of the
    copy ceiling and the forward's GPU microseconds per call at M = 1."""
    import torch

    from bench.cases import ELEMENT_BYTES, ELEMENTS
    from bench.inputs import torch_dtype
    from bench.timing import copy_ceiling, percent_of_ceiling

    torch.ops.load_library(library)
    ops = torch.ops.rmsnorm_cuda
    ceiling = copy_ceiling()["gbps"]
    dtype = torch_dtype(dtype_name)

    def percent(ms: float, tensors: float) -> float:
        return percent_of_ceiling(tensors * ELEMENTS * ELEMENT_BYTES[dtype_name], ms, ceiling)

    for n in ns:
        print(
            n,
            *(f"{percent(ms, tensors):.1f}" for ms, tensors in _time_width(ops, n, ops_timed, dtype)),
            f"{_one_row_us(ops, n, dtype):.2f}",
            flush=True,
        )


def _one_row_us(ops, n: int, dtype) -> float:
    """GPU microseconds of a forward of one row of width n, under CUDA-graph replay (launches free)."""
    import torch

    from bench.latency import graph_us_per_call

    x = torch.randn(1, n, device="cuda", dtype=dtype)
    w = torch.randn(n, device="cuda", dtype=dtype)
    return graph_us_per_call(lambda: ops.rms_norm_fwd(x, w, 0.0, 1e-6, False))


def _time_width(ops, n: int, ops_timed: tuple[str, ...], dtype) -> list[tuple[float, float]]:
    """(median ms, tensors moved) of those of OPS in ops_timed: the forward, the add forward, the
    backward, and rms_norm_quant with a static and with dynamic scales, and the latter without a
    weight, at width n; x, dy and the weight of `dtype`."""
    import torch

    from bench.cases import ELEMENTS
    from bench.timing import median_ms

    x = torch.randn(ELEMENTS // n, n, device="cuda", dtype=dtype)
    residual, dy = torch.randn_like(x), torch.randn_like(x)
    w = torch.randn(n, device="cuda", dtype=dtype)
    _, rstd = ops.rms_norm_fwd(x, w, 0.0, 1e-6, False)
    scale = torch.tensor([0.02], device="cuda")
    quant = 1 + 1 / x.element_size()  # x read, one fp8 byte an element written
    calls = {
        "fwd": (lambda: ops.rms_norm_fwd(x, w, 0.0, 1e-6, False), 2),
        "add fwd": (lambda: ops.add_rms_norm_fwd(x, residual, w, 0.0, 1e-6, False), 4),
        "bwd": (lambda: ops.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True, False), 3),
        "quant static": (lambda: ops.rms_norm_quant_fwd(x, None, w, 0.0, 1e-6, False, scale, None), quant),
        "quant dynamic": (lambda: ops.rms_norm_quant_fwd(x, None, w, 0.0, 1e-6, False, None, None), quant),
        "dynamic, no weight": (lambda: ops.rms_norm_quant_fwd(x, None, None, 0.0, 1e-6, False, None, None), quant),
    }
    return [(median_ms(calls[op][0]), calls[op][1]) for op in OPS if op in ops_timed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", metavar="LIBRARY", help=argparse.SUPPRESS)  # the child's entry
    parser.add_argument("--ns", type=int, nargs="+", default=NS, help="row widths to time (default: %(default)s)")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=OPS, help="operations to time (default: all)")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="also time a build of this copy of csrc/")
    parser.add_argument("--only-baseline", action="store_true", help="time 'as is' and the baseline alone")
    parser.add_argument(
        "--rounds", type=int, default=1, help="time every candidate this many times, in turn (processes differ by 1-3)"
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=("bf16", "fp16", "fp32"), default=["bf16"], help="of x, dy and the weight"
    )
    args = parser.parse_args()
    if args.time:
        _time(args.time, tuple(args.ns), tuple(args.ops), args.dtypes[0])
        return
    from rmsnorm import cuda_ext

    candidates = {label: (overrides, cuda_ext.source_dir()) for label, overrides in CANDIDATES.items()}
    if args.only_baseline:
        candidates = {"as is": candidates["as is"]}
    if args.baseline is not None:
        candidates[f"baseline {args.baseline}"] = ({}, args.baseline.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadPoolExecutor(len(candidates)) as pool:
            libraries = list(
                pool.map(
                    lambda item: _build(item[0], *item[1], Path(tmp)),
                    enumerate(candidates.values()),
                )
            )
        header = " | ".join(("candidate", "N", *(op for op in OPS if op in args.ops), "fwd M=1 us"))
        for dtype in args.dtypes:
            print(f"{dtype}, M*N = 2^27; % of the copy ceiling measured in each candidate's process", flush=True)
            print(header, flush=True)
            for label, library in [item for _ in range(args.rounds) for item in zip(candidates, libraries)]:
                result = subprocess.run(
                    [sys.executable, "-m", "bench.tune_cuda", "--time", str(library), "--ns", *map(str, args.ns),
                     "--ops", *args.ops, "--dtypes", dtype],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                for line in result.stdout.split("\n"):
                    if line.strip():
                        print(f"{label} | " + " | ".join(line.split()), flush=True)


if __name__ == "__main__":
    main()
