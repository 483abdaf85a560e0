"""Run the kernels under NVIDIA compute-sanitizer: memcheck, racecheck, initcheck, synccheck.

`python -m tests.sanitize --out DIR` first runs the cases of tests/sanitize_cases.py once as they
are, which compiles the Triton kernels and builds or loads the CUDA extension (no tool then waits
on a compiler), then once under each tool. It writes each tool's whole output to
DIR/sanitizer-<tool>.log (with --combined-log: all of them, after the summary, to
DIR/sanitizer.log), the summary to DIR/sanitizer.json, and prints a table. Exit status: 0 when
every tool ran and reported no error, 1 when one reported errors or failed to run, 2 when there
is no GPU or no compute-sanitizer here. `--only TEXT` narrows the cases, to chase a report.

On an H100 (torch 2.11, Triton 3.6, compute-sanitizer 2025.3) the 272 cases took: 111 s without
the sanitizer with an empty Triton cache (18 s with a full one), memcheck 20 s, racecheck 95 s,
initcheck 19 s, synccheck 14 s.

Every child runs with PYTORCH_NO_CUDA_MEMORY_CACHING=1: PyTorch's caching allocator carves tensors
out of large pooled blocks, inside which memcheck cannot tell one tensor's end from the next
one's start; without it each tensor is its own allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DRIVER = [sys.executable, "-m", "tests.sanitize_cases"]
# Each tool with its options. memcheck: leaks are the allocator's business, not the kernels'.
TOOLS = {
    "memcheck": ["--leak-check", "no"],
    "racecheck": [],
    "initcheck": [],
    "synccheck": [],
}
# Options of every run: only the Python process is checked (not a compiler it might start), and
# it may take longer than the default 10 s to reach CUDA: once, on a fresh machine, it did
# ("No attachable process found. compute-sanitizer timed-out.") and then hung unchecked.
COMMON_OPTIONS = ["--target-processes", "application-only", "--launch-timeout", "300"]
CHILD_ENV = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
# Seconds one run may take.
TIMEOUT_S = 900
# The name of the first run, without the sanitizer.
WARM_UP = "warm-up"
# The error count of a tool's last lines: memcheck, initcheck and synccheck end with
# "ERROR SUMMARY: 0 errors", racecheck with "RACECHECK SUMMARY: 0 hazards displayed (0 errors,
# 0 warnings)".
SUMMARY = re.compile(r"(?:ERROR SUMMARY: |RACECHECK SUMMARY: .*\()(\d+) errors?")
# racecheck's report of a race counted as an error: two accesses, each "<kernel>+<offset> in
# <file>:<line>".
RACE = re.compile(
    r"Error: Race reported between (\w+) access at (\S+) in (\S+)\s*\n"
    r"=+\s+and (\w+) access at (\S+) in (\S+)"
)
# The one race report not counted as an error: two threads writing at the same instruction of a
# kernel of rmsnorm/triton_kernels.py. Triton converts a row statistic held by every thread of
# the row (rstd, reduced across the row) to a one-thread-per-element layout through shared
# memory (ttg.convert_layout), and every holder writes it to the same slot without a barrier
# between them: a write-after-write of the same bits, as they all reduced the same values in the
# same order. Seen at the store of rstd in rms_norm_fwd_kernel (Triton 3.6, H100), whose Triton
# IR has that conversion: for rows of up to 4 fp32 elements the tile is
# blocked<threadsPerWarp = [8, 4]>, four threads to a row, and rstd, sliced from it, goes to a
# 1-D layout through shared memory (tensor<1024xf32, slice<dim = 1>> -> blocked<[32]>).
# Storing rstd through the 2-D tile instead (a store masked to column 0) did not avoid it:
# Triton's coalescing pass turns that store back into the same conversion; a value that no
# thread shares would convert the whole tile through shared memory, 16 KB a program. It is
# listed under "benign" in the summary. Triton, not our source, decides the layouts, so a real
# race there would be Triton's; any other race is an error.
TRITON_SOURCE = "triton_kernels.py"


@dataclass
class Run:
    tool: str  # a compute-sanitizer tool, or WARM_UP for the run without the sanitizer
    command: list[str]
    # "clean", "errors", or "failed" (no summary line, a non-zero exit, a timeout)
    status: str
    # the count in the tool's summary line, less `benign`; None without one
    errors: int | None
    benign: int  # racecheck's same-instruction write-after-writes in Triton kernels
    returncode: int | None  # None after a timeout
    seconds: float
    summary: str  # the tool's summary line(s), or why it failed
    output: str  # the whole output, stdout and stderr together


def find_sanitizer(explicit: str | None) -> str | None:
    """--sanitizer, else $COMPUTE_SANITIZER, else the PATH, else under CUDA_HOME."""
    if explicit or os.environ.get("COMPUTE_SANITIZER"):
        return explicit or os.environ["COMPUTE_SANITIZER"]
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    homes = [os.environ.get(name) for name in ("CUDA_HOME", "CUDA_PATH")]
    for home in [*filter(None, homes), "/usr/local/cuda"]:
        for relative in ("bin", "compute-sanitizer"):
            candidate = Path(home) / relative / "compute-sanitizer"
            if candidate.is_file():
                return str(candidate)
    return None


def run(tool: str, command: list[str], env: dict[str, str], timeout: float) -> Run:
    """Run `command` and judge it: by its summary line under a tool, and by its exit code."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        output, returncode = done.stdout, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, returncode = expired.output or "", None
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
    seconds = round(time.perf_counter() - start, 1)
    found = SUMMARY.findall(output)
    benign = len([race for race in RACE.findall(output) if is_benign(race)])
    errors = int(found[-1]) - benign if found else None
    lines = [line for line in output.splitlines() if "SUMMARY:" in line]
    summary = " / ".join(line.strip("= ").strip() for line in lines)
    if benign:
        summary += f" ({benign} benign: Triton layout-conversion write-after-write)"
    if returncode is None:
        status, summary = "failed", f"timed out after {timeout:.0f} s"
    elif errors:
        status = "errors"
    elif returncode != 0 or (tool != WARM_UP and errors is None):
        status = "failed"
        summary = summary or f"exit status {returncode}, no summary line"
    else:
        status = "clean"
    result = (status, errors, benign, returncode, seconds, summary, output)
    return Run(tool, command, *result)


