"""Device and dtype choice, with CUDA/MPS availability faked."""

import pytest
import torch

from gptcli import runtime
from gptcli.errors import UsageError


@pytest.fixture
def fake(monkeypatch):
    def setup(cuda=0, mps=False, bf16=True, cpu_bf16=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(runtime, "_mps_available", lambda: mps)
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: cpu_bf16)

    return setup


def test_auto_prefers_cuda_then_mps_then_cpu(fake):
    fake(cuda=1, mps=True)
    assert runtime.resolve_device("auto").type == "cuda"
    fake(cuda=0, mps=True)
    assert runtime.resolve_device("auto").type == "mps"
    fake(cuda=0, mps=False)
    assert runtime.resolve_device("auto").type == "cpu"


def test_auto_dtype_per_device(fake):
    fake(cuda=1, bf16=True)
    assert runtime.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    fake(cuda=1, bf16=False)
    assert runtime.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert runtime.resolve_dtype("auto", torch.device("mps")) == torch.float16
    fake(cpu_bf16=True)
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    fake(cpu_bf16=False)
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert runtime.resolve_dtype("auto", torch.device("cpu"), purpose="training") == torch.float32
    assert runtime.resolve_dtype("float16", torch.device("cuda")) == torch.float16


def test_absent_devices_are_usage_errors_listing_what_exists(fake):
    fake(cuda=2)
    assert str(runtime.resolve_device("cuda:1")) == "cuda:1"
    with pytest.raises(UsageError, match="cuda:3.*Available: cpu, cuda:0, cuda:1"):
        runtime.resolve_device("cuda:3")
    fake(cuda=0)
    with pytest.raises(UsageError, match="CUDA is not available"):
        runtime.resolve_device("cuda")
    with pytest.raises(UsageError, match="MPS is not available"):
        runtime.resolve_device("mps")


def test_spelling_and_env_defaults(monkeypatch):
    assert runtime.parse_dtype("bf16") == "bfloat16"
    with pytest.raises(UsageError):
        runtime.parse_device("gpu")
    monkeypatch.setenv("GPTCLI_DEVICE", "cpu")
    monkeypatch.setenv("GPTCLI_DTYPE", "fp32")
    rt = runtime.resolve_runtime()
    assert rt.device.type == "cpu" and rt.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_on_cuda(cli, gpt2_dir):
    r = cli("generate", "hi", "-m", gpt2_dir, "--device", "cuda", "-t", 5, "--json", "--seed", 1)
    assert r.exit_code == 0, r.stderr


def test_small_models_get_float32_and_one_thread_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    auto = runtime.Runtime(torch.device("cpu"), torch.bfloat16, dtype_auto=True, threads_auto=True)
    small = runtime.fit_to_model(auto, 4_000_000)
    assert small.dtype == torch.float32 and calls == [1]
    assert runtime.fit_to_model(auto, 124_000_000).dtype == torch.bfloat16
    chosen = runtime.Runtime(torch.device("cpu"), torch.bfloat16, dtype_auto=False, threads_auto=False)
    calls.clear()
    assert runtime.fit_to_model(chosen, 4_000_000).dtype == torch.bfloat16 and calls == []
