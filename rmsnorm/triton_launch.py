"""Launching a Triton kernel with less host time than `kernel[grid](...)`, for small eager calls.

Triton's own launch (JITFunction.run) binds the arguments, works out each one's specialization,
builds a cache key from them and the options, looks the compiled kernel up, checks the kernel's
globals, builds launch metadata for the hook chains and calls the compiled kernel's C launcher:
about 20 us of host time a call for our forward on an H100 machine (bench/host_breakdown.py),
twice a whole F.rms_norm call. KernelLauncher launches through Triton the first time an argument
specialization is seen, keeps the compiled kernel Triton returns under a key that determines that
specialization, and sends later calls with the same key straight to the C launcher.

The key holds everything Triton specializes a kernel on, and more (never less, or a call would
run a kernel compiled for other arguments): per tensor its dtype and its address mod 16 bytes; per
int its value up to 16, else whether it is a multiple of 16 and whether it fits in int32 (the ints
passed are sizes, strides and counts, never past 2^63, where Triton would type one uint64); per
float its type; the constexpr values, num_warps and the device. The tensors are the kernel's leading
*_ptr parameters, and reach the C launcher as their addresses. Kernels are compiled
with the process's Triton settings (debug, instrumentation) of the first launch of each key.
Under TRITON_INTERPRET there is no compiled kernel: every call goes through Triton.

A LaunchPlan goes further for a caller that knows which calls launch alike (the same shapes,
strides, dtypes and flags): it repeats one launch with other addresses and trailing scalars,
without keying anything but the addresses' alignment.
"""

from __future__ import annotations

import ctypes
import functools
from typing import NamedTuple

import torch
import triton
from triton import knobs

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _specialization_key(pointers: tuple, addresses: list, scalars: tuple) -> tuple:
    # Comprehensions, no call per argument: this runs for every argument of every launch. Finer
    # than Triton's where that is cheaper: the address's remainder mod 16 where Triton keeps
    # whether it is 0; small ints by value (a few more entries, never a wrong one). Any scalar not an
    # int is keyed by its type (a float; anything else _check_types then refuses).
    return (
        *[t.dtype for t in pointers],
        *[a & 15 for a in addresses],
        *[
            (a if -1 < a < 17 else (a & 15 == 0, _INT32_MIN <= a <= _INT32_MAX)) if type(a) is int else type(a)
            for a in scalars
        ],
    )


def _check_types(pointers: tuple, scalars: tuple) -> None:
    for t in pointers:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"KernelLauncher takes tensors for the pointer parameters, got {type(t).__name__}")
    for a in scalars:
        if type(a) not in (int, float):
            kind = type(a).__name__
            raise TypeError(f"KernelLauncher takes tensors, ints and floats as runtime arguments, got {kind}")


def _leading_pointers(kernel) -> int:
    """How many runtime parameters, all first, take tensors: those named *_ptr (our kernels' convention)."""
    names = [p.name for p in kernel.params if not p.is_constexpr]
    count = next((i for i, name in enumerate(names) if not name.endswith("_ptr")), len(names))
    if any(name.endswith("_ptr") for name in names[count:]):
        raise ValueError(f"{kernel.fn.__name__}: the *_ptr parameters must come before the others, got {names}")
    return count


class _Direct(NamedTuple):
    """A compiled kernel as its C launcher takes it (triton.backends.nvidia.driver.CudaLauncher)."""

    launch: object  # the C launcher
    function: int
    packed_metadata: object
    cooperative: bool
    pdl: bool
    compiled: object  # the CompiledKernel

    def run(self, grid: tuple[int, int, int], device: int, args: tuple) -> None:
        """Launches on the current stream of `device`; args: the kernel's runtime arguments, pointers
        as addresses, then its constexprs. No scratch memory, no launch hooks, no launch metadata."""
        self.launch(
            *grid, torch._C._cuda_getCurrentRawStream(device), self.function, self.cooperative, self.pdl, None, None,
            self.packed_metadata, None, None, None, *args,
        )  # fmt: skip