def is_benign(race: tuple[str, ...]) -> bool:
    """Whether a racecheck report (RACE's groups) is the write-after-write of TRITON_SOURCE."""
    first_kind, first_at, first_line, second_kind, second_at, second_line = race
    same = first_at == second_at and first_line == second_line
    writes = first_kind == second_kind == "Write"
    return same and writes and first_line.split(":")[0].endswith(TRITON_SOURCE)


def table(runs: list[Run]) -> str:
    lines = [f"{'run':<10} {'status':<7} {'errors':>6} {'seconds':>8}  summary"]
    for r in runs:
        errors = "-" if r.errors is None else str(r.errors)
        row = f"{r.tool:<10} {r.status:<7} {errors:>6} {r.seconds:>8.1f}"
        lines.append(f"{row}  {r.summary}")
    return "\n".join(lines)


def environment_stamp(sanitizer: str) -> dict:
    import torch
    import triton

    command = [sanitizer, "--version"]
    version = subprocess.run(command, capture_output=True, text=True, check=False)
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "sanitizer": sanitizer,
        "sanitizer_version": version.stdout.strip().splitlines()[-1:],
        "child_env": CHILD_ENV,
    }


def write_results(out: Path, runs: list[Run], stamp: dict, combined: bool) -> None:
    """sanitizer.json, and the outputs: one log a tool, or all in sanitizer.log."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        **stamp,
        "ok": all(r.status == "clean" for r in runs),
        "runs": [{k: v for k, v in asdict(r).items() if k != "output"} for r in runs],
    }
    text = json.dumps(summary, indent=1) + "\n"
    (out / "sanitizer.json").write_text(text)
    if combined:
        sections = [table(runs), text]
        for r in runs:
            sections.append(f"===== {' '.join(r.command)}: {r.status}\n{r.output}")
        (out / "sanitizer.log").write_text("\n".join(sections))
    else:
        for r in runs:
            (out / f"sanitizer-{r.tool}.log").write_text(r.output)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    what = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser("python -m tests.sanitize", description=what)
    parser.add_argument("--out", type=Path, required=True, help="folder for logs")
    parser.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated, from {', '.join(TOOLS)} (default: all)",
    )
    parser.add_argument(
        "--combined-log",
        action="store_true",
        help="one sanitizer.log for all tools instead of one log a tool",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the cases whose name contains this text (repeatable)",
    )
    parser.add_argument("--sanitizer", help="path of compute-sanitizer")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="s per run")
    args = parser.parse_args(argv)
    args.tools = [tool for tool in args.tools.split(",") if tool]
    unknown = [tool for tool in args.tools if tool not in TOOLS]
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {', '.join(TOOLS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "tests.sanitize: no CUDA GPU is visible here; compute-sanitizer checks kernels "
            "as they run, so run this on a GPU machine.",
            file=sys.stderr,
        )
        return 2
    sanitizer = find_sanitizer(args.sanitizer)
    if sanitizer is None or not Path(sanitizer).is_file():
        print(
            "tests.sanitize: compute-sanitizer was not found (looked at --sanitizer, "
            "$COMPUTE_SANITIZER, the PATH, $CUDA_HOME and /usr/local/cuda); it comes "
            "with the CUDA toolkit.",
            file=sys.stderr,
        )
        return 2
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH")]
    env = {**os.environ, **CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    driver = [*DRIVER, *args.only]
    runs = [run(WARM_UP, driver, env, args.timeout)]
    print(table(runs[-1:]), flush=True)
    if runs[0].status == "clean":
        for tool in args.tools:
            options = [*TOOLS[tool], *COMMON_OPTIONS]
            command = [sanitizer, "--tool", tool, *options, *driver]
            runs.append(run(tool, command, env, args.timeout))
            print(table(runs[-1:]).splitlines()[1], flush=True)
    else:
        print(runs[0].output[-4000:], file=sys.stderr)
    write_results(args.out, runs, environment_stamp(sanitizer), args.combined_log)
    print("\n" + table(runs))
    ok = all(r.status == "clean" for r in runs) and len(runs) == len(args.tools) + 1
    print(f"tests.sanitize: {'all clean' if ok else 'FAILED'}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
