"""Losses of Cole et al. (2021) that need no state: full-label BCE and assume-negative (AN)."""

from __future__ import annotations

import torch
from torch import Tensor

from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p


@LOSSES.register("bce", "binary cross-entropy on known entries only (full-label BCE under `full`)")
class BCELoss(MultiLabelLoss):
    r"""BCE on the known entries, unknown entries contribute 0.

    .. math:: \ell_{ic} = -[y_{ic}=1]\log p_{ic} - [y_{ic}=-1]\log(1-p_{ic})

    With the ``full`` protocol this is the fully supervised BCE of Cole et al. eq. (1).
    """

    entrywise = True

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        pos = observed == 1
        neg = observed == -1
        zero = torch.zeros_like(logits)
        m = torch.where(pos, -log_p(logits), zero) + torch.where(neg, -log_1mp(logits), zero)
        return m, None


@LOSSES.register("an", "assume negative: unknown entries treated as negatives (Cole et al. 2021)")
class AssumeNegativeLoss(MultiLabelLoss):
    r"""AN: every entry that is not a known positive is a negative (Cole et al. eq. 3).

    .. math:: \ell_{ic} = -[y_{ic}=1]\log p_{ic} - [y_{ic}\neq 1]\log(1-p_{ic})
    """

    entrywise = True

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        m = torch.where(observed == 1, -log_p(logits), -log_1mp(logits))
        return m, None
