"""Every Triton kernel launch that a set of CPU calls makes compiles for sm_90.

CPU CI runs the Triton kernels under Triton's interpreter (TRITON_INTERPRET=1), which executes a
kernel's Python, not Triton's code generator: a kernel can pass every interpreted test and still fail
to compile for a GPU. Session 32 lost a GPU run to one (70 failures): a jit helper's str constexpr
left to its default, which the code generator does not wrap as a constexpr and the interpreter does
not care about. A first child process makes the calls below under the interpreter and records each
launch (kernel, argument types and alignment, constexprs, warps, launch options); a second, without
the interpreter, compiles each distinct launch for an sm_90 target, as Triton would for an H100.
The calls take every forward path (a tile, the held 16-bit tile, split rows) and backward path (a
tile, split rows), with and without a weight, a residual, an fp8 store and llama casting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RECORD = r"""
import json, sys
import torch
import rmsnorm
from rmsnorm import triton_launch

types = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float8_e4m3fn: "fp8e4nv",
         torch.int64: "i64", torch.int32: "i32"}
launches = {}
original = triton_launch.KernelLauncher.__call__


def scalar_type(value):
    if isinstance(value, float):
        return "fp32"
    if value == 1:  # Triton specializes an int of 1 as a constant
        return "one"
    return "i32" if -2**31 <= value < 2**31 else "i64"


def recording(self, grid, args, constexprs, num_warps, device):
    pointers = [a for a in args if isinstance(a, torch.Tensor)]
    launch = {
        "kernel": self._kernel.fn.__name__,
        "pointers": [types[t.dtype] for t in pointers],
        "pointers_aligned": [t.data_ptr() % 16 == 0 for t in pointers],
        "scalars": [scalar_type(a) for a in args[len(pointers):]],
        "scalars_aligned": [isinstance(a, int) and a % 16 == 0 for a in args[len(pointers):]],
        "constexprs": constexprs,
        "num_warps": num_warps,
        "options": self._options_for(constexprs),
    }
    # One launch of each kind: alignment and scalar values change no code path worth a compile.
    key = [launch[k] for k in ("kernel", "pointers", "constexprs", "num_warps", "options")]
    launches.setdefault(json.dumps(key, sort_keys=True), launch)
    return original(self, grid, args, constexprs, num_warps, device)


triton_launch.KernelLauncher.__call__ = recording
torch.manual_seed(0)
# A padded tile, the held 16-bit tile (fp32: split), split rows; fp16 differs from bf16 only in
# its conversions, which the padded tile has too.
for n, dtype in [(n, dtype) for n in (127, 40000, 65537) for dtype in (torch.bfloat16, torch.float32)] + [
    (127, torch.float16)
]:
    x = torch.randn(2, n, dtype=dtype, requires_grad=True)
    w = torch.randn(n, dtype=dtype, requires_grad=True)
    res = torch.randn(2, n, dtype=dtype, requires_grad=True)
    rmsnorm.rms_norm(x, (n,), w, backend="triton").sum().backward()
    rmsnorm.rms_norm(x, (n,), None, casting_mode="llama", backend="triton").sum().backward()
    with torch.no_grad():
        rmsnorm.rms_norm(x, (n,), w, backend="triton")
    y, res_out = rmsnorm.add_rms_norm(x, res, w, backend="triton")
    (y.sum() + res_out.sum()).backward()
    with torch.no_grad():
        scale = torch.tensor([0.05])
        rmsnorm.rms_norm_quant(x, w, scale=scale, backend="triton")
        rmsnorm.rms_norm_quant(x, w, backend="triton")
        rmsnorm.add_rms_norm_quant(x, res, w, backend="triton")
print(json.dumps(list(launches.values())))
"""

COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rmsnorm import triton_kernels

failures = []
for launch in json.loads(sys.stdin.read()):
    kernel = getattr(triton_kernels, launch["kernel"])
    runtime = [p for p in kernel.params if not p.is_constexpr]
    types = launch["pointers"] + launch["scalars"]
    aligned = launch["pointers_aligned"] + launch["scalars_aligned"]
    signature, constexprs, attrs = {}, dict(launch["constexprs"]), {}
    for index, (param, kind, is_aligned) in enumerate(zip(runtime, types, aligned)):
        if kind == "one":
            signature[param.name], constexprs[param.name] = "constexpr", 1
            continue
        signature[param.name] = ("*" + kind) if index < len(launch["pointers"]) else kind
        if is_aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    for name in launch["constexprs"]:
        signature[name] = "constexpr"
    options = {"num_warps": launch["num_warps"], **launch["options"]}  # the launcher's: no fp fusion
    try:
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    except Exception as error:  # every failure is reported, not only the first
        failures.append({"launch": launch, "error": f"{type(error).__name__}: {error}"[-1500:]})
print(json.dumps(failures))
"""


def _env(interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    return env


def test_every_recorded_launch_compiles_for_sm_90():
    recorded = subprocess.run(
        [sys.executable, "-c", RECORD], capture_output=True, text=True, env=_env(True), timeout=900
    )
    assert recorded.returncode == 0, recorded.stderr[-4000:]
    launches = json.loads(recorded.stdout.splitlines()[-1])
    kernels = {launch["kernel"] for launch in launches}
    # Every kernel but rms_norm_bwd_dot_kernel, the wide-row backward of a GPU that cannot hold one
    # program a chunk of rms_norm_bwd_split_kernel at once (none here).
    assert kernels == {
        "rms_norm_fwd_kernel", "rms_norm_fwd_split_kernel", "rms_norm_quantize_rows_kernel", "rms_norm_bwd_kernel",
        "rms_norm_bwd_split_kernel", "rms_norm_dw_reduce_kernel",
    }, kernels  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", COMPILE], input=json.dumps(launches), capture_output=True, text=True,
        env=_env(False), timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    failures = json.loads(done.stdout.splitlines()[-1])
    assert not failures, f"{len(failures)} of {len(launches)} launches: " + json.dumps(failures, indent=1)[:8000]
