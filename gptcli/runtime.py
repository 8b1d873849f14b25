"""The device-aware runtime every command shares: device, dtype, threads and seed.

`check_options` (with `parse_device`/`parse_dtype`/`parse_threads`) only checks spelling and
never imports torch, so bad flags fail (exit 2) before anything heavy loads; every inference
command calls it first. `resolve_runtime` then checks
what the machine really has and picks the fastest safe choice for `auto`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from gptcli.errors import UsageError

# The spellings --device and --dtype accept: their help, error hints and shell completion read these.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # cuda:N: CUDA device number N
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def parse_device(spec: str | None) -> str:
    spec = (spec or os.environ.get("GPTCLI_DEVICE") or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise UsageError(f"unknown device '{spec}'.", hint=f"Use one of: {', '.join(DEVICE_CHOICES)}.")
    return spec


def parse_dtype(spec: str | None) -> str:
    spec = (spec or os.environ.get("GPTCLI_DTYPE") or "auto").strip().lower()
    spec = _DTYPE_ALIASES.get(spec, spec)
    if spec not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype '{spec}'.", hint=f"Use one of: {', '.join(DTYPE_CHOICES)}.")
    return spec


def parse_threads(threads: int | None) -> int | None:
    """--threads, else GPTCLI_THREADS (ignored unless a whole number); None when neither is given."""
    if threads is None:
        env = os.environ.get("GPTCLI_THREADS")
        threads = int(env) if env and env.isdigit() else None
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1.")
    return threads


def check_options(device: str | None, dtype: str | None, threads: int | None) -> None:
    """Check --device, --dtype and --threads (and their GPTCLI_* variables) before anything loads."""
    parse_device(device), parse_dtype(dtype), parse_threads(threads)


@dataclass(frozen=True)
class Runtime:
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    dtype_auto: bool = False  # the user left --dtype on auto: the model's size may still refine it
    threads_auto: bool = False  # the user gave no --threads / GPTCLI_THREADS
    warning: str | None = None  # advice on the choice (slow dtype); the CLI shows it, the core never prints

    @property
    def device_type(self) -> str:
        return self.device.type

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).replace('torch.', '')}"


def available_devices() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX).

    Decoding is memory-bound, so half-size bfloat16 weights decode faster than
    float32 there. Without the instructions bfloat16 is emulated and slower, so we keep float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(spec: str) -> Any:
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device '{spec}' was requested but CUDA is not available.",
                hint=f"Available: {', '.join(available_devices())}.",
            )
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device '{spec}' does not exist.",
                hint=f"Available: {', '.join(available_devices())}.",
            )
        return torch.device(spec)
    if spec == "mps" and not _mps_available():
        raise UsageError(
            "device 'mps' was requested but MPS is not available.",
            hint=f"Available: {', '.join(available_devices())}.",
        )
    return torch.device(spec)


def dtype_warning(dtype: Any, device: Any) -> str | None:
    """What to tell the user about running `dtype` on `device`, if anything."""
    import torch

    if dtype == torch.float16 and device.type == "cpu":
        # fp16 matmuls on CPU are emulated and slow, but they work; say so.
        return "float16 on CPU is slow; bfloat16 or float32 are faster here."
    return None


def resolve_dtype(spec: str, device: Any, purpose: str = "inference") -> Any:
    """Pick the dtype. `purpose` is "inference" or "training" (training keeps fp32 weights).

    Prints nothing: `dtype_warning` says what to tell the user, `resolve_runtime` keeps it."""
    import torch

    if spec != "auto":
        return getattr(torch, spec)
    if purpose == "training":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def set_threads(threads: int | None) -> bool:
    """Apply --threads / GPTCLI_THREADS. Returns False when neither was given."""
    threads = parse_threads(threads)
    if threads is None:
        return False
    import torch

    torch.set_num_threads(threads)
    return True


# Models below this size run faster on CPU in float32 on one thread: small matrices gain
# nothing from half-size weights and lose to thread hand-offs (worst when other cores are busy).
SMALL_MODEL_PARAMS = 20_000_000


@lru_cache(maxsize=1)
def _default_threads() -> int:
    """PyTorch's own thread count, read once before we change it."""
    import torch

    return torch.get_num_threads()


def fit_to_model(runtime: Runtime, n_params: int) -> Runtime:
    """Refine automatic CPU choices once the model's size is known (before its weights load).

    Threads are set for every model, not only small ones, so a process that loads several
    models (eval comparing them) gives each the count that suits it.
    """
    if runtime.device.type != "cpu" or n_params <= 0:  # 0: size unknown (pickle weights)
        return runtime
    import torch

    small = n_params < SMALL_MODEL_PARAMS
    if runtime.threads_auto:
        torch.set_num_threads(1 if small else _default_threads())
    if not small:
        return runtime
    if runtime.dtype_auto and runtime.dtype != torch.float32:
        return replace(runtime, dtype=torch.float32, warning=dtype_warning(torch.float32, runtime.device))
    return runtime


def resolve_runtime(
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    purpose: str = "inference",
) -> Runtime:
    device_spec, dtype_spec = parse_device(device), parse_dtype(dtype)
    threads_given = set_threads(threads)
    dev = resolve_device(device_spec)
    dtype_ = resolve_dtype(dtype_spec, dev, purpose)
    return Runtime(
        device=dev,
        dtype=dtype_,
        dtype_auto=dtype_spec == "auto",
        threads_auto=not threads_given,
        warning=dtype_warning(dtype_, dev),
    )


def seed_everything(seed: int | None) -> None:
    if seed is None:
        return
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
