"""Checks of a run configuration before anything is set up or trained (no silent nonsense).

(Numeric ranges are the config schema's: :func:`mlrkit.schema.setting`; command-line options have
theirs in :data:`mlrkit.cli.common.OPTION_RANGES`.)

* :func:`check_training_plan`: ``train.epochs: 0`` only for a method that trains nothing, a loss that
  needs pseudo-labels only with a method that makes them.
* :func:`check_observed`: an observation that leaves no known label to learn from is an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlrkit.errors import ConfigError


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
