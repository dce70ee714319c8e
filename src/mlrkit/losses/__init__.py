"""Losses for missing labels behind one contract: ``mlrkit.losses.build(name, **hparams)``."""

from mlrkit.losses.base import LOSSES, MultiLabelLoss, build, check_inputs, log_1mp, log_p, probabilities

__all__ = ["LOSSES", "MultiLabelLoss", "build", "check_inputs", "log_1mp", "log_p", "probabilities"]
