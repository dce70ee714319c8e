"""Devices and precision: one place that decides where a command runs and in which precision.

Every command that runs a model takes ``--device`` (like ``train.device``), default ``auto``: the
accelerator when present (:func:`accelerator`), else the CPU. Mixed precision follows the device:
``train.amp`` null (the default) means bf16 autocast on CUDA devices that support bf16 (weights,
optimizer state and gradients stay fp32: autocast only changes the dtype of the operations it
covers) and no autocast on the CPU; ``true`` forces autocast (bf16 where supported, else fp16 with
a gradient scaler); ``false`` turns it off.
"""

from __future__ import annotations

import torch

from mlrkit.errors import MlrkitError


def accelerator() -> str | None:
    """The accelerator's device type when one is usable (``"cuda"``), else None. Tests replace it to
    check, on the CPU, that a command takes the accelerator path."""
    return "cuda" if torch.cuda.is_available() else None


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None) -> the accelerator when present, else the CPU; otherwise ``name`` as given,
    with a clear error when it names a CUDA device this machine does not have."""
    if name in (None, "", "auto"):
        return torch.device(accelerator() or "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise MlrkitError(f"--device / train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MlrkitError(f"device {name!r} but CUDA is not available on this machine (use --device auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MlrkitError(f"device {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = no autocast); see the module docstring."""
    if amp is False:
        return None
    if amp is None:  # auto: on by default where the accelerator computes bf16 natively
        return torch.bfloat16 if device.type == "cuda" and bf16_supported(device) else None
    return torch.bfloat16 if bf16_supported(device) else torch.float16


def wants_channels_last(model: torch.nn.Module, device: torch.device) -> bool:
    """Conv nets on CUDA run faster in channels-last memory layout (tensor cores read NHWC)."""
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