def _direct(compiled) -> _Direct | None:
    """compiled's C launcher and what it is passed, or None where the kernel needs scratch memory
    (CudaLauncher allocates it a launch: such kernels always go through Triton)."""
    launcher = compiled.run
    if launcher.global_scratch_size > 0 or launcher.profile_scratch_size > 0:
        return None
    return _Direct(
        launcher.launch, compiled.function, compiled.packed_metadata, launcher.launch_cooperative_grid,
        launcher.launch_pdl, compiled,
    )  # fmt: skip


def _launch_hooked() -> bool:
    """Whether a launch hook (a profiler's) is set: such launches go through Triton, which runs them."""
    runtime = knobs.runtime
    return bool(runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls)


class LaunchPlan(NamedTuple):
    """One launch of a compiled kernel worked out ahead (KernelLauncher.plan): a call passes its
    tensors' addresses and its trailing scalars, and nothing else is looked at or keyed."""

    direct: _Direct
    grid: tuple[int, int, int]
    picks: tuple[int, ...]  # pointer parameter i takes the address of the call's tensor picks[i]
    alignments: tuple[int, ...]  # the call's tensors' addresses mod 16, as the kernel was compiled for
    scalars: tuple  # the runtime scalars but the trailing ones
    constexprs: tuple
    device: int

    def __call__(self, addresses: tuple[int, ...], *trailing) -> bool:
        """Launches on the current stream of the plan's device, which must be the current device;
        returns False without launching where an address's alignment is not the plan's or a launch
        hook is set (launch through KernelLauncher instead)."""
        if tuple([a & 15 for a in addresses]) != self.alignments or _launch_hooked():
            return False
        self.direct.run(
            self.grid, self.device, (*[addresses[i] for i in self.picks], *self.scalars, *trailing, *self.constexprs)
        )
        return True


