"""rmsnorm.RMSNorm as a drop-in torch.nn.RMSNorm, and patch() on a model with both kinds of RMSNorm."""

import pytest
import torch

import rmsnorm
from tests.conftest import DEVICE
from tests.numerics import check_rms_norm


class LlamaRMSNorm(torch.nn.Module):
    """Hugging Face's LlamaRMSNorm, written out."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class GemmaRMSNorm(torch.nn.Module):
    """Hugging Face's GemmaRMSNorm, written out: (1 + weight), zero-initialised."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        output = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (output * (1.0 + self.weight.float())).type_as(x)


class NotANorm(torch.nn.Module):
    """Has a weight and an eps, but computes something else: must be left alone."""

    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = 1e-6

    def forward(self, x):
        return x * self.weight


class TinyModel(torch.nn.Module):
    def __init__(self, d, dtype):
        super().__init__()
        self.torch_norm = torch.nn.RMSNorm(d, eps=1e-5, dtype=dtype)
        self.llama_norm = LlamaRMSNorm(d).to(dtype)
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(d, d, dtype=dtype), GemmaRMSNorm(d).to(dtype))])
        self.other = NotANorm(d).to(dtype)

    def forward(self, x):
        return self.other(self.blocks[0](self.llama_norm(self.torch_norm(x))))


def test_is_a_torch_rmsnorm(backend):
    norm = rmsnorm.RMSNorm(64, eps=1e-5, device=DEVICE, backend=backend)
    assert isinstance(norm, torch.nn.RMSNorm)
    assert norm.normalized_shape == (64,) and norm.eps == 1e-5 and norm.weight.shape == (64,)
    assert torch.equal(norm.weight, torch.ones(64, device=DEVICE))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_forward_backward_matches_reference(backend, dtype):
    norm = rmsnorm.RMSNorm((4, 32), device=DEVICE, dtype=dtype, backend=backend)
    with torch.no_grad():
        norm.weight.add_(0.5 * torch.randn_like(norm.weight))
    x = torch.randn(3, 7, 4, 32, device=DEVICE).to(dtype)
    check_rms_norm(backend, x, (4, 32), norm.weight, None)
    y = norm(x)
    assert torch.equal(y, rmsnorm.rms_norm(x, (4, 32), norm.weight, backend=backend))


def test_state_dict_round_trip():
    theirs = torch.nn.RMSNorm(48, eps=1e-6, device=DEVICE)
    with torch.no_grad():
        theirs.weight.normal_()
    ours = rmsnorm.RMSNorm(48, eps=1e-6, device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.weight, theirs.weight)
    back = torch.nn.RMSNorm(48, eps=1e-6, device=DEVICE)
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back.weight, theirs.weight)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_gemma_offset_initialises_to_unit_scale(backend):
    norm = rmsnorm.RMSNorm(32, weight_offset=1.0, device=DEVICE, backend=backend)
    assert torch.equal(norm.weight, torch.zeros(32, device=DEVICE))
    x = torch.randn(5, 32, device=DEVICE)
    torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (32,)), rtol=1e-6, atol=1e-6)


def test_no_affine(backend):
    norm = rmsnorm.RMSNorm(32, elementwise_affine=False, device=DEVICE, backend=backend)
    assert norm.weight is None
    x = torch.randn(5, 32, device=DEVICE)
    torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (32,)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_patch_swaps_every_rmsnorm_and_keeps_weights(backend, dtype):
    model = TinyModel(64, dtype).to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weights = {name: p for name, p in model.named_parameters()}
    x = torch.randn(6, 64, device=DEVICE).to(dtype)
    before = model(x)
    assert rmsnorm.patch(model, backend=backend) == 3
    assert isinstance(model.torch_norm, rmsnorm.RMSNorm) and isinstance(model.llama_norm, rmsnorm.RMSNorm)
    assert isinstance(model.blocks[0][1], rmsnorm.RMSNorm) and model.blocks[0][1].weight_offset == 1.0
    # Llama rounds xhat before the weight (found by a 16-bit probe, even for an fp32 model); Gemma does not.
    assert model.llama_norm.casting_mode == "llama" and model.llama_norm.weight_offset == 0.0
    assert model.blocks[0][1].casting_mode == "fp32" and model.torch_norm.casting_mode == "fp32"
    assert isinstance(model.other, NotANorm)
    assert model.llama_norm.eps == 1e-6 and model.torch_norm.eps == 1e-5
    for name, p in model.named_parameters():
        assert p is weights[name], f"{name} was not kept"
    after = model(x)
    # Three norms and a Linear in a row, each free to round differently from the original: a sum
    # taken in another order (fp32), one rounding fewer than Llama's (bf16).
    tolerance = 1e-5 if dtype == torch.float32 else 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(after, before, rtol=tolerance, atol=tolerance)
    assert rmsnorm.patch(model, backend=backend) == 0  # already ours
