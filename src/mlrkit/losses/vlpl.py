r"""VLPL loss (Xing et al., "Vision-Language Pseudo-Labels for Single-Positive Multi-Label
Learning", CVPR-W 2024, eq. 4 and 6).

With :math:`p=\sigma(x)`, observed label :math:`y`, pseudo-label :math:`\hat y` (from
:mod:`mlrkit.vl.pseudo_labels`, held as state keyed by dataset row ``index``), smoothing
:math:`\rho` and :math:`H(p)=-p\log p-(1-p)\log(1-p)`:

.. math::
    \ell = \begin{cases}
      -\log p & y=+1 \\
      -\log(1-p) & y=-1 \\
      -\beta\,[(1-\rho)\log p + \rho\log(1-p)] & y=0,\ \hat y=+1 \quad\text{(eq. 6)}\\
      -\beta_{-}\,[\rho\log p + (1-\rho)\log(1-p)] & y=0,\ \hat y=-1 \quad\text{(eq. 4, only when } \delta>0)\\
      -\alpha\,H(p) & y=0,\ \hat y=0 \quad\text{(entropy maximisation, EM)}
    \end{cases}

Before ``warmup_epochs`` the loss is plain EM. Defaults as the authors' code: α = 0.1
(VOC 0.2, CUB 0.01 in their recipes), β = 0.7, ρ = 0.1; β₋ defaults to β.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlrkit.errors import ConfigError
from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p
from mlrkit.losses.regularized import ResizableStateMixin
from mlrkit.losses.robust import binary_entropy


@LOSSES.register("vlpl", "EM + label-smoothed VL pseudo-positives (+ pseudo-negatives) (Xing et al. 2024)")
class VLPLLoss(ResizableStateMixin, MultiLabelLoss):
    stateful = True
    _state_names = ("pseudo",)
    needs_pseudo_labels = True

    def __init__(self, alpha: float = 0.1, beta: float = 0.7, rho: float = 0.1, beta_neg: float | None = None,
                 warmup_epochs: int = 0) -> None:
        super().__init__()
        if not 0 <= rho < 0.5:
            raise ConfigError(f"vlpl: rho must be in [0, 0.5), got {rho}")
        self.alpha, self.beta, self.rho = float(alpha), float(beta), float(rho)
        self.beta_neg = self.beta if beta_neg is None else float(beta_neg)
        self.warmup_epochs = int(warmup_epochs)
        self.register_buffer("pseudo", torch.zeros(0, 0, dtype=torch.int8))

    def set_pseudo_labels(self, pseudo: Tensor) -> None:
        """Pseudo-labels of the training split [N, C] in {+1, 0, −1}, row i = dataset index i."""
        p = torch.as_tensor(pseudo).to(torch.int8)
        if p.ndim != 2 or (p.numel() and (p.min() < -1 or p.max() > 1)):
            raise ValueError("pseudo-labels must be [N, C] in {-1, 0, +1}")
        self.pseudo = p.to(self.pseudo.device) if self.pseudo.numel() else p

    def prepare(self, observed: Tensor) -> None:
        if self.pseudo.shape != observed.shape:
            self.pseudo = torch.zeros_like(observed, dtype=torch.int8)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        assert index is not None
        if self.pseudo.shape[1:] != logits.shape[1:] or len(self.pseudo) == 0:
            raise ValueError("vlpl: no pseudo-labels set (method `vlpl` sets them; or call set_pseudo_labels)")
        lp, l1p = log_p(logits), log_1mp(logits)
        unknown = observed == 0
        pl = self.pseudo.to(logits.device)[index] if epoch >= self.warmup_epochs else torch.zeros_like(observed)
        em = -self.alpha * binary_entropy(logits, lp, l1p)
        m = torch.where(observed == 1, -lp, torch.where(observed == -1, -l1p, em))
        pos = unknown & (pl == 1)
        neg = unknown & (pl == -1)
        rho = self.rho
        m = torch.where(pos, -self.beta * ((1 - rho) * lp + rho * l1p), m)
        m = torch.where(neg, -self.beta_neg * (rho * lp + (1 - rho) * l1p), m)
        return m, None
