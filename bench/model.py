"""The compiled-model row: a small pre-norm transformer's training step under torch.compile, three ways.

The sweep times one norm call; this times what a model sees, the norms between matmuls, fused or not by
the compiler. One model with the same weights in three variants:
  (a) norms by rmsnorm: rmsnorm.RMSNorm for the first norm, rmsnorm.add_rms_norm (backend auto) for every
      residual add and norm after it, torch.compile(fullgraph=True); Inductor fuses around our ops;
  (b) norms by PyTorch: a plain ``x + residual``, then torch.nn.RMSNorm, torch.compile(fullgraph=True);
      Inductor writes the fused add+norm itself;
  (c) the model of (b), eager.
fullgraph=True raises at a graph break: the break is recorded, and the variant compiled again with breaks
allowed, so that it still has a time. Compile time (the first step) is reported apart from ms/step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

import rmsnorm
from bench.cases import EPS
from bench.errors import first_line
from bench.inputs import SEED, release_memory
from bench.timing import median_ms

# The model: BLOCKS pre-norm blocks of width D_MODEL, attention stood in for by one Linear(d, d) (a norm
# benchmark needs the norms between matmuls, not attention's kernels), a GPT-style MLP Linear(d, 4d),
# GELU, Linear(4d, d), and a final norm; bf16, BATCH x SEQ = 8192 tokens a step; d as Llama 3 8B's.
BLOCKS = 4
D_MODEL = 4096
MLP_RATIO = 4
BATCH, SEQ = 4, 2048
DTYPE, DTYPE_NAME = torch.bfloat16, "bf16"

# Seconds of the whole row on an H100, for the run-time estimate, and how they were estimated without one:
# - timing: a step is ~3x the forward's matmul flops, 3 * BLOCKS * 2 * tokens * (1 + 2 * MLP_RATIO) * d^2
#   = 30 TFLOP, ~50 ms at ~600 TFLOP/s of bf16 cuBLAS; the norms' ~5 GB a step add ~2 ms at 3 TB/s.
#   A variant runs 13 steps (the first, then median_ms's 12): ~0.7 s, ~2 s for the three.
# - compiles, measured with CPU tensors at d = 256 (the same graphs, (a)'s through the Triton backend's
#   ops under TRITON_INTERPRET=1; Inductor's C++ backend, 2 cores): Inductor's first compile in a process
#   8.6 s (set-up, the first C++ build), then the forward and backward 4.7 s (a) and 7.6 s (b), ~1.5 s of
#   it dynamo, AOTAutograd and lowering, the rest g++ building kernels. On the GPU Triton builds them on
#   16 cores: guessed ~5 s set-up, ~4 s (a), ~7 s (b).
# About 2 + 5 + 4 + 7 s and a second of set-up: ~20 s; 25 with a margin.
ESTIMATED_S = 25.0


class OursPreNorm(rmsnorm.RMSNorm):
    """rmsnorm.RMSNorm that also takes the residual stream: (x, residual) -> (y, residual_out).

    Without a residual (the first norm), y = rms_norm(x) and x is the residual stream; with one,
    rmsnorm.add_rms_norm fuses the add into the norm.
    """

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return super().forward(x), x
        return rmsnorm.add_rms_norm(x, residual, self.weight, self.eps, backend=self.backend)


class TorchPreNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm that also takes the residual stream, as models write it: the sum, then the norm."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is not None:
            x = x + residual
        return super().forward(x), x


class Block(torch.nn.Module):
    """A pre-norm block: mixer (attention's stand-in) and MLP, each after a norm of the residual stream."""

    def __init__(self, norm: type, d: int, device: str, dtype: torch.dtype) -> None:
        super().__init__()
        where = {"device": device, "dtype": dtype}
        self.mixer_norm = norm(d, eps=EPS, **where)
        self.mixer = torch.nn.Linear(d, d, bias=False, **where)
        self.mlp_norm = norm(d, eps=EPS, **where)
        self.up = torch.nn.Linear(d, MLP_RATIO * d, bias=False, **where)
        self.down = torch.nn.Linear(MLP_RATIO * d, d, bias=False, **where)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None):
        y, residual = self.mixer_norm(x, residual)
        y, residual = self.mlp_norm(self.mixer(y), residual)
        return self.down(torch.nn.functional.gelu(self.up(y))), residual


