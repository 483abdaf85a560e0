"""The CUDA extension's build: failures are reported with the compiler log; "auto" falls back to Triton."""

import warnings

import pytest
import torch

import rmsnorm
from rmsnorm import cuda_ext, functional
from tests.conftest import ON_GPU


def test_failed_build_names_the_compiler_log(tmp_path, monkeypatch):
    """A source that does not compile: the error says where the log is, and the log has the compiler's words.

    The broken source is C++ alone, so the attempt needs a host compiler and ninja, not nvcc or a GPU.
    """
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "bindings.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(cuda_ext, "_SOURCE_DIRS", (sources,))
    with pytest.raises(RuntimeError, match="building the rmsnorm CUDA extension failed; the compiler log is at") as error:
        cuda_ext.build(tmp_path / "cache", arch_list="9.0")
    log = str(error.value).split("the compiler log is at ")[1].split(". Last lines")[0]
    assert "error" in open(log).read().lower()
    # A second attempt builds again (no build.ok marker was left), and fails the same way.
    with pytest.raises(RuntimeError, match="the compiler log is at"):
        cuda_ext.build(tmp_path / "cache", arch_list="9.0")


def test_extension_name_follows_the_sources(tmp_path, monkeypatch):
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "bindings.cpp").write_text("// one\n")
    monkeypatch.setattr(cuda_ext, "_SOURCE_DIRS", (sources,))
    first = cuda_ext.extension_name("9.0")
    assert first == cuda_ext.extension_name("9.0")
    assert first != cuda_ext.extension_name("8.0")
    (sources / "kernel.cu").write_text("// two\n")
    assert first != cuda_ext.extension_name("9.0")


@pytest.mark.skipif(not ON_GPU, reason="auto picks between GPU backends only for CUDA tensors")
def test_auto_falls_back_to_triton_with_one_warning(monkeypatch, caplog):
    def failing_load():
        raise RuntimeError("building the rmsnorm CUDA extension failed; the compiler log is at /nowhere")

    monkeypatch.setattr(cuda_ext, "load", failing_load)
    monkeypatch.setattr(functional, "_warned_cuda_fallback", False)
    monkeypatch.delenv("RMSNORM_BACKEND", raising=False)
    x = torch.randn(4, 64, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = rmsnorm.rms_norm(x)
        second = rmsnorm.rms_norm(x)
    messages = [str(w.message) for w in caught if "cuda backend is unavailable" in str(w.message)]
    assert len(messages) == 1 and "/nowhere" in messages[0]
    assert torch.equal(first, rmsnorm.rms_norm(x, backend="triton")) and torch.equal(first, second)
    with pytest.raises(RuntimeError, match="compiler log is at /nowhere"):
        rmsnorm.rms_norm(x, backend="cuda")
