"""The one-pass backward's kernels compile for sm_90 without spilling registers.

rms_norm_bwd_split_kernel's plans (triton_kernels._bwd_split_plan) spend registers on latency: the
weight held across rows, the lagged row's re-read in flight beside this row's loads (bench/NOTES.md
v0.27, up to ~235 registers a thread in fp32 with a residual gradient). A spill there costs far more
than it saves (capped at 128-152 registers: 0-25 points of copy lower). Triton compiles for an sm_90
target without a GPU; this test does so in a child process, since the test process may run Triton's
interpreter, and reads each kernel's registers and stack from its cubin, for a 2-D contiguous
problem as the GPU would specialize it (aligned pointers, unit inner strides).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# (N, x and dy dtype, residual gradient): each of the plan's three chunk widths and both early re-reads.
CASES = [
    (n, dtype, dres)
    for n in (16384, 262144, 1 << 20)
    for dtype in ("bf16", "fp32")
    for dres in (False, True)
]

CHILD = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rmsnorm import triton_kernels as tk

cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
if not os.path.exists(cuobjdump):
    print(json.dumps({"skip": "no cuobjdump in this Triton install"}))
    sys.exit(0)
kernel = tk.rms_norm_bwd_split_kernel
element_size = {"bf16": 2, "fp32": 4}
for n, dtype, dres in json.loads(sys.argv[1]):
    plan = tk._bwd_split_plan(n, element_size[dtype], element_size[dtype])
    constexprs = {"HAS_DRESIDUAL": dres, "HAS_WEIGHT": True, "COMPUTE_DW": True, "ROUND_XHAT": False,
                  "CHUNK_N": plan.chunk_n, "PARTIALS_BLOCK": plan.partials_block, "LAG_ROWS": tk.BWD_SPLIT_LAG_ROWS,
                  "REREAD_DY_EARLY": plan.reread_dy_early, "DX_CACHE_MODIFIER": tk.BWD_SPLIT_DX_CACHE_MODIFIER,
                  "PHASE": tk.BOTH_PHASES}
    pointers = {"rstd_ptr": "*fp32", "dw_partial_ptr": "*fp32", "partial_ptr": "*i64"}
    signature, aligned = {}, []
    for index, param in enumerate(kernel.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*" + dtype)
            aligned.append(index)
        elif name.startswith("size") or ("stride" in name and not name.endswith("stride0")):
            signature[name] = "constexpr"  # a 2-D contiguous problem: sizes and inner strides of 1
            constexprs[name] = 1
        elif name == "weight_offset":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name == "N" or name.endswith("stride0"):
                aligned.append(index)
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": plan.num_warps, "enable_fp_fusion": False})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(compiled.asm["cubin"])
    usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
    os.unlink(cubin.name)
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    print(json.dumps({"case": [n, dtype, dres], "chunk_n": plan.chunk_n, "registers": int(found[1]),
                      "stack": int(found[2])}), flush=True)
"""


def test_one_pass_backward_plans_do_not_spill():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(CASES)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if reports and "skip" in reports[0]:
        pytest.skip(reports[0]["skip"])
    assert [r["case"] for r in reports] == [list(case) for case in CASES], done.stdout
    spilled = [r for r in reports if r["stack"] != 0 or r["registers"] > 255]
    assert not spilled, f"register spills (a stack frame) in the one-pass backward: {spilled}"
