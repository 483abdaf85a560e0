"""The plot of results.json: GB/s against N, one line per implementation, the copy ceiling drawn across.

One subplot per (dtype, mode): a row per dtype, a column per throughput mode (add_rms_norm's forward
among them). Needs matplotlib; bench.report skips the plot with a warning where it is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on GPU machines
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from bench.cases import MODE_TITLES, THROUGHPUT_MODES  # noqa: E402
from bench.report import implementation_order, stamp_line  # noqa: E402

# Line style per group: our backends stand out, PyTorch baselines recede.
GROUP_STYLES = {
    "ours": {"linestyle": "-", "linewidth": 2.2, "marker": "o"},
    "baseline": {"linestyle": ":", "linewidth": 1.4, "marker": "s"},
    "peer": {"linestyle": "--", "linewidth": 1.6, "marker": "^"},
}
SUBPLOT_INCHES = (5.2, 3.6)
LEGEND_COLUMNS = 5
LEGEND_ROW_INCHES = 0.22  # height of one legend row at fontsize 8
FOOTER_INCHES = 0.35  # the stamp line under the legend
TITLE_INCHES = 0.45


def _n_label(n: int) -> str:
    return f"{n >> 20}M" if n >= 2**20 else f"{n >> 10}K" if n >= 2**10 else str(n)


def _subplot(ax, records: list[dict], styles: dict[str, dict], ceiling_gbps: float, title: str) -> None:
    for name, style in styles.items():
        points = sorted((r["n"], r["gbps"]) for r in records if r["impl"] == name and r["status"] == "ok")
        if points:
            ax.plot(*zip(*points), label=name, markersize=3.5, **style)
    ax.axhline(ceiling_gbps, color="black", linewidth=1, label=f"copy ceiling {ceiling_gbps:.0f} GB/s")
    ax.set_xscale("log", base=2)
    powers_of_two = sorted(
        {r["n"] for r in records if r["n"] & (r["n"] - 1) == 0}
    )  # 5120's label would crowd 4K
    ax.set_xticks(powers_of_two, [_n_label(n) for n in powers_of_two], fontsize=7, rotation=45)
    ax.minorticks_off()
    ax.set_ylim(0, max([ceiling_gbps] + [r["gbps"] for r in records if r["status"] == "ok"]) * 1.08)
    percent = ax.secondary_yaxis(
        "right", functions=(lambda g: 100 * g / ceiling_gbps, lambda p: p * ceiling_gbps / 100)
    )
    percent.set_ylabel("% of ceiling", fontsize=8)
    percent.tick_params(labelsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("N (row length)", fontsize=8)
    ax.set_ylabel("GB/s", fontsize=8)
    ax.grid(True, alpha=0.3)


def _legend(fig, axes) -> None:
    """One legend for the figure, between the subplots and the footer."""
    entries = {}  # label -> handle, over every subplot: an implementation may fail in some of them
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        entries.update(zip(labels, handles))
    anchor = (0.5, FOOTER_INCHES / fig.get_figheight())
    fig.legend(
        entries.values(),
        entries.keys(),
        loc="lower center",
        ncol=LEGEND_COLUMNS,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=anchor,
    )


def draw(results: dict, path: Path) -> None:
    """Draw the throughput records of ``results`` (a loaded results.json, not empty) into PNG ``path``."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in results["results"]))
    modes = [m for m in THROUGHPUT_MODES if any(r["mode"] == m for r in results["results"])]
    # Colour by registry position, so that an implementation keeps its colour when another is absent.
    colours = {name: f"C{index}" for index, name in enumerate(results["implementations"])}
    groups = {name: info["group"] for name, info in results["implementations"].items()}
    names = implementation_order(results)
    styles = {name: {"color": colours[name], **GROUP_STYLES[groups[name]]} for name in names}
    # Margins in inches, added to the subplots' height: the title above; legend (one entry per
    # implementation and the ceiling) and stamp below.
    legend_inches = LEGEND_ROW_INCHES * math.ceil((len(names) + 1) / LEGEND_COLUMNS) + 0.15
    height = SUBPLOT_INCHES[1] * len(dtypes) + TITLE_INCHES + legend_inches + FOOTER_INCHES
    fig, axes = plt.subplots(
        len(dtypes), len(modes), squeeze=False, figsize=(SUBPLOT_INCHES[0] * len(modes), height)
    )
    ceiling = results["ceiling"]["gbps"]
    for row, dtype in enumerate(dtypes):
        for col, mode in enumerate(modes):
            records = [r for r in results["results"] if r["dtype"] == dtype and r["mode"] == mode]
            _subplot(axes[row][col], records, styles, ceiling, f"{dtype} {MODE_TITLES.get(mode, mode)}")
    stamp = results["stamp"]
    fig.suptitle(f"RMSNorm throughput on {stamp['gpu']}, {stamp['date_utc'][:10]}", fontsize=13)
    fig.text(0.5, 0.01, stamp_line(stamp).replace("`", ""), ha="center", fontsize=6, wrap=True)
    _legend(fig, axes)
    fig.tight_layout(rect=(0, (FOOTER_INCHES + legend_inches) / height, 1, 1 - TITLE_INCHES / height))
    fig.savefig(path, dpi=130)
    plt.close(fig)
