"""The benchmark issue's targets, checked against one run's results.

One row a target, one column a backend of ours: "met", or how many of its cells miss the target and
the worst of them. Percentages are compared as the tables print them, rounded to the point; a cell
that was not measured (a failure, an absent peer) is counted as missed, with the reason. Torch-free,
as bench.report is.
"""

from __future__ import annotations

import statistics
from typing import Callable, NamedTuple

from bench.cases import BACKWARD, FORWARD, FORWARD_BACKWARD, STABLE_SPREAD_POINTS

# bench.implementations' group of our backends; every other implementation (group "baseline" or
# "peer") counts as a peer, as in the README's "best peer".
OURS_GROUP = "ours"
BASE_DTYPE = "bf16"  # the figures are bf16; fp16 and fp32 are held to them
# A peer ahead of ours by less than this is within run-to-run noise ("never behind the best peer").
PEER_NOISE_POINTS = 1.0
OTHER_DTYPE_POINTS = 3.0  # fp16 and fp32 within this many points of bf16
# Host time a call at M = 1, as a multiple of F.rms_norm's in the same run, per backend.
HOST_RATIO_TARGETS = {"ours-cuda": 1.5, "ours-triton": 2.0}


class Cell(NamedTuple):
    """One measurement a target is judged on: whether it misses, by how much (larger is worse), and
    what to print for it."""

    missed: bool
    shortfall: float
    text: str


class Target(NamedTuple):
    label: str
    cells: Callable[[dict, str], list[Cell]]  # (results, implementation) -> the cells it is judged on


def _records(results: dict) -> dict[tuple, dict]:
    return {(r["impl"], r["mode"], r["dtype"], r["n"]): r for r in results["results"] if r.get("status") == "ok"}


def _implementations(results: dict, ours: bool) -> list[str]:
    """Our implementations (ours) or the peers measured, in the order of the results."""
    return list(dict.fromkeys(r["impl"] for r in results["results"] if (r["group"] == OURS_GROUP) == ours))


def _pct(records: dict, impl: str, mode: str, dtype: str, n: int) -> float | None:
    record = records.get((impl, mode, dtype, n))
    return None if record is None else record["pct_of_ceiling"]


def _widths(results: dict, first: int, last: int | None) -> list[int]:
    return [n for n in results["selection"]["ns"] if n >= first and (last is None or n <= last)]


def _at_least(mode: str, target: float, first: int, last: int | None, stable: bool = False):
    """Cells of ``mode`` in bf16 at widths first..last that read at least ``target`` percent (and, with
    ``stable``, that bench.sweep found stable: the lowest repeat within STABLE_SPREAD_POINTS of their
    median)."""

    def cells(results: dict, impl: str) -> list[Cell]:
        records, out = _records(results), []
        for n in _widths(results, first, last):
            record = records.get((impl, mode, BASE_DTYPE, n))
            if record is None:
                out.append(Cell(True, float("inf"), f"N={n} not measured"))
                continue
            value = record["pct_of_ceiling"]
            unstable = stable and not record.get("stable", True)  # one reading: nothing to spread
            text = f"{value:.0f}% at N={n}"
            if unstable:
                repeats = record["pct_repeats"]
                text += f", a repeat {statistics.median(repeats) - min(repeats):.1f} points under the median"
            out.append(Cell(round(value) < target or unstable, target - value, text))
        return out

    return cells


def _behind_peers(results: dict, impl: str) -> list[Cell]:
    """Forward and forward+backward cells of every dtype where the best peer leads by more than
    PEER_NOISE_POINTS."""
    records, peer_names, out = _records(results), _implementations(results, ours=False), []
    for mode in (FORWARD, FORWARD_BACKWARD):
        for dtype in dict.fromkeys(r["dtype"] for r in results["results"]):
            for n in results["selection"]["ns"]:
                ours = _pct(records, impl, mode, dtype, n)
                peers = [p for p in (_pct(records, peer, mode, dtype, n) for peer in peer_names) if p is not None]
                if ours is None or not peers:
                    continue
                behind = max(peers) - ours
                text = f"{dtype} {mode} N={n}: {ours:.0f}% against {max(peers):.0f}%"
                out.append(Cell(behind > PEER_NOISE_POINTS, behind, text))
    return out