class KernelLauncher:
    """Calls one @triton.jit kernel: `launcher(grid, args, constexprs, num_warps, device)`.

    args: the runtime arguments in signature order, tensors for the leading *_ptr parameters, then
    ints and floats; constexprs: a dict of the constexpr arguments, which follow them in the
    signature, in signature order; device: the CUDA device index the launch goes to (the current
    device).
    """

    def __init__(self, kernel, cooperative: bool = False, programmatic: str | None = None) -> None:
        self._kernel = kernel
        # cooperative: launched as a cooperative grid, which the driver refuses (an error, not a hang)
        # unless all its programs can be resident at once: for kernels whose programs wait on each other.
        self._options = {"enable_fp_fusion": False, **({"launch_cooperative_grid": True} if cooperative else {})}
        # programmatic: the name of a bool constexpr of the kernel; where it is true, the launch is a
        # programmatic dependent launch (Triton's launch_pdl, compute capability 9.0 and later): it may
        # begin before the kernel ahead of it on the stream ends, so the kernel must wait for that one
        # (gdc_wait) before it touches memory.
        self._programmatic = programmatic
        self._compiled: dict[tuple, _Direct | None] = {}
        # A JITFunction compiles; the interpreter's function does not (TRITON_INTERPRET=1).
        self._compiles = isinstance(kernel, triton.runtime.JITFunction)
        if self._compiles:
            self._constexpr_names = [p.name for p in kernel.params if p.is_constexpr]
            self._pointers = _leading_pointers(kernel)

    def __call__(self, grid: tuple[int, ...], args: tuple, constexprs: dict, num_warps: int, device: int) -> None:
        if not self._compiles:
            self._kernel[grid](*args, **constexprs, num_warps=num_warps, enable_fp_fusion=False)
            return
        key, direct, addresses, scalars = self._lookup(args, constexprs, num_warps, device)
        if direct is None or _launch_hooked():
            # Through Triton: it compiles where needed, and runs any launch hooks (a profiler's).
            compiled = self._kernel[grid](*args, **constexprs, num_warps=num_warps, **self._options_for(constexprs))
            self._compiled[key] = _direct(compiled)  # one dict assignment: atomic, no lock needed
            return
        # Addresses, not tensors: the C launcher takes an int as it is, where for each tensor it calls
        # data_ptr() and asks the driver about the address (cuPointerGetAttribute) every launch.
        # _addresses has refused tensors off the GPU instead.
        direct.run((*grid, 1, 1)[:3], device, (*addresses, *scalars, *constexprs.values()))

    def plan(
        self, grid: tuple[int, ...], args: tuple, constexprs: dict, num_warps: int, device: int, tensors: tuple,
        trailing: int,
    ) -> LaunchPlan | None:  # fmt: skip
        """A LaunchPlan of this launch, as launched before through __call__, for calls whose
        arguments differ only in their tensors' addresses (not their alignment) and the last
        `trailing` scalars; None where there is no direct launch (the interpreter, a kernel needing
        scratch memory, or these arguments not launched yet). tensors: the launch's tensors, each
        pointer argument one of them (by identity), in the order a plan's call passes their addresses.
        """
        if not self._compiles:
            return None
        _, direct, _, scalars = self._lookup(args, constexprs, num_warps, device)
        if direct is None:
            return None
        picks = []
        for pointer in args[: self._pointers]:
            index = next((i for i, t in enumerate(tensors) if t is pointer), None)
            if index is None:
                raise ValueError(f"{self._kernel.fn.__name__}: a pointer argument is not one of the plan's tensors")
            picks.append(index)
        return LaunchPlan(
            direct, (*grid, 1, 1)[:3], tuple(picks), tuple(t.data_ptr() & 15 for t in tensors),
            scalars[: len(scalars) - trailing], tuple(constexprs.values()), device,
        )  # fmt: skip

    def resident_programs(self, args: tuple, constexprs: dict, num_warps: int, device: int) -> int:
        """How many programs of the kernel these arguments compile to the GPU holds at once (the
        driver's occupancy for its registers and shared memory, times the SMs); compiles it where
        needed, without launching it."""
        key, direct, _, _ = self._lookup(args, constexprs, num_warps, device)
        if direct is not None:
            compiled = direct.compiled  # launched or warmed up before: its module is loaded
        else:
            compiled = self._kernel.warmup(
                *args, **constexprs, grid=(1,), num_warps=num_warps, **self._options_for(constexprs)
            )
            compiled._init_handles()  # loads the module, which sets compiled.function
            self._compiled[key] = _direct(compiled)
        return _blocks_per_sm(compiled.function, num_warps * 32, compiled.metadata.shared) * sm_count(device)

    def _options_for(self, constexprs: dict) -> dict:
        """Triton's launch options for a launch with these constexprs."""
        if self._programmatic is not None and constexprs[self._programmatic]:
            return {**self._options, "launch_pdl": True}
        return self._options

    def _lookup(self, args: tuple, constexprs: dict, num_warps: int, device: int) -> tuple:
        """(key, the cached _Direct or None, the pointers' addresses, the scalars) of a launch; the
        arguments' types and the constexprs' order are checked where the key is not cached yet."""
        pointers, scalars = args[: self._pointers], args[self._pointers :]
        addresses = self._addresses(pointers, scalars)
        key = (*_specialization_key(pointers, addresses, scalars), *constexprs.values(), num_warps, device)
        direct = self._compiled.get(key)
        if direct is None:
            _check_types(pointers, scalars)
            # The direct launch passes the constexprs positionally, after the runtime arguments.
            if list(constexprs) != self._constexpr_names:
                raise ValueError(f"constexprs must be {self._constexpr_names}, in that order; got {list(constexprs)}")
        return key, direct, addresses, scalars

    def _addresses(self, pointers: tuple, scalars: tuple) -> list:
        try:
            addresses = [t.data_ptr() for t in pointers]
            on_gpu = all([t.is_cuda for t in pointers])
        except AttributeError:  # not a tensor: _check_types names it
            _check_types(pointers, scalars)
            raise
        if not on_gpu:
            # Triton's C launcher, given tensors, refused these; given addresses, it would pass a
            # host address to the GPU.
            names = [p.name for p in self._kernel.params if not p.is_constexpr]
            where = [f"{name} on {t.device}" for name, t in zip(names, pointers) if not t.is_cuda]
            raise ValueError(f"{self._kernel.fn.__name__} takes CUDA tensors, got {', '.join(where)}")
        return addresses


@functools.lru_cache(maxsize=None)
def sm_count(device: int) -> int:
    """The SMs of CUDA device `device` (an index)."""
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
