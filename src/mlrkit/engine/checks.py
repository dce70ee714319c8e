"""Checks of a run configuration before anything is set up or trained (no silent nonsense).

* :data:`RANGES`: every numeric setting of the ``seed``/``data``/``labels``/``train`` sections with
  its allowed interval; NaN and infinities are refused everywhere. (Typed config sections may check
  some of these at load time too; these checks make the Trainer independent of where a config came
  from: a recipe, ``--set``, a library call.)
* :func:`check_training_plan`: ``train.epochs: 0`` only for a method that trains nothing, a loss that
  needs pseudo-labels only with a method that makes them.
* :func:`check_observed`: an observation that leaves no known label to learn from is an error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlrkit.errors import ConfigError

# dotted key -> (low, high, low is exclusive, high is exclusive); None: unbounded
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "seed": (0, None, False, False),
    "labels.seed": (0, None, False, False),
    "data.split_seed": (0, None, False, False),
    "data.val_fraction": (0, 1, True, True),
    "data.image_size": (1, None, False, False),
    "data.limit_train": (1, None, False, False),
    "data.expected_num_pos": (0, None, True, False),
    "train.epochs": (0, None, False, False),
    "train.batch_size": (1, None, False, False),
    "train.lr": (0, None, True, False),
    "train.momentum": (0, 1, False, False),
    "train.weight_decay": (0, None, False, False),
    "train.warmup_epochs": (0, None, False, False),
    "train.warmup_lr": (0, None, True, False),
    "train.pct_start": (0, 1, True, True),
    "train.schedule_epochs": (1, None, False, False),
    "train.classifier_lr_mult": (0, None, True, False),
    "train.num_workers": (0, None, False, False),
    "train.threads": (0, None, False, False),
    "train.checkpoint_every_s": (0, None, False, False),
    "train.ema": (0, 1, False, True),
    "train.grad_clip": (0, None, False, False),
}


def _get(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def check_range(key: str, value: Any, low: float | None, high: float | None, low_open: bool = False,
                high_open: bool = False) -> None:
    """``value`` (a number, or None = unset) in the interval; a :class:`ConfigError` naming ``key`` if not."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(float(value)):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        raise ConfigError(f"{key} must be {describe_range(low, high, low_open, high_open)}, got {value!r}")


def describe_range(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``..."""
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_settings(cfg: Any) -> None:
    """Every numeric setting in range (:data:`RANGES`); device names are checked by
    :func:`mlrkit.engine.devices.resolve_device`."""
    for key, (low, high, lo_open, hi_open) in RANGES.items():
        check_range(key, _get(cfg, key), low, high, lo_open, hi_open)


def check_training_plan(cfg: Any) -> None:
    """``train.epochs`` and the loss fit the method: an untrained model is never scored as if trained,
    and a loss that needs pseudo-labels gets a method that makes them."""
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss
    from mlrkit.losses import LOSSES
    from mlrkit.methods import METHODS
    from mlrkit.methods.base import method_class

    method = method_class(cfg.method.name)
    trains = getattr(method, "trains", True)
    if cfg.train.epochs == 0 and trains:
        raise ConfigError(f"train.epochs=0 would score method {cfg.method.name!r} untrained; give --epochs >= 1 "
                          "(only methods that train nothing, e.g. zeroshot, run with 0 epochs)")
    if cfg.train.epochs != 0 and not trains:
        raise ConfigError(f"method {cfg.method.name!r} trains nothing: it runs with epochs 0 (drop --epochs)")
    loss = LOSSES.get(cfg.loss.name)
    if getattr(loss, "needs_pseudo_labels", False) and not getattr(method, "makes_pseudo_labels", False):
        makers = sorted(e.name for e in METHODS.list() if getattr(METHODS.get(e.name), "makes_pseudo_labels", False))
        raise ConfigError(f"loss {cfg.loss.name!r} trains on pseudo-labels, which method {cfg.method.name!r} does not "
                          f"make (it would train on all-zero pseudo-labels); use it with {', '.join(makers)}")


def check_observed(observed: np.ndarray, protocol: str, trains: bool) -> None:
    """A training observation with no known label at all leaves nothing to learn: an error."""
    if trains and observed.size and not np.any(observed != 0):
        raise ConfigError(f"labels {protocol!r} observe no label of the {observed.shape[0]} training images: "
                          "nothing to learn from (raise the known fraction)")
