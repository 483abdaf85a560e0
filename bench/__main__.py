"""``python -m bench``: rmsnorm against PyTorch and its peers, on this machine's GPU, in one run.

Measures the copy ceiling, the small-M latency table, the throughput sweep (rms_norm's modes and
add_rms_norm's forward, each case checked against the float64 reference first) and the compiled-model row,
prints progress and the tables, and writes results.json, results.md and results.png into the output folder
(after every shape, so a run cut short keeps what it measured).
Exits 1 when one of our backends fails a correctness check, 2 when there is no GPU, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from bench import cases
from bench.estimate import estimate_seconds, measured_first_calls
from bench.implementations import ADD_REGISTRY, ALL_NAMES, Implementation, load_implementations
from bench.latency import measure_latency
from bench.features import measure_features
from bench.model import measure_model
from bench.report import markdown, save_json, save_markdown, save_plot
from bench.stamp import REPO_ROOT, gpu_slug, stamp
from bench.sweep import sweep
from bench.timing import copy_ceiling

NO_GPU_MESSAGE = (
    "bench: no CUDA GPU is visible here (torch {torch}, CUDA {cuda}); the benchmark times GPU kernels, "
    "so run it on a GPU machine. `python -m bench.report path/to/results.json` redraws tables and plots "
    "from saved results without one."
)
# Statuses of a correctness check that fail the run when one of our backends gets them.
FAILING_CHECKS = ("wrong", "failed")


def _list_of(convert: Callable[[str], object], allowed: tuple | None = None) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = tuple(convert(item) for item in text.split(",") if item)
        unknown = [item for item in items if allowed is not None and item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(map(str, allowed))}")
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; every list flag takes comma-separated values and narrows the selection."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a subset that runs in about a minute and a half on an H100"
    )
    parser.add_argument("--dtypes", type=_list_of(str, tuple(cases.DTYPES)), help="e.g. bf16,fp16")
    parser.add_argument(
        "--modes",
        type=_list_of(str, cases.MODES),
        help=f"from {', '.join(cases.MODES)} (model: a compiled transformer stack, which --dtypes, --ns "
        "and --impls leave as it is)",
    )
    parser.add_argument("--impls", type=_list_of(str, ALL_NAMES), help=f"from {', '.join(ALL_NAMES)}")
    parser.add_argument(
        "--ns", type=_list_of(int), help="row lengths N of every throughput mode, e.g. 4096,1048576"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: $OUT, else bench/results/<gpu>/)")
    return parser.parse_args(argv)


def selection(args: argparse.Namespace) -> dict[str, tuple]:
    """What to measure: the full sweep or --quick, narrowed by the list flags given."""
    if args.quick:
        chosen = {
            "dtypes": cases.QUICK_DTYPES,
            "ns": cases.QUICK_NS,
            "add_ns": cases.QUICK_ADD_NS,
            "modes": cases.QUICK_MODES,
            "impls": cases.QUICK_IMPLEMENTATIONS,
        }
    else:
        chosen = {
            "dtypes": tuple(cases.DTYPES),
            "ns": cases.MAIN_NS + cases.LONG_ROW_NS,
            "add_ns": cases.ADD_NS,
            "modes": cases.MODES,
            "impls": ALL_NAMES,
        }
    given = {
        "dtypes": args.dtypes,
        "ns": args.ns,
        "add_ns": args.ns,
        "modes": args.modes,
        "impls": args.impls,
    }
    return {key: given[key] or value for key, value in chosen.items()}


def _shape_plan(chosen: dict) -> list[tuple[str, int, tuple[str, ...]]]:
    return cases.shape_plan(chosen["dtypes"], chosen["ns"], chosen["add_ns"], chosen["modes"])


def _names_to_load(chosen: dict) -> tuple[str, ...]:
    """The chosen implementations that the chosen modes time: those with an add+norm when add-forward is
    the only mode that times implementations, none for the model row alone."""
    if any(m in chosen["modes"] for m in cases.NORM_MODES + (cases.LATENCY,)):
        return chosen["impls"]
    if cases.ADD_FORWARD in chosen["modes"]:
        return tuple(name for name in chosen["impls"] if name in ADD_REGISTRY)
    return ()


def output_dir(args: argparse.Namespace, gpu: str) -> Path:
    """--out, else $OUT (the GPU machine's return folder), else bench/results/<gpu-slug>/."""
    folder = args.out or (
        Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO_ROOT / "bench" / "results" / gpu_slug(gpu)
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _phase(results: dict, name: str) -> Iterator[None]:
    """Record the wall seconds of a phase in results["phases_s"], to set against the estimate."""
    start = time.perf_counter()
    yield
    results["phases_s"][name] = round(time.perf_counter() - start, 1)


def _load(chosen: dict, results: dict, log: Callable[[str], None]) -> list[Implementation]:
    with _phase(results, "load"):
        impls, results["implementations"] = load_implementations(
            _names_to_load(chosen), with_add=cases.ADD_FORWARD in chosen["modes"]
        )
    for name, info in results["implementations"].items():
        state = "loaded" if info["present"] else f"absent, {info['reason']}"
        if info.get("add_reason"):
            state += f"; no add_rms_norm, {info['add_reason']}"
        log(f"{name}: {state} ({info['load_s']:.1f} s)")
    results["estimate_s"] = estimate_seconds(impls, _shape_plan(chosen), chosen["modes"])
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results["estimate_s"].items() if k != "total")
    log(
        f"estimated time left: ~{results['estimate_s']['total'] / 60:.1f} min ({phases}; first calls guessed)"
    )
    return impls


def _measure(
    impls: list[Implementation], chosen: dict, results: dict, out: Path, log: Callable[[str], None]
) -> None:
    def checkpoint() -> None:
        save_json(results, out)
        save_markdown(results, out)

    with _phase(results, "ceiling"):
        results["ceiling"] = copy_ceiling()
    log(f"copy ceiling: {results['ceiling']['gbps']:.0f} GB/s")
    if cases.LATENCY in chosen["modes"]:
        with _phase(results, "latency"):
            results["latency"] = measure_latency(impls, log)
        checkpoint()
    plan = _shape_plan(chosen)
    if plan:
        with _phase(results, "sweep"):
            sweep(impls, plan, results["ceiling"]["gbps"], results["results"], checkpoint, log)
    if cases.MODEL in chosen["modes"]:
        with _phase(results, "model"):
            results["model"] = measure_model(log)
    if cases.FEATURES in chosen["modes"]:
        with _phase(results, "features"):
            results["features"] = measure_features(results["ceiling"]["gbps"], log)
    checkpoint()
    save_plot(results, out)


def _verdict(results: dict, log: Callable[[str], None]) -> int:
    """Exit status: 1 when one of our backends failed a correctness check, or its add_rms_norm could not
    even run the load-time probe, else 0."""
    records = results["results"] + results["latency"]
    failing = {r["impl"] for r in records if r["group"] == "ours" and r["check"] in FAILING_CHECKS}
    failing |= {
        name
        for name, info in results["implementations"].items()
        if info["group"] == "ours" and info.get("add_present") is False
    }
    if failing:
        log(
            f"FAIL: {', '.join(sorted(failing))} failed a correctness check (see 'Not measured' and 'Absent')"
        )
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU_MESSAGE.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    start = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f}s] {line}", flush=True)

    chosen = selection(args)
    results = {"stamp": stamp(), "selection": chosen, "results": [], "latency": [], "phases_s": {}}
    out = output_dir(args, results["stamp"]["gpu"])
    log(f"{results['stamp']['gpu']}: writing into {out}")
    impls = _load(chosen, results, log)
    _measure(impls, chosen, results, out, log)
    results["phases_s"]["total"] = round(time.perf_counter() - start, 1)
    save_json(results, out)
    print("\n" + markdown(results), flush=True)
    first_calls = ", ".join(f"{k} {v:.0f} s" for k, v in measured_first_calls(results).items())
    log(f"first calls (JIT, compile): {first_calls}")
    log("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in results["phases_s"].items()) + f"; wrote {out}")
    return _verdict(results, log)


if __name__ == "__main__":
    sys.exit(main())
