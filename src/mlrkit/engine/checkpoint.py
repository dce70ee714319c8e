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
from mlrkit.utils import load_torch_file, save_torch_file


def frozen_prefixes(model: nn.Module) -> list[str]:
    return [name + "." for name, m in model.named_modules() if name and getattr(m, "frozen", False)]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without frozen submodules."""
    skip = frozen_prefixes(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not any(k.startswith(p) for p in skip)}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
    """Load ``state`` into ``model`` (frozen parts excepted); a key or shape mismatch is a clear MlrkitError."""
    if not isinstance(state, dict):
        raise MlrkitError(f"{source}: the model state is not a mapping of tensors")
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and torch.is_tensor(v) and v.shape != own[k].shape]
    if wrong:
        raise MlrkitError(f"{source} does not fit the run's model: {len(wrong)} tensor(s) of another shape, e.g. "
                          f"{'; '.join(wrong[:3])} (a checkpoint of another dataset or model?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    skip = frozen_prefixes(model)
    missing = [k for k in missing if not any(k.startswith(p) for p in skip)]
    if missing or unexpected:
        raise MlrkitError(f"{source} does not fit the run's model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically as tensors and plain data (:func:`mlrkit.utils.plain_data`)."""
    save_torch_file(path, payload)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code runs); anything else is a clear error."""
    ck = load_torch_file(path, "checkpoint")
    if not isinstance(ck, dict) or "model" not in ck:
        raise MlrkitError(f"checkpoint {path}: not an mlrkit checkpoint (no 'model' state)")
    return ck
