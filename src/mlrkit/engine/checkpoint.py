"""Checkpoints: trainable parts + optimizer/scheduler/loss state + progress, written atomically.

Modules marked frozen (attribute ``frozen = True``, e.g. a frozen CLIP encoder) are left out:
they are rebuilt from their own weights, so checkpoints stay small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlrkit.errors import MlrkitError
from mlrkit.utils import atomic_write


def frozen_prefixes(model: nn.Module) -> list[str]:
    return [name + "." for name, m in model.named_modules() if name and getattr(m, "frozen", False)]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without frozen submodules."""
    skip = frozen_prefixes(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not any(k.startswith(p) for p in skip)}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    skip = frozen_prefixes(model)
    missing = [k for k in missing if not any(k.startswith(p) for p in skip)]
    if missing or unexpected:
        raise MlrkitError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MlrkitError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise MlrkitError(f"cannot read checkpoint {path}: {e}") from None
