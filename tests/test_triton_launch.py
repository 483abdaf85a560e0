"""rmsnorm.triton_launch: a compiled kernel is reused only for arguments Triton would specialize the same way.

On CPU a stand-in for the @triton.jit kernel records what goes through Triton and what goes
straight to the compiled kernel's launcher; on a GPU the real forward and backward run through both
paths, aligned and misaligned, against float64, and the two paths' outputs must be the same bits.
"""

from __future__ import annotations

import types

import pytest
import torch

from rmsnorm import rms_norm, triton_launch
from tests.conftest import ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import as_bits, check_rms_norm, poison_next_allocation


class _CudaLauncher:
    """A compiled kernel's `run` (Triton's CudaLauncher), whose `launch` is the C launcher."""

    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid = "cooperative-flag"
    launch_pdl = "pdl-flag"

    def __init__(self, calls: list) -> None:
        self._calls = calls

    def launch(self, *args) -> None:
        self._calls.append(("direct", args))


class _Compiled:
    """What Triton returns from a launch: the compiled kernel."""

    function = "function-handle"
    packed_metadata = "packed-metadata"
    metadata = types.SimpleNamespace(shared=1024)

    def __init__(self, calls: list) -> None:
        self.run = _CudaLauncher(calls)

    def _init_handles(self) -> None:
        pass


class _Param:
    def __init__(self, name: str, is_constexpr: bool = False) -> None:
        self.name, self.is_constexpr = name, is_constexpr


class _Kernel:
    """A stand-in @triton.jit kernel with runtime parameters (p, n, eps) and constexprs A, B."""

    params = [_Param("p"), _Param("n"), _Param("eps"), _Param("A", True), _Param("B", True)]
    fn = types.SimpleNamespace(__name__="stand_in_kernel")

    def __init__(self) -> None:
        self.calls: list = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(("triton", grid, args, kwargs))
            return _Compiled(self.calls)

        return launch

    def warmup(self, *args, grid, **kwargs):
        self.calls.append(("warmup", grid, args, kwargs))
        return _Compiled(self.calls)


@pytest.fixture
def launcher(monkeypatch):
    kernel = _Kernel()
    launch = triton_launch.KernelLauncher(kernel)
    launch._compiles = True  # a stand-in is not a JITFunction: say it compiles, as the real one does
    launch._constexpr_names = ["A", "B"]
    launch._pointers = 1  # (p, n, eps): p is the one tensor
    # CPU tensors stand in for CUDA ones, as the C launcher (a stand-in too) never reads them.
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: f"stream{device}", raising=False)
    return launch, kernel


def _args(t: torch.Tensor, n: int) -> tuple:
    return (t, n, 1e-6)


