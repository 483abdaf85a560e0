"""Launching a Triton kernel with less host time than `kernel[grid](...)`, for small eager calls.

Triton's own launch (JITFunction.run) binds the arguments, works out each one's specialization,
builds a cache key from them and the options, looks the compiled kernel up, checks the kernel's
globals, builds launch metadata for the hook chains and calls the compiled kernel's C launcher:
about 20 us of host time a call for our forward on an H100 machine (bench/host_breakdown.py),
twice a whole F.rms_norm call. KernelLauncher launches through Triton the first time an argument
specialization is seen, keeps the compiled kernel Triton returns under a key that determines that
specialization, and sends later calls with the same key straight to the C launcher.

The key holds everything Triton specializes a kernel on, and more (never less, or a call would
run a kernel compiled for other arguments): per tensor its dtype and whether its address is a
multiple of 16 bytes; per int whether it is 1, whether it is a multiple of 16 and whether it fits
in int32 (the ints passed are sizes, strides and counts, never past 2^63, where Triton would type
one uint64); per float its type; the constexpr values, num_warps and the device. Kernels are compiled
with the process's Triton settings (debug, instrumentation) of the first launch of each key.
Under TRITON_INTERPRET there is no compiled kernel: every call goes through Triton.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import triton
from triton import knobs

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _specialization_key(args: tuple) -> tuple:
    # One comprehension, no call per argument: this runs for every argument of every launch. Any
    # argument not an int or a float is taken for a tensor (bools too: they have no dtype, and
    # _check_types then names them).
    return tuple(
        [
            (a == 1, a % 16 == 0, _INT32_MIN <= a <= _INT32_MAX)
            if type(a) is int
            else float
            if type(a) is float
            else (a.dtype, a.data_ptr() % 16 == 0)
            for a in args
        ]
    )


def _check_types(args: tuple) -> None:
    for a in args:
        if type(a) not in (int, float) and not isinstance(a, torch.Tensor):
            kind = type(a).__name__
            raise TypeError(f"KernelLauncher takes tensors, ints and floats as runtime arguments, got {kind}")


class KernelLauncher:
    """Calls one @triton.jit kernel: `launcher(grid, args, constexprs, num_warps, device)`.

    args: the runtime arguments in signature order; constexprs: a dict of the constexpr arguments,
    which follow them in the signature, in signature order; device: the CUDA device index the
    launch goes to (the current device).
    """

    def __init__(self, kernel, cooperative: bool = False) -> None:
        self._kernel = kernel
        # cooperative: launched as a cooperative grid, which the driver refuses (an error, not a hang)
        # unless all its programs can be resident at once: for kernels whose programs wait on each other.
        self._options = {"enable_fp_fusion": False, **({"launch_cooperative_grid": True} if cooperative else {})}
        self._compiled: dict[tuple, object] = {}
        # A JITFunction compiles; the interpreter's function does not (TRITON_INTERPRET=1).
        self._compiles = isinstance(kernel, triton.runtime.JITFunction)
        if self._compiles:
            self._constexpr_names = [p.name for p in kernel.params if p.is_constexpr]

    def __call__(self, grid: tuple[int, ...], args: tuple, constexprs: dict, num_warps: int, device: int) -> None:
        if not self._compiles:
            self._kernel[grid](*args, **constexprs, num_warps=num_warps, enable_fp_fusion=False)
            return
        key = self._key(args, constexprs, num_warps, device)
        compiled = self._compiled.get(key)
        runtime = knobs.runtime
        if compiled is None or runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls:
            # Through Triton: it compiles where needed, and runs any launch hooks (a profiler's).
            self._check_constexpr_order(constexprs)
            compiled = self._kernel[grid](*args, **constexprs, num_warps=num_warps, **self._options)
            self._compiled[key] = compiled  # one dict assignment: atomic, no lock needed
            return
        grid_x, grid_y, grid_z = (*grid, 1, 1)[:3]
        stream = torch._C._cuda_getCurrentRawStream(device)
        compiled.run(
            grid_x, grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, None, None, None,
            *args, *constexprs.values(),
        )  # fmt: skip

    def resident_programs(self, args: tuple, constexprs: dict, num_warps: int, device: int) -> int:
        """How many programs of the kernel these arguments compile to the GPU holds at once (the
        driver's occupancy for its registers and shared memory, times the SMs); compiles it where
        needed, without launching it."""
        key = self._key(args, constexprs, num_warps, device)
        compiled = self._compiled.get(key)
        if compiled is None:
            self._check_constexpr_order(constexprs)
            compiled = self._kernel.warmup(*args, **constexprs, grid=(1,), num_warps=num_warps, **self._options)
            self._compiled[key] = compiled
        compiled._init_handles()  # loads the module, which sets compiled.function
        return _blocks_per_sm(compiled.function, num_warps * 32, compiled.metadata.shared) * _sm_count(device)

    def _check_constexpr_order(self, constexprs: dict) -> None:
        # The direct launch passes them positionally, after the runtime arguments.
        if list(constexprs) != self._constexpr_names:
            raise ValueError(f"constexprs must be {self._constexpr_names}, in that order; got {list(constexprs)}")

    @staticmethod
    def _key(args: tuple, constexprs: dict, num_warps: int, device: int) -> tuple:
        try:
            return (_specialization_key(args), tuple(constexprs.values()), num_warps, device)
        except AttributeError:  # an argument neither int, float nor tensor: _check_types names it
            _check_types(args)
            raise


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def _blocks_per_sm(function: int, threads: int, shared_bytes: int) -> int:
    # The driver's own occupancy calculation (what a cooperative launch is checked against); torch
    # and Triton expose none. libcuda is loaded already: Triton's launcher links it.
    blocks = ctypes.c_int()
    status = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveBlocksPerMultiprocessor(
        ctypes.byref(blocks), ctypes.c_void_p(function), ctypes.c_int(threads), ctypes.c_size_t(shared_bytes)
    )
    if status != 0:
        raise RuntimeError(f"cuOccupancyMaxActiveBlocksPerMultiprocessor failed with CUresult {status}")
    return blocks.value
