"""What the benchmark measures: shapes, dtypes, modes, the bytes each mode moves, and the --quick subset.

Torch-free on purpose, so that bench.report can redraw tables and plots from saved JSON anywhere.
"""

from __future__ import annotations

# Rows x columns of every main-sweep case. 2^27 elements is 256 MiB per bf16 tensor, several times an
# H100's 50 MB L2, so every timed call streams from DRAM and no cache flush or input rotation is needed.
ELEMENTS = 2**27

# Row lengths N of the main sweep, M = ELEMENTS // N rows each: powers of two plus 5120 and 12288,
# the hidden sizes of common models that are not powers of two.
MAIN_NS = (64, 128, 256, 512, 1024, 2048, 4096, 5120, 8192, 12288, 16384, 32768, 65536, 131072, 262144)
# add-forward runs the main sweep's N only: the fused residual add is a transformer's hidden-size step.
ADD_NS = MAIN_NS

# Rows longer than one block of shared memory or registers can hold, at a fixed M: 2^19 x 256 is still
# 2^27 elements; 2^20 x 256 is twice that.
LONG_ROW_NS = (2**19, 2**20)
LONG_ROW_M = 256

# Small-M latency: a decode-sized hidden size, batches from one token to a prefill chunk.
LATENCY_N = 4096
LATENCY_ROWS = (1, 8, 64, 512)
LATENCY_DTYPE = "bf16"
# The latency table's host times: rounds, each timing every implementation in turn (bench.latency).
LATENCY_HOST_ROUNDS = 5

# eps of every call: Llama's value, passed explicitly so that no implementation's default matters.
EPS = 1e-6

# Short dtype names (CLI, tables) -> torch attribute names; the weight always has x's dtype.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

FORWARD = "forward"
BACKWARD = "backward"
FORWARD_BACKWARD = "forward+backward"
# add_rms_norm's forward without grad: residual_out = x + residual, y = rms_norm(residual_out).
ADD_FORWARD = "add-forward"
LATENCY = "latency"
# The compiled-model row of bench.model: a small transformer stack's training step, not a sweep.
MODEL = "model"
# bench.features: per-head QK-norm on strided views and the fused fp8 quantization, our backends only.
FEATURES = "features"
NORM_MODES = (FORWARD, BACKWARD, FORWARD_BACKWARD)  # rms_norm's throughput modes
THROUGHPUT_MODES = NORM_MODES + (ADD_FORWARD,)
MODES = THROUGHPUT_MODES + (LATENCY, MODEL, FEATURES)

# Table and plot titles of the throughput modes that are not self-explanatory.
MODE_TITLES = {ADD_FORWARD: "add_rms_norm forward"}

# Full-size tensors each mode must move, in elements of x's dtype per element of x: forward reads x and
# writes y; backward reads x and dy and writes dx; forward+backward is both; add-forward reads x and
# residual and writes y and residual_out. Weight, dweight and per-row statistics are O(N + M) and ignored.
TENSORS_MOVED = {FORWARD: 2, BACKWARD: 3, FORWARD_BACKWARD: 5, ADD_FORWARD: 4}

ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# Forward+backward is measured this many times; the median is reported, and the run is called stable
# when the lowest is within STABLE_SPREAD_POINTS points (percent of the ceiling) of it.
FORWARD_BACKWARD_REPEATS = 3
STABLE_SPREAD_POINTS = 3.0
# Forward, backward and add-forward are measured once, but a cell of ours more than OFF_CELL_POINTS
# below the best cell of its row is measured OFF_CELL_REPEATS times in all and reports the median, with
# the same stability mark: one slow reading is not taken for the kernel's speed (in the full run at
# 476a9bd the CUDA forward at bf16 16384 read 91% where auto, running the same kernel, read 96%).
OFF_CELL_POINTS = 3.0
OFF_CELL_REPEATS = 3
# A cell whose host took at least this share of its GPU time to issue a call (timing.CallTime) is
# marked as bound by the host: its GPU time is the kernels' (the timed calls are queued behind a GPU-side
# wait, v0.46), but issued one by one onto an idle GPU such calls run at the host's pace. Before v0.46
# the GPU waited inside the timed bracket: cells timed through autograd at M·N = 2^27 in 16-bit have
# ~0.27-0.45 ms of GPU time a call, and their readings moved by up to 49 points between two full runs in
# which all but three forward cells moved by 1.5 or less (bench/NOTES.md v0.42).
HOST_BOUND_FRACTION = 0.9

# --quick: about a minute and a half on an H100 (47 s before add-forward and the model row, estimated to
# add ~8 s and ~25 s); bf16 only, no long rows, the library against the fused peers (the eager and compiled
# formulas are slow or compile per shape; the model row has the compiled formula in a model).
QUICK_DTYPES = ("bf16",)
QUICK_NS = (1024, 4096, 16384, 65536)
# add-forward's: hidden sizes of real models, up to 32768 (no model's hidden size is 65536).
QUICK_ADD_NS = (1024, 4096, 16384, 32768)
QUICK_MODES = (FORWARD, FORWARD_BACKWARD, ADD_FORWARD, LATENCY, MODEL, FEATURES)
QUICK_IMPLEMENTATIONS = ("ours-triton", "ours-cuda", "ours-auto", "torch-F", "liger", "quack")


def rows_for(n: int) -> int:
    """Number of rows M timed at row length ``n``: LONG_ROW_M for the long rows, else ELEMENTS // n."""
    return LONG_ROW_M if n in LONG_ROW_NS else max(1, ELEMENTS // n)


def shape_plan(
    dtypes: tuple[str, ...], ns: tuple[int, ...], add_ns: tuple[int, ...], modes: tuple[str, ...]
) -> list[tuple[str, int, tuple[str, ...]]]:
    """(dtype, N, throughput modes measured there) of every shape the sweep visits, N ascending per dtype.

    rms_norm's modes run at ``ns``, add-forward at ``add_ns``; a shape in both runs both.
    """
    norm_modes = tuple(m for m in NORM_MODES if m in modes)
    add_modes = (ADD_FORWARD,) if ADD_FORWARD in modes else ()
    visited = sorted(set(ns if norm_modes else ()) | set(add_ns if add_modes else ()))
    return [
        (dtype, n, (norm_modes if n in ns else ()) + (add_modes if n in add_ns else ()))
        for dtype in dtypes
        for n in visited
    ]


def bytes_moved(mode: str, rows: int, n: int, dtype: str) -> int:
    """Bytes a ``mode`` call on a [rows, n] tensor of ``dtype`` must move at the least (see TENSORS_MOVED)."""
    return TENSORS_MOVED[mode] * rows * n * ELEMENT_BYTES[dtype]