class PreNormStack(torch.nn.Module):
    """BLOCKS blocks and a final norm; x [..., d] -> [..., d]. ``norm``: OursPreNorm or TorchPreNorm."""

    def __init__(self, norm: type, d: int = D_MODEL, device: str = "cuda", dtype: torch.dtype = DTYPE):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(norm, d, device, dtype) for _ in range(BLOCKS))
        self.final_norm = norm(d, eps=EPS, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = None
        for block in self.blocks:
            x, residual = block(x, residual)
        return self.final_norm(x, residual)[0]


@dataclass(frozen=True)
class Variant:
    """One row of the model table."""

    key: str  # "a", "b", "c": the row's name in the table
    label: str
    norm: type
    compiled: bool


VARIANTS = (
    Variant("a", "rmsnorm.RMSNorm + rmsnorm.add_rms_norm, compiled", OursPreNorm, True),
    Variant("b", "x + residual, torch.nn.RMSNorm, compiled", TorchPreNorm, True),
    Variant("c", "x + residual, torch.nn.RMSNorm, eager", TorchPreNorm, False),
)
BASELINE_KEY = "b"  # the variant every speed-up is relative to
REFERENCE_KEY = "c"  # the variant every output is compared with: eager PyTorch
MEASURE_ORDER = ("c", "b", "a")  # eager first: its output is the yardstick of the compiled ones


def config() -> dict:
    """The model's sizes, as saved with the results."""
    return {
        "blocks": BLOCKS,
        "d_model": D_MODEL,
        "mlp_hidden": MLP_RATIO * D_MODEL,
        "batch": BATCH,
        "seq": SEQ,
        "tokens": BATCH * SEQ,
        "dtype": DTYPE_NAME,
        "backend": "auto",
    }


def _training_step(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor, params: tuple
) -> Callable[[], torch.Tensor]:
    """One forward and backward: the gradients of every weight for the output gradient ``dy``."""

    def step() -> torch.Tensor:
        out = model(x)
        torch.autograd.grad(out, params, dy)
        return out

    return step


def _first_step(step: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The output of ``step``'s first call and its wall seconds (a compiled one compiles here)."""
    start = time.perf_counter()
    out = step().detach()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _compiled_first_step(model: torch.nn.Module, x, dy, params, record: dict):
    """Compile ``model`` with fullgraph=True, or with graph breaks allowed when that raises (noted in
    ``record``); returns its training step, its first output and the first step's seconds."""
    try:
        step = _training_step(torch.compile(model, fullgraph=True), x, dy, params)
        out, first_s = _first_step(step)
        record.update(fullgraph=True, fullgraph_reason=None)
    except Exception as exc:  # a graph break under fullgraph=True, or a failure that raises again below
        reason = first_line(exc)
        step = _training_step(torch.compile(model), x, dy, params)
        out, first_s = _first_step(step)
        record.update(fullgraph=False, fullgraph_reason=reason)
    return step, out, first_s


def _warm_up_inductor(x: torch.Tensor) -> None:
    """Pay Inductor's start-up in this process (compile workers, first Triton build) before the variants,
    so that no variant's compile time carries it."""
    torch.compile(torch.nn.functional.gelu, fullgraph=True)(x[:1, :1])
    torch.cuda.synchronize()


def _relative_difference(out: torch.Tensor, expected: torch.Tensor) -> float:
    """||out - expected|| / ||expected|| over the whole output, in fp32."""
    return ((out.float() - expected.float()).norm() / expected.float().norm()).item()


def _measure_variant(
    variant: Variant, model: torch.nn.Module, x, dy, expected
) -> tuple[dict, torch.Tensor | None]:
    """The variant's record and its first output (None when it failed)."""
    record = {"variant": variant.key, "label": variant.label, "compiled": variant.compiled}
    params = tuple(model.parameters())
    try:
        if variant.compiled:
            step, out, first_s = _compiled_first_step(model, x, dy, params, record)
        else:
            step = _training_step(model, x, dy, params)
            out, first_s = _first_step(step)
        ms = median_ms(step)
    except Exception as exc:  # out of memory, a kernel or compiler error: recorded, the run goes on
        record.update(status="failed", reason=first_line(exc))
        return record, None
    record.update(status="ok", reason=None, ms=ms, tokens_per_s=x.shape[0] * x.shape[1] / ms * 1e3)
    if variant.compiled:
        record["compile_s"] = max(0.0, first_s - ms / 1e3)
    if expected is not None:
        record["output_rel_diff"] = _relative_difference(out, expected)
    return record, out


def _log_line(record: dict) -> str:
    head = f"model ({record['variant']}) {record['label']}: "
    if record["status"] != "ok":
        return head + f"{record['status']}, {record['reason']}"
    line = head + f"{record['ms']:.2f} ms/step, {record['tokens_per_s'] / 1e3:.0f}k tokens/s"
    if record["compiled"]:
        graph = "fullgraph" if record["fullgraph"] else f"graph breaks ({record['fullgraph_reason']})"
        line += f", compile {record['compile_s']:.1f} s, {graph}"
    if "output_rel_diff" in record:
        line += f", output vs ({REFERENCE_KEY}) {record['output_rel_diff']:.1e}"
    return line


def _measure_variants(log: Callable[[str], None]) -> dict[str, dict]:
    """variant key -> its record, measured in MEASURE_ORDER on one input and two models of equal weights."""
    torch.manual_seed(SEED)  # the Linear layers' initialisation
    generator = torch.Generator(device="cuda").manual_seed(SEED)
    x, dy = (
        torch.randn(BATCH, SEQ, D_MODEL, device="cuda", dtype=DTYPE, generator=generator) for _ in range(2)
    )
    models = {norm: PreNormStack(norm) for norm in (TorchPreNorm, OursPreNorm)}
    # The same parameter names and shapes: ours gets torch's weights.
    models[OursPreNorm].load_state_dict(models[TorchPreNorm].state_dict())
    _warm_up_inductor(x)
    variants = {v.key: v for v in VARIANTS}
    records, expected = {}, None
    for key in MEASURE_ORDER:
        records[key], out = _measure_variant(variants[key], models[variants[key].norm], x, dy, expected)
        if key == REFERENCE_KEY:
            expected = out
        log(_log_line(records[key]))
    return records


def measure_model(log: Callable[[str], None]) -> dict:
    """Time the training step of every variant: {config, baseline, reference, variants}.

    config is config(); baseline and reference the keys of the variants that speed-ups and outputs are
    relative to; variants the records, in table order. A record has variant, label, compiled, status
    ("ok" or "failed") and reason; for "ok" ms (median ms a step), tokens_per_s, output_rel_diff (of
    every variant but the reference) and, compiled, compile_s, fullgraph and fullgraph_reason. When the
    models cannot even be built (out of memory), variants is empty and reason says why. ``log``
    receives one line per variant.
    """
    saved = {"config": config(), "baseline": BASELINE_KEY, "reference": REFERENCE_KEY}
    release_memory()  # the sweep's graphs and tensors out of the way
    try:
        records = _measure_variants(log)
    except Exception as exc:  # the last phase: what was measured before it is kept
        log(f"model: not measured, {first_line(exc)}")
        return {**saved, "variants": [], "reason": first_line(exc)}
    finally:
        release_memory()  # the models, their graphs and gradients
    return {**saved, "variants": [records[v.key] for v in VARIANTS]}
