"""Device and precision choice, kept as parameters so GPU paths stay testable on CPU."""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError

_AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:i``; unusable ones raise ConfigError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def amp_context(device: torch.device, amp: str | None):
    """Autocast for ``amp`` in {None, 'fp16', 'bf16'}; fp16 only on CUDA (CPU has no fast fp16)."""
    if amp is None or amp == "none":
        return contextlib.nullcontext()
    if amp not in _AMP:
        raise ConfigError(f"unknown precision {amp!r}; use none, fp16 or bf16")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast needs a CUDA device; use bf16 or none on CPU")
    return torch.autocast(device_type=device.type, dtype=_AMP[amp])


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device):
    """cuDNN's deterministic kernels (no autotuning) while decoding on CUDA; CPU kernels already are.

    Autotuned or non-deterministic algorithms may round differently from run to run, which
    would break "same config + seed = same bytes". The previous settings are restored.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """torch at one intra-op thread on CPU (the count is process-wide), restored after.

    A multi-threaded CPU kernel may split a reduction by thread count, so results
    that must not depend on the machine's cores are computed single-threaded.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