def _other_dtypes(results: dict, impl: str) -> list[Cell]:
    """Cells of fp16 and fp32 more than OTHER_DTYPE_POINTS under the same cell in bf16."""
    records, out = _records(results), []
    for (name, mode, dtype, n), record in sorted(records.items(), key=lambda item: str(item[0])):
        base = _pct(records, impl, mode, BASE_DTYPE, n)
        if name != impl or dtype == BASE_DTYPE or mode not in (FORWARD, BACKWARD, FORWARD_BACKWARD) or base is None:
            continue
        under = base - record["pct_of_ceiling"]
        text = f"{dtype} {mode} N={n}: {record['pct_of_ceiling']:.0f}% against bf16's {base:.0f}%"
        out.append(Cell(under > OTHER_DTYPE_POINTS, under, text))
    return out


def _latency(results: dict, impl: str, rows: int = 1) -> dict | None:
    return next((r for r in results.get("latency", []) if r["impl"] == impl and r["rows"] == rows), None)


def _host_ratio(results: dict, impl: str) -> list[Cell]:
    """The host time a call at M = 1 against F.rms_norm's, where the issue sets a ratio for impl: timed
    call by call against it where the run did so (bench.latency.paired_host_us), else the ratio of
    the two implementations' medians of rounds (runs before the paired timing)."""
    ours, reference = _latency(results, impl), _latency(results, "torch-F")
    if impl not in HOST_RATIO_TARGETS or ours is None:
        return []
    target = HOST_RATIO_TARGETS[impl]
    if "paired_host_us" in ours:
        us, reference_us, how = ours["paired_host_us"], ours["reference_paired_host_us"], ", timed call by call"
    elif reference is not None and "host_us" in ours and "host_us" in reference:
        us, reference_us, how = ours["host_us"], reference["host_us"], ""
    else:
        return []
    ratio = us / reference_us
    return [Cell(ratio > target, ratio - target, f"{us:.1f} us, {ratio:.2f}x F.rms_norm's{how}")]


def _gpu_time_at_one_row(results: dict, impl: str) -> list[Cell]:
    """The GPU time a call at M = 1 under CUDA-graph replay, against quack's."""
    ours, quack = _latency(results, impl), _latency(results, "quack")
    if ours is None or quack is None or "graph_us" not in ours or "graph_us" not in quack:
        return [Cell(True, float("inf"), "quack or ours not measured")]
    text = f"{ours['graph_us']:.2f} us against quack's {quack['graph_us']:.2f}"
    return [Cell(ours["graph_us"] > quack["graph_us"], ours["graph_us"] - quack["graph_us"], text)]


TARGETS = (
    Target("forward >= 97%, N = 64-262144", _at_least(FORWARD, 97, 64, 262144)),
    Target("forward >= 95%, N = 2^19, 2^20", _at_least(FORWARD, 95, 2**19, 2**20)),
    Target("forward+backward >= 92%, N = 64-65536, stable", _at_least(FORWARD_BACKWARD, 92, 64, 65536, True)),
    Target("forward+backward >= 88%, N >= 131072, stable", _at_least(FORWARD_BACKWARD, 88, 131072, None, True)),
    Target("backward >= 94%, every N", _at_least(BACKWARD, 94, 1, None)),
    Target(f"never behind the best peer by more than {PEER_NOISE_POINTS:.0f} point", _behind_peers),
    Target(f"fp16 and fp32 within {OTHER_DTYPE_POINTS:.0f} points of bf16", _other_dtypes),
    Target("host time a call at M = 1 <= 1.5x (cuda), 2x (triton) F.rms_norm's", _host_ratio),
    Target("GPU time a call at M = 1 <= quack's", _gpu_time_at_one_row),
)


def verdict(cells: list[Cell]) -> str:
    """"met" (with the one cell's reading where there is one), "-" without cells, else the misses
    counted and the worst."""
    if not cells:
        return "-"
    missed = [c for c in cells if c.missed]
    if not missed:
        return "met" + (f" ({cells[0].text})" if len(cells) == 1 else "")
    worst = max(missed, key=lambda c: c.shortfall)
    return f"**{len(missed)} of {len(cells)} missed**; worst {worst.text}"


def targets_section(results: dict) -> list[str]:
    """Markdown lines: the issue's targets, one row each, against each backend of ours measured."""
    impls = _implementations(results, ours=True)
    if not impls:
        return []
    lines = [
        "",
        "## Targets of the benchmark issue",
        "",
        f"bf16 unless named; % of the copy ceiling, rounded as in the tables; \"stable\": the lowest of the "
        f"repeats within {STABLE_SPREAD_POINTS:.0f} points of their median.",
        "",
        "| target | " + " | ".join(impls) + " |",
        "|---|" + "---|" * len(impls),
    ]
    for target in TARGETS:
        lines.append(f"| {target.label} | " + " | ".join(verdict(target.cells(results, i)) for i in impls) + " |")
    return lines
