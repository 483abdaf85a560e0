"""casting_mode: "fp32" (one rounding, as F.rms_norm and Hugging Face's Gemma) and "llama" (x * rstd
rounded to x's dtype before the weight, as Hugging Face's Llama), on every backend, forward and
backward, against the float64 reference and against Hugging Face's formulas written out."""

import pytest
import torch

import rmsnorm
from tests.conftest import DEVICE, ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import check_rms_norm, ulp

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# A register tile, a forward split row (> 32K) and a backward split row (> 8K); odd widths for tails.
WIDTHS = (64, 1000, 4097, 12288, 65537) if ON_GPU else (64, 1000, 12288, 32769)
ROWS = 37 if ON_GPU else 3


def hf_llama(x, weight, eps):
    """transformers' LlamaRMSNorm.forward."""
    input_dtype = x.dtype
    hidden_states = x.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def hf_gemma(x, weight, eps):
    """transformers' GemmaRMSNorm.forward (weight zero-initialised, scaled as 1 + weight)."""
    output = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return (output * (1.0 + weight.float())).type_as(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", WIDTHS)
def test_llama_casting_against_float64(backend, n, dtype):
    x = randn(ROWS, n, dtype=dtype)
    check_rms_norm(backend, x, (n,), random_weight(n, dtype), 1e-6, casting_mode="llama")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_llama_casting_add_rms_norm_and_offset(backend, dtype):
    n = 4097 if ON_GPU else 257
    x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=dtype, scale=4.0)
    weight = random_weight(n, dtype, mean=0.0)
    check_rms_norm(backend, x, (n,), weight, 1e-5, residual=residual, weight_offset=1.0, casting_mode="llama")


def test_llama_casting_without_weight_is_fp32_casting(backend):
    """Without a weight, rounding xhat and then rounding it again is rounding it once."""
    x = randn(ROWS, 300, dtype=torch.bfloat16)
    fp32 = rmsnorm.rms_norm(x, backend=backend)
    assert torch.equal(rmsnorm.rms_norm(x, casting_mode="llama", backend=backend), fp32)


@pytest.mark.parametrize(
    "formula, casting_mode, weight_offset, weight_mean",
    [(hf_llama, "llama", 0.0, 1.0), (hf_gemma, "fp32", 1.0, 0.0)],
    ids=["llama", "gemma"],
)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_matches_hugging_face(backend, formula, casting_mode, weight_offset, weight_mean, dtype):
    """Elements within one ulp of Hugging Face's output (a rare Llama rounding flip aside), most bitwise, no bias.

    The sum of squares and rsqrt are computed in another order than PyTorch's, so exact equality
    everywhere is not the bar; the share of elements that differ is printed and must stay small, and
    their mean signed difference must be near zero (a systematic one-ulp bias is a wrong formula).
    """
    if backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter truncates fp32 to bf16 where the GPU rounds to nearest, as PyTorch does")
    n = 4096
    x = randn(64 if ON_GPU else 8, n, dtype=dtype, scale=3.0)
    weight = random_weight(n, dtype, mean=weight_mean)
    eps = 1e-6
    ours = rmsnorm.rms_norm(x, None, weight, eps, weight_offset=weight_offset, casting_mode=casting_mode,
                            backend=backend).double()  # fmt: skip
    theirs = formula(x, weight, eps).double()
    one_ulp = ulp(theirs, dtype)
    diff = ours - theirs
    # Llama rounds xhat before the weight: where our xhat and theirs straddle a rounding boundary
    # (rsqrt against 1 / sqrt, another summation order), the outputs differ by |w| ulps of xhat, up
    # to 2 ulps of y for |w| < 2. Those must be rare; every other element is within one ulp.
    allowed = one_ulp
    if casting_mode == "llama":
        x64 = x.double()
        xhat_ulp = ulp(x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps), dtype)
        # the flip, plus both sides rounding the product to nearest: up to half an ulp each
        allowed = torch.maximum(one_ulp, (weight.double() + weight_offset).abs() * xhat_ulp + one_ulp)
    assert (diff.abs() <= allowed).all(), f"worst {(diff.abs() / one_ulp).max().item():.2f} ulp"
    beyond_one_ulp = (diff.abs() > one_ulp).double().mean().item()
    assert beyond_one_ulp < 1e-3, f"{100 * beyond_one_ulp:.3f}% of elements more than one ulp away"
    differ = (diff != 0).double().mean().item()
    bias = (diff / one_ulp).mean().item()
    print(f"{backend} {formula.__name__} {dtype}: {100 * differ:.2f}% of elements not bitwise equal, mean {bias:+.4f} ulp")
    assert differ < 0.05
    assert abs(bias) < 0.01


def test_llama_casting_differs_from_fp32_where_it_should(backend):
    """The modes are not the same function: with a weight, bf16 outputs differ somewhere (test can fail)."""
    x = randn(16, 1024, dtype=torch.bfloat16)
    weight = random_weight(1024, torch.bfloat16)
    fp32 = rmsnorm.rms_norm(x, None, weight, backend=backend)
    llama = rmsnorm.rms_norm(x, None, weight, casting_mode="llama", backend=backend)
    assert not torch.equal(fp32, llama)


@pytest.mark.parametrize("bad", ["llama ", "LLAMA", "bf16", None, 1])
def test_unknown_casting_mode(backend, bad):
    x = randn(2, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="casting_mode must be one of 'fp32', 'llama'"):
        rmsnorm.rms_norm(x, casting_mode=bad, backend=backend)
    with pytest.raises(ValueError, match="casting_mode must be one of"):
        rmsnorm.add_rms_norm(x, x, casting_mode=bad, backend=backend)