def test_second_call_goes_straight_to_the_compiled_kernel(launcher):
    launch, kernel = launcher
    t = torch.zeros(64)
    launch((3, 2), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    launch((5,), _args(t, 48), {"A": True, "B": 128}, 4, 0)  # 48: a multiple of 16 like 32, not 1
    assert [c[0] for c in kernel.calls] == ["triton", "direct"]
    _, grid, args, kwargs = kernel.calls[0]
    assert grid == (3, 2) and args == _args(t, 32)
    assert kwargs == {"A": True, "B": 128, "num_warps": 4, "enable_fp_fusion": False}
    # grid padded to 3-D, stream of the device, function, launch flags, no scratch, metadata, no hooks,
    # the tensor's address, the other args, constexprs
    assert kernel.calls[1][1] == (5, 1, 1, "stream0", "function-handle", "cooperative-flag", "pdl-flag", None, None,
                                  "packed-metadata", None, None, None, t.data_ptr(), 48, 1e-6, True, 128)  # fmt: skip


def test_cooperative_launcher_asks_triton_for_a_cooperative_grid(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    kernel = _Kernel()
    launch = triton_launch.KernelLauncher(kernel, cooperative=True)
    launch._compiles, launch._constexpr_names, launch._pointers = True, ["A", "B"], 1
    launch((3, 2), _args(torch.zeros(64), 32), {"A": True, "B": 128}, 4, 0)
    assert kernel.calls[0][3] == {"A": True, "B": 128, "num_warps": 4, "enable_fp_fusion": False,
                                  "launch_cooperative_grid": True}  # fmt: skip


def test_programmatic_launcher_asks_triton_for_a_dependent_launch_where_its_constexpr_is_true(monkeypatch):
    """KernelLauncher(programmatic="A"): launch_pdl where the constexpr A is true, and only there;
    each compiles (and is cached) apart, A being part of the key."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    kernel = _Kernel()
    launch = triton_launch.KernelLauncher(kernel, programmatic="A")
    launch._compiles, launch._constexpr_names, launch._pointers = True, ["A", "B"], 1
    launch((3,), _args(torch.zeros(64), 32), {"A": True, "B": 128}, 4, 0)
    launch((3,), _args(torch.zeros(64), 32), {"A": False, "B": 128}, 4, 0)
    assert [c[0] for c in kernel.calls] == ["triton", "triton"]
    assert kernel.calls[0][3] == {"A": True, "B": 128, "num_warps": 4, "enable_fp_fusion": False, "launch_pdl": True}
    assert kernel.calls[1][3] == {"A": False, "B": 128, "num_warps": 4, "enable_fp_fusion": False}


def test_the_dweight_reduction_is_never_a_dependent_launch_off_a_compiled_gpu_kernel(monkeypatch):
    """PROGRAMMATIC_DW_REDUCE on: still off for a CPU tensor (the interpreter has no inline assembly,
    which gdc_wait is), so the CPU suite and the interpreter run the kernels as they are."""
    from rmsnorm import triton_kernels

    monkeypatch.setattr(triton_kernels, "PROGRAMMATIC_DW_REDUCE", True)
    triton_kernels.forget_launch_choices()
    try:
        assert not triton_kernels._programmatic_dw_reduce(torch.device("cpu"))
    finally:
        monkeypatch.undo()
        triton_kernels.forget_launch_choices()


@pytest.mark.parametrize(
    "change",
    [
        "misaligned tensor",
        "other dtype",
        "int one",
        "int not a multiple of 16",
        "int past int32",
        "constexpr",
        "num_warps",
        "device",
    ],
)
def test_any_specialization_change_goes_through_triton(launcher, change):
    launch, kernel = launcher
    t = torch.zeros(64)
    args, constexprs, warps, device = _args(t, 32), {"A": True, "B": 128}, 4, 0
    launch((1,), args, constexprs, warps, device)
    if change == "misaligned tensor":
        args = _args(t[1:], 32)  # 4 bytes past a 16-byte boundary
    elif change == "other dtype":
        args = _args(t.double(), 32)
    elif change == "int one":
        args = _args(t, 1)
    elif change == "int not a multiple of 16":
        args = _args(t, 33)
    elif change == "int past int32":
        args = _args(t, 2**31 + 16)
    elif change == "constexpr":
        constexprs = {"A": False, "B": 128}
    elif change == "num_warps":
        warps = 8
    else:
        device = 1
    launch((1,), args, constexprs, warps, device)
    assert [c[0] for c in kernel.calls] == ["triton", "triton"]
    launch((1,), args, constexprs, warps, device)  # and then that key is cached too
    assert [c[0] for c in kernel.calls] == ["triton", "triton", "direct"]


def test_resident_programs_compile_once_and_share_the_launch_cache(launcher, monkeypatch):
    """The occupancy query compiles (warmup, no launch) on its key's first call only, and its compiled
    kernel is the one a launch with the same arguments then runs directly."""
    launch, kernel = launcher
    occupancy = []

    def blocks_per_sm(function, threads, shared_bytes):
        occupancy.append((function, threads, shared_bytes))
        return 3

    monkeypatch.setattr(triton_launch, "_blocks_per_sm", blocks_per_sm)
    monkeypatch.setattr(triton_launch, "sm_count", lambda device: 132)
    t = torch.zeros(64)
    for _ in range(2):
        assert launch.resident_programs(_args(t, 32), {"A": True, "B": 128}, 4, 0) == 3 * 132
    launch((1,), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    assert [c[0] for c in kernel.calls] == ["warmup", "direct"]
    assert occupancy == [("function-handle", 128, 1024)] * 2


def test_constexprs_out_of_signature_order_raise(launcher):
    launch, _ = launcher
    with pytest.raises(ValueError, match="constexprs must be"):
        launch((1,), _args(torch.zeros(4), 32), {"B": 128, "A": True}, 4, 0)


def test_launch_hooks_go_through_triton(launcher, monkeypatch):
    launch, kernel = launcher
    t = torch.zeros(64)
    launch((1,), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    hooks = triton_launch.knobs.runtime.launch_enter_hook
    monkeypatch.setattr(hooks, "calls", [lambda metadata: None])
    launch((1,), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    assert [c[0] for c in kernel.calls] == ["triton", "triton"]


@pytest.mark.parametrize("arg", ["x", True, None], ids=["str", "bool", "None"])
def test_other_argument_types_are_refused(launcher, arg):
    launch, kernel = launcher
    with pytest.raises(TypeError, match="tensors, ints and floats"):
        launch((1,), (torch.zeros(4), arg, 1e-6), {"A": True, "B": 128}, 4, 0)
    assert kernel.calls == []


def test_a_tensor_where_an_int_goes_is_refused(launcher):
    launch, kernel = launcher
    with pytest.raises(TypeError, match="tensors for the pointer parameters"):
        launch((1,), (32, 32, 1e-6), {"A": True, "B": 128}, 4, 0)
    assert kernel.calls == []


def test_a_tensor_off_the_gpu_is_refused_on_the_direct_path(launcher, monkeypatch):
    # The C launcher takes addresses, which it cannot check: a CPU tensor's would reach the GPU.
    launch, kernel = launcher
    t = torch.zeros(64)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: self.dtype != torch.float64))
    launch((1,), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    launch((1,), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    with pytest.raises(ValueError, match=r"stand_in_kernel takes CUDA tensors, got p on cpu"):
        launch((1,), _args(t.double(), 32), {"A": True, "B": 128}, 4, 0)
    assert [c[0] for c in kernel.calls] == ["triton", "direct"]


def test_kernels_that_need_scratch_memory_always_go_through_triton(launcher, monkeypatch):
    # CudaLauncher allocates their scratch a launch; the direct call would pass none.
    monkeypatch.setattr(_CudaLauncher, "global_scratch_size", 256)
    launch, kernel = launcher
    t = torch.zeros(64)
    for _ in range(3):
        launch((1,), _args(t, 32), {"A": True, "B": 128}, 4, 0)
    assert [c[0] for c in kernel.calls] == ["triton", "triton", "triton"]


@pytest.fixture
def two_pointer_launcher(launcher):
    """launcher's stand-in kernel with parameters (p, q, n, eps, A, B): two tensors."""
    launch, kernel = launcher
    kernel.params = [_Param("p"), _Param("q"), _Param("n"), _Param("eps"), _Param("A", True), _Param("B", True)]
    launch._pointers = 2
    return launch, kernel


def test_a_plan_repeats_a_launch_for_other_addresses_and_trailing_scalars(two_pointer_launcher):
    """A LaunchPlan passes its call's addresses where the planned launch had those tensors (one of
    them twice: stand-ins repeat), its trailing scalars, and the planned launch's other arguments."""
    launch, kernel = two_pointer_launcher
    a, b = torch.zeros(64), torch.zeros(64)
    args, constexprs = (b, b, 32, 1e-6), {"A": True, "B": 128}
    assert launch.plan((3,), args, constexprs, 4, 0, (a, b), trailing=1) is None  # not launched yet
    launch((3,), args, constexprs, 4, 0)
    plan = launch.plan((3,), args, constexprs, 4, 0, (a, b), trailing=1)
    c, d = torch.zeros(64), torch.zeros(64)
    assert plan((c.data_ptr(), d.data_ptr()), 2e-6)
    assert [call[0] for call in kernel.calls] == ["triton", "direct"]
    assert kernel.calls[1][1] == (3, 1, 1, "stream0", "function-handle", "cooperative-flag", "pdl-flag", None, None,
                                  "packed-metadata", None, None, None, d.data_ptr(), d.data_ptr(), 32, 2e-6, True,
                                  128)  # fmt: skip


def test_a_plan_does_not_launch_for_other_alignments_or_with_hooks(two_pointer_launcher, monkeypatch):
    launch, kernel = two_pointer_launcher
    a, b = torch.zeros(64), torch.zeros(64)
    args, constexprs = (a, b, 32, 1e-6), {"A": True, "B": 128}
    launch((1,), args, constexprs, 4, 0)
    plan = launch.plan((1,), args, constexprs, 4, 0, (a, b), trailing=1)
    assert not plan((a.data_ptr(), b.data_ptr() + 4), 1e-6)  # 4 bytes past a 16-byte boundary
    monkeypatch.setattr(triton_launch.knobs.runtime.launch_enter_hook, "calls", [lambda metadata: None])
    assert not plan((a.data_ptr(), b.data_ptr()), 1e-6)
    assert [call[0] for call in kernel.calls] == ["triton"]


def test_a_plan_needs_every_pointer_among_its_tensors(two_pointer_launcher):
    launch, _ = two_pointer_launcher
    a, b = torch.zeros(64), torch.zeros(64)
    launch((1,), (a, b, 32, 1e-6), {"A": True, "B": 128}, 4, 0)
    with pytest.raises(ValueError, match="not one of the plan's tensors"):
        launch.plan((1,), (a, b, 32, 1e-6), {"A": True, "B": 128}, 4, 0, (a,), trailing=1)


def test_pointer_parameters_must_lead():
    def kernel(x_ptr, n, y_ptr):
        pass

    kernel.params = [
        type("Param", (), {"name": name, "is_constexpr": False}) for name in ("x_ptr", "n", "y_ptr")
    ]
    kernel.fn = kernel
    with pytest.raises(ValueError, match="must come before the others"):
        triton_launch._leading_pointers(kernel)


@pytest.mark.skipif(not ON_GPU, reason="compiled Triton kernels run only on a CUDA GPU; none here")
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_direct_launches_are_right(offset):
    """Forward and backward through Triton (the first call of a key), then straight to the compiled
    kernels, on rows 16-byte aligned and 2 bytes past a boundary, against float64."""
    from rmsnorm import triton_kernels

    for launch in (triton_kernels._launch_fwd, triton_kernels._launch_bwd, triton_kernels._launch_dw_reduce):
        launch._compiled.clear()
    n = 4096
    x = randn(3 * n + 1, dtype=torch.bfloat16)[offset : offset + 3 * n].view(3, n)
    weight = random_weight(n, torch.bfloat16)
    for _ in range(2):
        check_rms_norm("triton", x, (n,), weight, 1e-6)
    triton_kernels._launch_fwd._compiled.clear()
    through_triton = rms_norm(x, (n,), weight, 1e-6, backend="triton")
    direct = rms_norm(x, (n,), weight, 1e-6, backend="triton")
    assert torch.equal(through_triton, direct)


def _plan_case(case: str) -> tuple:
    """(x, weight, round_xhat) of one call signature of the planned launches."""
    n = 127 if case == "odd width" else 4096
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    x = randn(3, n, dtype=dtype)
    if case == "misaligned":
        x = randn(3 * n + 1, dtype=dtype)[1:].view(3, n)  # 2 bytes past a 16-byte boundary
    elif case == "strided rows":
        x = randn(3, n + 64, dtype=dtype)[:, :n]
    elif case == "3-d":
        x = randn(2, 3, n, dtype=dtype)
    elif case == "one row":
        x = x[:1]
    weight = None if case == "no weight" else random_weight(n, torch.float32 if case == "fp32 weight" else dtype)
    return x, weight, case == "llama"


PLAN_CASES = ["bf16", "fp32", "fp32 weight", "no weight", "misaligned", "strided rows", "3-d", "one row", "odd width",
              "llama"]  # fmt: skip


@pytest.mark.skipif(not ON_GPU, reason="compiled Triton kernels run only on a CUDA GPU; none here")
@pytest.mark.parametrize("need_rstd", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("case", PLAN_CASES)
def test_forward_plans_give_the_bits_of_a_full_launch(case, need_rstd, monkeypatch):
    """rms_norm_fwd_planned: a signature's first call launches through _forward and plans, later
    calls launch from the plan (_forward not called), with their own eps and weight_offset; every
    output, written over a NaN-filled block the allocator hands out again, is the full launch's bits."""
    from rmsnorm import triton_kernels

    x, weight, round_xhat = _plan_case(case)
    offset = 0.0 if weight is None else 0.5

    def full_launch(eps: float, weight_offset: float) -> tuple:
        y, _, rstd = triton_kernels.rms_norm_fwd(x, None, weight, weight_offset, eps, round_xhat, need_rstd)
        return y, rstd

    def planned(eps: float, weight_offset: float) -> tuple:
        poison_next_allocation(x)  # y's block
        if need_rstd:
            poison_next_allocation(x.new_empty(x.shape[:-1], dtype=torch.float32))
        return triton_kernels.rms_norm_fwd_planned(x, weight, weight_offset, eps, round_xhat, need_rstd)

    def assert_same(actual: tuple, expected: tuple) -> None:
        assert torch.equal(as_bits(actual[0]), as_bits(expected[0]))
        assert (actual[1] is None) == (not need_rstd)
        if need_rstd:
            assert torch.equal(as_bits(actual[1]), as_bits(expected[1]))

    triton_kernels._fwd_plans.clear()
    expected = full_launch(1e-6, offset)
    assert_same(planned(1e-6, offset), expected)  # planned here
    assert len(triton_kernels._fwd_plans) == 1
    full_launches = []
    forward = triton_kernels._forward
    monkeypatch.setattr(triton_kernels, "_forward", lambda *a, **k: full_launches.append(1) or forward(*a, **k))
    assert_same(planned(1e-6, offset), expected)
    other_offset = 0.0 if weight is None else -0.25
    assert_same(planned(1e-2, other_offset), full_launch(1e-2, other_offset))
    assert full_launches == [1]  # the full_launch just above, not the planned calls


def _backward_case(case: str) -> tuple:
    """rms_norm_bwd's arguments (dy, x, dresidual_out, weight, rstd, needs_dweight, round_xhat) of one
    call signature: the forward's cases, plus a gradient arriving on residual_out, a strided dy, no
    dweight asked for, and rows over one tile (the split kernel, whose plan also allocates its flag
    words)."""
    x, weight, round_xhat = _plan_case(case if case in PLAN_CASES else "bf16")
    if case.startswith("split"):  # rows over one tile: rms_norm_bwd_split_kernel
        n = 16385 if case == "split misaligned" else 16384
        dtype = torch.float32 if case == "split fp32" else torch.bfloat16
        x = randn(3, n + 1, dtype=dtype)[:, 1:] if case == "split misaligned" else randn(3, n, dtype=dtype)
        weight = random_weight(x.shape[-1], dtype)
    dy = randn(*x.shape, dtype=x.dtype)
    if case == "strided dy":
        dy = randn(*x.shape[:-1], x.shape[-1] + 8, dtype=x.dtype)[..., 1:-7]
    dresidual_out = randn(*x.shape, dtype=x.dtype) if case == "dresidual" else None
    rstd = torch.rsqrt(x.float().square().mean(-1) + 1e-6)
    return dy, x, dresidual_out, weight, rstd, case != "no dweight", round_xhat


BACKWARD_PLAN_CASES = [*PLAN_CASES, "strided dy", "dresidual", "no dweight", "split", "split fp32", "split misaligned"]


@pytest.mark.skipif(not ON_GPU, reason="compiled Triton kernels run only on a CUDA GPU; none here")
def test_backward_plans_of_many_signatures_give_the_bits_of_full_launches(monkeypatch):
    """rms_norm_bwd: each signature's first call launches in full and plans, later calls launch
    from the plan (the full path's tile_config not called), with their own weight_offset. Plans of
    every case live side by side, each under its own key, and every dx and dweight, written over
    NaN-filled blocks the allocator hands out again, is its full launch's bits."""
    from rmsnorm import triton_kernels

    cases = [_backward_case(case) for case in BACKWARD_PLAN_CASES]

    def call(case: tuple, weight_offset: float) -> tuple:
        dy, x, dresidual_out, weight, rstd, needs_dweight, round_xhat = case
        poison_next_allocation(x)  # dx's block
        if weight is not None:
            poison_next_allocation(weight)  # dweight's
        return triton_kernels.rms_norm_bwd(dy, x, dresidual_out, weight, weight_offset, rstd, needs_dweight,
                                           round_xhat)  # fmt: skip

    def full_launch(case: tuple, weight_offset: float) -> tuple:
        triton_kernels._bwd_plans.clear()
        return call(case, weight_offset)

    def assert_same(actual: tuple, expected: tuple) -> None:
        assert torch.equal(as_bits(actual[0]), as_bits(expected[0]))
        assert (actual[1] is None) == (expected[1] is None)
        if expected[1] is not None:
            assert torch.equal(as_bits(actual[1]), as_bits(expected[1]))

    offsets = (0.5, -0.25)
    expected = [[full_launch(case, offset) for offset in offsets] for case in cases]
    triton_kernels._bwd_plans.clear()
    for case, want in zip(cases, expected):
        assert_same(call(case, offsets[0]), want[0])  # planned here
    assert len(triton_kernels._bwd_plans) == len(cases)
    full_launches = []
    config = triton_kernels.tile_config
    monkeypatch.setattr(triton_kernels, "tile_config", lambda *a, **k: full_launches.append(1) or config(*a, **k))
    for case, want in zip(cases, expected):
        for offset, expected_bits in zip(offsets, want):
            assert_same(call(case, offset), expected_bits)
    assert full_launches == []


@pytest.mark.skipif(not ON_GPU, reason="compiled Triton kernels run only on a CUDA GPU; none here")
@pytest.mark.parametrize("case", ["bf16", "split", "split fp32"])
def test_a_dependent_dweight_reduction_gives_the_bits_of_a_serial_one(case, monkeypatch):
    """PROGRAMMATIC_DW_REDUCE (Hopper and later): the reduction launched while the backward kernel
    runs, waiting on it in the kernel, gives the serial launch's dx and dweight bits, in eager calls
    (a full launch, then its plan) and in a CUDA graph's replays, over NaN-filled outputs."""
    from rmsnorm import triton_kernels

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9.0 or later")
    dy, x, dresidual_out, weight, rstd, needs_dweight, round_xhat = _backward_case(case)

    def call() -> tuple:
        poison_next_allocation(x)
        poison_next_allocation(weight)
        return triton_kernels.rms_norm_bwd(dy, x, dresidual_out, weight, 0.5, rstd, needs_dweight, round_xhat)

    # The serial launch with the constant off, whatever its default.
    monkeypatch.setattr(triton_kernels, "PROGRAMMATIC_DW_REDUCE", False)
    triton_kernels.forget_launch_choices()
    try:
        assert not triton_kernels._programmatic_dw_reduce(x.device)
        serial = call()
        monkeypatch.setattr(triton_kernels, "PROGRAMMATIC_DW_REDUCE", True)
        triton_kernels.forget_launch_choices()
        assert triton_kernels._programmatic_dw_reduce(x.device)
        outputs = [call(), call()]  # a full launch, then the plan's
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            captured = triton_kernels.rms_norm_bwd(dy, x, dresidual_out, weight, 0.5, rstd, needs_dweight, round_xhat)
        for tensor in captured:
            tensor.fill_(float("nan"))
        graph.replay()
        outputs.append(captured)
        torch.cuda.synchronize()
    finally:
        monkeypatch.undo()
        triton_kernels.forget_launch_choices()
    for dx, dw in outputs:
        assert torch.equal(as_bits(dx), as_bits(serial[0])) and torch.equal(as_bits(dw), as_bits(serial[1]))


def _backward_key(dy, x, dresidual_out, weight, rstd, compute_dw=True, round_xhat=False) -> tuple:
    from rmsnorm import triton_kernels

    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    tensors = triton_kernels._bwd_tensors(dy, x, dresidual_out, weight, rstd, dx)
    addresses = [t.data_ptr() for t in tensors]
    return triton_kernels._bwd_key(tensors, addresses, dresidual_out, weight, compute_dw, round_xhat)


def test_backward_keys_tell_apart_every_difference_a_launch_depends_on():
    """Two backward calls share a plan only where everything but their addresses (not their
    alignment) and weight_offset is the same: each change below, one at a time, gives a key of its
    own, and fresh tensors of the same layout give the same key. On CPU tensors: the key is plain
    Python over shapes, strides, dtypes and addresses."""
    n = 64

    def aligned(*shape, dtype=torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float32).to(dtype)

    def misaligned(*shape, dtype=torch.bfloat16) -> torch.Tensor:
        flat = aligned(int(torch.tensor(shape).prod()) + 1, dtype=dtype)
        return flat[1:].view(*shape)  # one element past the allocation's (aligned) start

    def call(**change) -> dict:
        args = {"dy": aligned(4, n), "x": aligned(4, n), "dresidual_out": None, "weight": aligned(n),
                "rstd": aligned(4, dtype=torch.float32), "compute_dw": True, "round_xhat": False}  # fmt: skip
        return {**args, **change}

    base = _backward_key(**call())
    assert _backward_key(**call()) == base  # other tensors, same layout and alignment
    changes = {
        "x dtype": call(x=aligned(4, n, dtype=torch.float16)),
        "dy dtype": call(dy=aligned(4, n, dtype=torch.float16)),
        "weight dtype": call(weight=aligned(n, dtype=torch.float32)),
        "rstd dtype": call(rstd=aligned(4, dtype=torch.float64)),
        "rows": call(dy=aligned(5, n), x=aligned(5, n), rstd=aligned(5, dtype=torch.float32)),
        "x row stride": call(x=aligned(4, n + 8)[:, :n]),
        "dy row stride": call(dy=aligned(4, n + 8)[:, :n]),
        "3-d rows": call(dy=aligned(2, 2, n), x=aligned(2, 2, n), rstd=aligned(2, 2, dtype=torch.float32)),
        "x misaligned": call(x=misaligned(4, n)),
        "dy misaligned": call(dy=misaligned(4, n)),
        "weight misaligned": call(weight=misaligned(n)),
        "rstd misaligned": call(rstd=misaligned(4, dtype=torch.float32)),
        "dresidual": call(dresidual_out=aligned(4, n)),
        "dresidual misaligned": call(dresidual_out=misaligned(4, n)),
        "no weight": call(weight=None),
        "no dweight": call(compute_dw=False),
        "llama": call(round_xhat=True),
    }
    keys = {name: _backward_key(**args) for name, args in changes.items()}
    assert all(key != base for key in keys.values()), [name for name, key in keys.items() if key == base]
    assert len(set(keys.values())) == len(keys)


def test_forward_keys_tell_apart_every_difference_a_launch_depends_on():
    """As for the backward: rms_norm_fwd_planned's key changes with each of these, and only these."""
    from rmsnorm import triton_kernels

    n = 64

    def key(x, weight, round_xhat=False, need_rstd=False) -> tuple:
        w_address = x.data_ptr() if weight is None else weight.data_ptr()
        return triton_kernels._fwd_key(x, weight, x.data_ptr(), w_address, round_xhat, need_rstd)

    def rows(*shape, dtype=torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape).to(dtype)

    base = key(rows(4, n), rows(n))
    assert key(rows(4, n), rows(n)) == base
    changes = {
        "x dtype": key(rows(4, n, dtype=torch.float16), rows(n)),
        "weight dtype": key(rows(4, n), rows(n, dtype=torch.float32)),
        "rows": key(rows(5, n), rows(n)),
        "row stride": key(rows(4, n + 8)[:, :n], rows(n)),
        "3-d rows": key(rows(2, 2, n), rows(n)),
        "x misaligned": key(rows(4 * n + 1)[1:].view(4, n), rows(n)),
        "weight misaligned": key(rows(4, n), rows(n + 1)[1:]),
        "no weight": key(rows(4, n), None),
        "llama": key(rows(4, n), rows(n), round_xhat=True),
        "rstd stored": key(rows(4, n), rows(n), need_rstd=True),
    }
    assert all(k != base for k in changes.values()), [name for name, k in changes.items() if k == base]
    assert len(set(changes.values())) == len(changes)
