"""The model-facing side: RMSNorm, a drop-in torch.nn.RMSNorm, and patch(), which swaps ours into a model."""

from __future__ import annotations

import numbers

import torch

from .functional import rms_norm

# Swap candidates are probed on this many rows: enough to see a systematic difference.
_PROBE_ROWS = 8
# A candidate must match the module's output within a few ulps of the output dtype (rsqrt against
# 1 / sqrt, summation order); any real difference in the formula is far larger. Among those that
# do, the one with the most bitwise-equal elements wins: Llama-style modules round xhat to the input
# dtype before the weight, which only casting_mode "llama" reproduces bit for bit.
_PROBE_ULPS = 4
# (casting_mode, weight_offset) candidates, in order of preference on a tie: torch.nn.RMSNorm's and
# Gemma's one rounding, then Llama's two; Gemma's 1 + weight.
_PROBE_CANDIDATES = (("fp32", 0.0), ("llama", 0.0), ("fp32", 1.0), ("llama", 1.0))


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm computed by rmsnorm's kernels: same constructor, parameters and state_dict.

    Keyword-only extras: weight_offset, added to the weight (y = xhat * (weight + weight_offset);
    the weight then starts at 1 - weight_offset, so that the scale starts at one, as Gemma's
    zero-initialised weight with offset 1.0), casting_mode and backend (as in rms_norm).
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
        *,
        weight_offset: float = 0.0,
        casting_mode: str = "fp32",
        backend: str = "auto",
    ) -> None:
        self.weight_offset = float(weight_offset)  # read by reset_parameters, which __init__ calls
        self.casting_mode = casting_mode
        self.backend = backend
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            torch.nn.init.constant_(self.weight, 1.0 - self.weight_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(
            x,
            self.normalized_shape,
            self.weight,
            self.eps,
            weight_offset=self.weight_offset,
            casting_mode=self.casting_mode,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, weight_offset={self.weight_offset}, casting_mode={self.casting_mode!r}, "
            f"backend={self.backend!r}"
        )


def _hf_style_eps(module: torch.nn.Module) -> float | None:
    """eps of a module that looks like a Hugging Face RMSNorm (a 1-D weight and variance_epsilon or eps)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1 or weight.device.type == "meta":
        return None
    for name in ("variance_epsilon", "eps"):
        eps = getattr(module, name, None)
        if isinstance(eps, numbers.Real) and not isinstance(eps, bool):
            return float(eps)
    return None


def _matching_mode(module: torch.nn.Module, eps: float) -> tuple[str, float] | None:
    """The (casting_mode, weight_offset) with which ours computes what module computes, if any.

    Probed in a 16-bit dtype whatever the weight's, where the casting modes differ: a model patched
    in fp32 and cast to bf16 later keeps the right mode. The probe asks which formula the module
    computes, so it runs the reference, whose rsqrt and summation are PyTorch's: the module's own
    formula gives the same bits, and no backend's rounding (or Triton's interpreter's) blurs it.
    """
    weight = module.weight
    probe_dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    x = torch.randn(_PROBE_ROWS, weight.shape[0], device=weight.device).to(probe_dtype)
    with torch.no_grad():
        try:
            expected = module(x)
        except Exception:  # not a module that takes one tensor: not an RMSNorm
            return None
        if not isinstance(expected, torch.Tensor) or expected.shape != x.shape or not expected.is_floating_point():
            return None
        # Llama's `weight * xhat.to(input_dtype)` comes out in the weight's dtype when that is wider.
        expected = expected.to(probe_dtype)
        tolerance = _PROBE_ULPS * torch.finfo(probe_dtype).eps * expected.float().abs().clamp_min(1.0)
        best = None
        for mode, offset in _PROBE_CANDIDATES:
            ours = rms_norm(x, (weight.shape[0],), weight, eps, weight_offset=offset, casting_mode=mode, backend="torch")
            if ((ours.float() - expected.float()).abs() <= tolerance).all():
                equal = int((ours == expected).sum())
                if best is None or equal > best[0]:
                    best = (equal, mode, offset)
    return None if best is None else best[1:]


def _replacement(module: torch.nn.Module, backend: str) -> RMSNorm | None:
    """Our RMSNorm computing what module computes, sharing its weight Parameter; None to keep it."""
    if isinstance(module, RMSNorm):
        return None
    if isinstance(module, torch.nn.RMSNorm):
        shape, eps, affine = module.normalized_shape, module.eps, module.elementwise_affine
        mode, offset = "fp32", 0.0
    else:
        eps = _hf_style_eps(module)
        if eps is None:
            return None
        matched = _matching_mode(module, eps)
        if matched is None:
            return None
        (mode, offset), shape, affine = matched, tuple(module.weight.shape), True
    replacement = RMSNorm(shape, eps, affine, device="meta", weight_offset=offset, casting_mode=mode, backend=backend)
    if affine:
        replacement.weight = module.weight  # the same Parameter: optimizers and tied weights keep working
    return replacement.train(module.training)


def patch(model: torch.nn.Module, *, backend: str = "auto") -> int:
    """Swap, in place, every RMSNorm in model for ours; returns how many were swapped.

    Swapped: every torch.nn.RMSNorm, and every module that looks like a Hugging Face RMSNorm (a
    1-D weight Parameter and a variance_epsilon or eps attribute) and whose output on a random
    probe matches ours to rounding, with weight_offset 0 or 1 (Gemma's 1 + weight) and the
    casting_mode that reproduces it best ("llama" for Llama-style modules, which round xhat to the
    input dtype before the weight).
    The weights are kept (the same Parameter objects). The model's root module itself is not
    replaced; wrap it if it is an RMSNorm.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = _replacement(child, backend)
            if replacement is not None:
                setattr(parent, name, replacement)
                swapped += 1
    return swapped
