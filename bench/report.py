"""Results as files: results.json (every measurement), results.md (tables) and results.png (the plot).

Torch-free, so that ``python -m bench.report path/to/results.json`` redraws results.md and results.png
from saved JSON on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from bench.cases import (
    ADD_FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_REPEATS,
    HOST_BOUND_FRACTION,
    LATENCY_HOST_ROUNDS,
    LONG_ROW_M,
    MODE_TITLES,
    OFF_CELL_POINTS,
    OFF_CELL_REPEATS,
    STABLE_SPREAD_POINTS,
    TENSORS_MOVED,
    THROUGHPUT_MODES,
)
from bench.targets import targets_section

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "results.md", "results.png"


def stamp_line(stamp: dict) -> str:
    """One line naming the GPU, software, commit, date and command of a run."""
    peers = "".join(f" · {name} {version}" for name, version in stamp.get("peers", {}).items())
    commit = stamp["git_commit"][:12] + ("+dirty" if stamp["git_commit"].endswith("+dirty") else "")
    return (
        f"{stamp['gpu']} ({stamp['sm_count']} SMs) · torch {stamp['torch']} · triton {stamp['triton']} · "
        f"CUDA {stamp['cuda']} · Python {stamp['python']}{peers} · commit {commit} · "
        f"{stamp['date_utc']} UTC · `{stamp['command']}`"
    )


def implementation_order(results: dict) -> list[str]:
    """Names of the implementations that have measurements, in registry order (ours first)."""
    measured = {r["impl"] for r in results["results"] + results["latency"]}
    return [name for name in results["implementations"] if name in measured]


def _cell(record: dict | None, best: float) -> str:
    if record is None:
        return ""
    if record["status"] != "ok":
        return record["status"]
    text = f"{record['gbps']:.0f} ({record['pct_of_ceiling']:.0f}%)"
    text = f"**{text}**" if record["gbps"] == best else text
    text = text if record.get("stable", True) else text + " *"
    return text + " h" if record.get("host_bound") else text


# Under the first add_rms_norm table: what the baselines' columns compute there.
ADD_FORWARD_NOTE = (
    "add_rms_norm: residual_out = x + residual, y = rms_norm(residual_out). torch-F is the eager formula "
    "`r = x + residual; F.rms_norm(r, (N,), w, eps)` (the sum in the input dtype), torch-compile that "
    "formula under torch.compile(dynamic=False), quack `rmsnorm(x, w, residual=residual, prenorm=True)`."
)


def _throughput_table(records: list[dict], names: list[str]) -> list[str]:
    names = [name for name in names if any(r["impl"] == name for r in records)]  # add-forward has fewer
    by_n = defaultdict(dict)
    for r in records:
        by_n[r["n"], r["rows"]][r["impl"]] = r
    lines = ["| N | M | " + " | ".join(names) + " |", "|--:|--:|" + "--:|" * len(names)]
    for (n, rows), cells in sorted(by_n.items()):
        best = max((r["gbps"] for r in cells.values() if r["status"] == "ok"), default=None)
        lines.append(f"| {n} | {rows} | " + " | ".join(_cell(cells.get(name), best) for name in names) + " |")
    return lines


def _repeats_note(records: list[dict], mode: str) -> str | None:
    """What the repeated measurements of one table say about their own spread: every forward+backward
    cell, and in the other modes our cells that read more than OFF_CELL_POINTS below their row's best."""
    spreads = [(max(r["pct_repeats"]) - min(r["pct_repeats"]), r) for r in records if "pct_repeats" in r]
    if mode == FORWARD_BACKWARD:
        note = f"Median of {FORWARD_BACKWARD_REPEATS} repeats"
    elif spreads:
        note = (
            f"{len(spreads)} of our cells read more than {OFF_CELL_POINTS:g} points below their row's best and "
            f"were measured {OFF_CELL_REPEATS} times: the median"
        )
    else:
        return None
    note += f"; * the lowest is more than {STABLE_SPREAD_POINTS:g} points of the ceiling below it."
    if not spreads:
        return note
    widest, r = max(spreads, key=lambda pair: pair[0])
    typical = sorted(s for s, _ in spreads)[len(spreads) // 2]
    where = f"{r['impl']}, N={r['n']}"
    return f"{note} Repeats' spread (max - min): median {typical:.1f} points, widest {widest:.1f} ({where})."


def _host_bound_note(records: list[dict]) -> str | None:
    """Which cells of one table the host bounds (sweep._set_times' host_bound), with their host and GPU
    milliseconds a call; None where there are none (or the results predate host times)."""
    bound = [r for r in records if r.get("host_bound")]
    if not bound:
        return None
    cells = ", ".join(f"{r['impl']} N={r['n']} {r['host_ms']:.2f} / {r['ms']:.2f}" for r in bound)
    return (
        f"h: the host took at least {HOST_BOUND_FRACTION:.0%} of the call's GPU time to issue it: the cell reads "
        f"the kernels' time (the calls were queued behind a GPU-side wait), but issued one by one onto an idle "
        f"GPU such calls run at the host's pace (host / GPU ms a call): {cells}."
    )


def _latency_table(records: list[dict], names: list[str]) -> list[str]:
    rows = sorted({r["rows"] for r in records})
    cells = {(r["impl"], r["rows"]): r for r in records}
    train = {r["impl"]: r for r in records if "train_host_us" in r or "train_reason" in r}
    header = [f"M={m}" for m in rows] + [f"fwd+bwd host, M={r['rows']}" for r in list(train.values())[:1]]
    lines = ["| implementation | " + " | ".join(header) + " |", "|---|" + "--:|" * len(header)]
    for name in names:
        row = []
        for m in rows:
            r = cells.get((name, m))
            if r is None or r["status"] != "ok":
                row.append("" if r is None else r["status"])
            else:
                row.append(
                    f"{r['host_us']:.1f} / " + (f"{r['graph_us']:.1f}" if "graph_us" in r else "no graph")
                )
        if train:
            r = train.get(name, {})
            row.append(f"{r['train_host_us']:.1f}" if "train_host_us" in r else r.get("train_reason", ""))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def _latency_spread_note(records: list[dict]) -> str:
    """The host times' rounds and their widest spread, where the records have them."""
    spreads = [
        (r[field + "_spread"], r[field], r, label)
        for r in records
        for field, label in (("host_us", "no grad"), ("train_host_us", "fwd+bwd"))
        if field + "_spread" in r
    ]
    if not spreads:
        return ""
    spread, value, r, label = max(spreads, key=lambda item: item[0] / item[1])
    return (
        f"Host times: the median of {LATENCY_HOST_ROUNDS} rounds, each timing every implementation in turn. Widest"
        f" spread (max - min) of a cell's rounds: {spread:.1f} us on {value:.1f} ({r['impl']}, M={r['rows']}, {label})."
    )


def _latency_paired_note(records: list[dict]) -> str:
    """The host times of ours timed call by call against the reference (bench.latency.paired_host_us)."""
    paired = [r for r in records if "paired_host_us" in r]
    if not paired:
        return ""
    cells = ", ".join(
        f"{r['impl']} {r['paired_host_us']:.1f} against {r['reference_paired_host_us']:.1f} us "
        f"({r['paired_host_us'] / r['reference_paired_host_us']:.2f}x)"
        for r in paired
    )
    r0 = paired[0]
    return (
        f"Host time a call at M={r0['rows']} timed call by call against {r0['paired_reference']}'s, the two "
        f"alternating for {r0['paired_calls']} calls each (medians; both see the host at one speed, which the "
        f"rounds above do not; the targets table's ratio): {cells}."
    )


def _failures(results: dict) -> list[str]:
    """One line per (implementation, status, reason), naming the cases it covers."""
    places = defaultdict(lambda: defaultdict(list))  # (impl, status, reason) -> "N=..." -> [(dtype, mode)]
    for r in results["results"]:
        if r["status"] != "ok":
            places[r["impl"], r["status"], r.get("reason")][f"N={r['n']}"].append((r["dtype"], r["mode"]))
    for r in results["latency"]:
        key = (r["impl"], r["status"], r.get("reason"))
        if r["status"] == "ok" and "graph_reason" in r:
            key = (r["impl"], "not graph-capturable", r["graph_reason"])
        if key[1] != "ok":
            places[key][f"M={r['rows']}"].append((r["dtype"], "latency"))
    return [
        f"- **{impl}** {status} at {_where(cases)}: {reason}"
        for (impl, status, reason), cases in places.items()
    ]


def _where(cases: dict[str, list[tuple[str, str]]]) -> str:
    """ "N=131072, N=262144 (bf16, fp16; forward, backward)": the N (or M) values, grouped by their cases."""
    items_by_cases = defaultdict(list)
    for item, pairs in cases.items():
        dtypes, modes = list(dict.fromkeys(d for d, _ in pairs)), list(dict.fromkeys(m for _, m in pairs))
        if len(pairs) == len(dtypes) * len(modes):  # every dtype in every mode: say it once
            items_by_cases[f"{', '.join(dtypes)}; {', '.join(modes)}"].append(item)
        else:
            items_by_cases[", ".join(f"{d} {m}" for d, m in pairs)].append(item)
    return ", ".join(f"{', '.join(items)} ({where})" for where, items in items_by_cases.items())


def _model_row(v: dict, baseline: dict | None) -> str:
    if v["status"] != "ok":
        return f"| ({v['variant']}) {v['label']} | {v['status']} | | | | | |"
    speed_up = f"{baseline['ms'] / v['ms']:.2f}x" if baseline else ""
    compile_s = f"{v['compile_s']:.1f}" if v["compiled"] else "eager"
    fullgraph = ("yes" if v["fullgraph"] else "**no**") if v["compiled"] else ""
    drift = f"{v['output_rel_diff']:.1e}" if "output_rel_diff" in v else ""
    return (
        f"| ({v['variant']}) {v['label']} | {v['ms']:.2f} | {v['tokens_per_s']:,.0f} | {speed_up} | "
        f"{compile_s} | {fullgraph} | {drift} |"
    )


def _model_section(model: dict) -> list[str]:
    """The compiled-model table of bench.model's record, with what the model is and each failure's reason."""
    c = model["config"]
    about = (
        f"{c['blocks']} pre-norm blocks of d = {c['d_model']} (attention stood in for by a Linear(d, d); MLP "
        f"Linear(d, {c['mlp_hidden']}), GELU, Linear back) and a final norm; {c['dtype']}, {c['batch']} x "
        f"{c['seq']} = {c['tokens']} tokens. ms/step: median of a training step (forward, then the gradients "
        "of every weight) after the first; compile s: the first step's wall time less one step (less still "
        "where Inductor's and Triton's on-disk caches hold an earlier run's kernels). fullgraph: "
        "torch.compile(fullgraph=True) traced it without a graph break. Output vs "
        f"({model['reference']}): relative L2 distance of the output from eager PyTorch's (bf16 rounding "
        "through the stack)."
    )
    lines = ["", "## Compiled model: forward+backward", "", about, ""]
    if not model["variants"]:
        return lines + [f"Not measured: {model['reason']}"]
    ok = {v["variant"]: v for v in model["variants"] if v["status"] == "ok"}
    header = (
        f"| variant | ms/step | tokens/s | speed-up vs ({model['baseline']}) | compile s | fullgraph | "
        f"output vs ({model['reference']}) |"
    )
    lines += [
        header,
        "|---|--:|--:|--:|--:|:-:|--:|",
        *(_model_row(v, ok.get(model["baseline"])) for v in model["variants"]),
    ]
    notes = [
        f"- ({v['variant']}) fullgraph=True raised, timed with graph breaks allowed: {v['fullgraph_reason']}"
        for v in model["variants"]
        if v.get("fullgraph_reason")
    ]
    notes += [
        f"- ({v['variant']}) {v['status']}: {v['reason']}" for v in model["variants"] if v["status"] != "ok"
    ]
    return lines + ([""] + notes if notes else [])


def _features_section(records: list[dict]) -> list[str]:
    """bench.features' rows: QK-norm on strided views beside contiguous q, and the fp8 quantization."""
    lines = []
    titles = {
        "qk-norm": "Per-head QK-norm: q = qkv[..., :H·D].view(S·B, H, D), D = 128, S·B = 8192, bf16 "
        "(forward moves 2·M·N, forward+backward 5·M·N elements)",
        "quant": "Fused fp8 quantization: bf16 in, float8_e4m3fn out, M·N = 2^27 (bytes: rms_norm_quant "
        "2 + 1, add_rms_norm_quant 2 + 2 + 2 + 1 per element)",
    }
    for kind, title in titles.items():
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        lines += ["", f"## {title}", "", "| impl | case | N | rows | GB/s | % of copy |", "|---|---|---|---|---|---|"]
        for r in rows:
            cells = f"{r['gbps']:.0f} | {r['pct_of_copy']:.1f}" if r["check"] == "ok" else f"not measured: {r['check']} |"
            lines.append(f"| {r['impl']} | {r['case']} | {r['n']} | {r['rows']} | {cells} |")
    return lines


def markdown(results: dict) -> str:
    """The results as markdown: stamp, ceiling, the benchmark issue's targets, one table per (dtype,
    mode), the latency table, the compiled-model table, failures. Results saved before a table's mode
    existed have none of it."""
    ceiling, names = results["ceiling"], implementation_order(results)
    measured = {r["mode"] for r in results["results"]}
    moved = ", ".join(f"{mode} {n}·M·N" for mode, n in TENSORS_MOVED.items() if mode in measured)
    lines = [
        f"# RMSNorm benchmark: {results['stamp']['gpu']}",
        "",
        stamp_line(results["stamp"]),
        "",
        f"Ceiling: device-to-device copy of {ceiling['bytes'] // 2 // 2**30} GiB, read + written: "
        f"**{ceiling['gbps']:.0f} GB/s** (GB = 1e9 bytes). Cells: GB/s of the median call and its percent "
        f"of the ceiling; the best of each row in bold. Elements moved: {moved} (weight ignored). "
        f"M·N = 2^27, except M = {LONG_ROW_M} for the longest rows.",
    ]
    absent = [f"{n} ({i['reason']})" for n, i in results["implementations"].items() if not i["present"]]
    absent += [
        f"{n}'s add_rms_norm ({i['add_reason']})"
        for n, i in results["implementations"].items()
        if i.get("add_present") is False
    ]
    if absent:
        lines += ["", "Absent: " + "; ".join(absent) + "."]
    lines += targets_section(results)
    add_noted = False
    for dtype in dict.fromkeys(r["dtype"] for r in results["results"]):
        for mode in THROUGHPUT_MODES:
            records = [r for r in results["results"] if r["dtype"] == dtype and r["mode"] == mode]
            if records:
                title = MODE_TITLES.get(mode, mode)
                lines += ["", f"## {dtype} {title}", "", *_throughput_table(records, names)]
                for note in (_repeats_note(records, mode), _host_bound_note(records)):
                    if note:
                        lines += ["", note]
                if mode == ADD_FORWARD and not add_noted:
                    lines += ["", ADD_FORWARD_NOTE]
                    add_noted = True
    if results["latency"]:
        r0 = results["latency"][0]
        about = "Microseconds per call: host wall time of back-to-back calls / GPU time under CUDA-graph replay."
        if any("train_host_us" in r or "train_reason" in r for r in results["latency"]):
            about += (
                " fwd+bwd host: the host wall time of a forward+backward through autograd, to set against the"
                " GPU time of the forward+backward tables: a row whose GPU time is not well above it can be"
                " bound by the host."
            )
        lines += [
            "",
            f"## Latency: {r0['dtype']}, N = {r0['n']}, forward without grad",
            "",
            about,
            "",
            *_latency_table(results["latency"], names),
        ]
        for note in (_latency_spread_note(results["latency"]), _latency_paired_note(results["latency"])):
            if note:
                lines += ["", note]
    if results.get("model"):
        lines += _model_section(results["model"])
    if results.get("features"):
        lines += _features_section(results["features"])
    failures = _failures(results)
    if failures:
        lines += ["", "## Not measured", "", *failures]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")  # a run killed mid-write leaves the last good file
    temporary.write_text(text)
    os.replace(temporary, path)


def save_json(results: dict, out_dir: Path) -> Path:
    """Write results.json into ``out_dir``; returns its path."""
    _write(out_dir / JSON_NAME, json.dumps(results, indent=1) + "\n")
    return out_dir / JSON_NAME


def save_markdown(results: dict, out_dir: Path) -> Path:
    """Write results.md into ``out_dir``; returns its path."""
    _write(out_dir / MARKDOWN_NAME, markdown(results))
    return out_dir / MARKDOWN_NAME


def save_plot(results: dict, out_dir: Path) -> Path | None:
    """Write results.png into ``out_dir``; returns its path; None without throughput results or matplotlib."""
    if not results["results"]:
        return None
    try:
        from bench.plot import draw
    except ImportError as exc:
        print(f"warning: no plot, matplotlib is not importable ({exc})", file=sys.stderr, flush=True)
        return None
    draw(results, out_dir / PLOT_NAME)
    return out_dir / PLOT_NAME


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report results.json [--out DIR]``: redraw results.md and results.png."""
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("json", type=Path, help="a results.json written by python -m bench")
    parser.add_argument(
        "--out", type=Path, help="folder for results.md and results.png (default: the JSON's)"
    )
    args = parser.parse_args(argv)
    results = json.loads(args.json.read_text())
    out_dir = args.out or args.json.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in (save_markdown(results, out_dir), save_plot(results, out_dir)):
        if path is not None:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
