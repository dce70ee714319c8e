r"""Losses that treat unknown labels with robust, re-weighted or entropy-based terms.

Notation as in :mod:`mlrkit.losses.regularized`: logit :math:`x`, :math:`p=\sigma(x)`, observed
label :math:`y\in\{+1,0,-1\}`; each loss gives a per-entry matrix :math:`\ell` averaged over the
:math:`B\times C` entries. Every logarithm is computed with ``logsigmoid`` and every power of a
probability as ``exp(gamma * logsigmoid(.))`` (or a masked power), so values and gradients stay
finite for any finite logit.

* ``em``, ``entmin``: Zhou et al., "Acknowledging the unknown for multi-label learning with
  single positive labels", ECCV 2022; entropy minimisation after Grandvalet & Bengio, NeurIPS 2004.
* ``focal``: Lin et al., "Focal loss for dense object detection", ICCV 2017.
* ``asl``: Ridnik et al., "Asymmetric loss for multi-label classification", ICCV 2021.
* ``hill``, ``splc``: Zhang et al., "Simple and robust loss design for multi-label learning with
  missing labels", arXiv 2112.07368, 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlrkit.errors import ConfigError
from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p


# --------------------------------------------------------------------------- helpers
def binary_entropy(logits: Tensor, lp: Tensor | None = None, l1p: Tensor | None = None) -> Tensor:
    r""":math:`H(p) = -p\log p-(1-p)\log(1-p)` from logits, finite with finite gradient everywhere.

    ``lp``/``l1p``: :math:`\log p` and :math:`\log(1-p)` when the caller has them already.
    """
    lp = log_p(logits) if lp is None else lp
    l1p = log_1mp(logits) if l1p is None else l1p
    p = torch.sigmoid(logits)
    return -(p * lp + (1.0 - p) * l1p)


def focal_weight_pos(logits: Tensor, gamma: float) -> Tensor:
    r""":math:`(1-p)^\gamma` computed as :math:`\exp(\gamma\log\sigma(-x))`."""
    if gamma == 0:
        return torch.ones_like(logits)
    return torch.exp(gamma * log_1mp(logits))


def focal_weight_neg(logits: Tensor, gamma: float) -> Tensor:
    r""":math:`p^\gamma` computed as :math:`\exp(\gamma\log\sigma(x))`."""
    if gamma == 0:
        return torch.ones_like(logits)
    return torch.exp(gamma * log_p(logits))


def focal_margin_pos(logits: Tensor, margin: float, gamma: float) -> Tensor:
    r"""Focal-margin positive term :math:`-(1-p_m)^\gamma\log p_m`, :math:`p_m=\sigma(x-m)`."""
    xm = logits - margin
    return -focal_weight_pos(xm, gamma) * log_p(xm)


def focal_neg(logits: Tensor, gamma: float) -> Tensor:
    r"""Focal negative term :math:`-p^\gamma\log(1-p)`."""
    return -focal_weight_neg(logits, gamma) * log_1mp(logits)


def shifted_negative(logits: Tensor, clip: float, gamma: float) -> tuple[Tensor, Tensor]:
    r"""ASL's shifted negative: focusing weight :math:`p_m^\gamma` and :math:`\log(1-p_m)`, :math:`p_m=\max(p-m,0)`.

    :math:`\log(1-p_m)=\log\min(\sigma(-x)+m,1)` is finite for every logit; the power is masked
    where :math:`p_m=0` (no :math:`0^{\gamma-1}` in the gradient). ``clip`` = 0 gives the focal
    negative :math:`p^\gamma`, :math:`\log(1-p)`.
    """
    if clip <= 0:
        return focal_weight_neg(logits, gamma), log_1mp(logits)
    one_minus_pm = (torch.sigmoid(-logits) + clip).clamp(max=1.0)
    pm = 1.0 - one_minus_pm
    if gamma == 0:
        w = torch.ones_like(pm)
    else:
        w = torch.where(pm > 0, pm.clamp(min=1e-30) ** gamma, torch.zeros_like(pm))
    return w, torch.log(one_minus_pm)


def _check_nonneg(owner: str, **values: float) -> None:
    for name, v in values.items():
        if not v >= 0:
            raise ConfigError(f"{owner}: {name} must be >= 0, got {v}")


# --------------------------------------------------------------------------- entropy losses
@LOSSES.register("em", "entropy maximisation on unknown labels (Zhou et al. 2022)")
class EntropyMaximisationLoss(MultiLabelLoss):
    r"""EM: BCE on the known labels, entropy *maximisation* on the unknown ones.

    .. math::
        \ell = \begin{cases} -\log p & y=+1\\ -\alpha H(p) & y=0\\ -\log(1-p) & y=-1\end{cases},
        \qquad H(p) = -p\log p-(1-p)\log(1-p)

    Zhou, Chen, Wang, Chen, Heng, "Acknowledging the unknown for multi-label learning with single
    positive labels", ECCV 2022 (EM loss); :math:`\alpha=0.1` (their COCO / NUS-WIDE value; 0.2 on
    VOC, 0.01 on CUB).
    """

    entrywise = True

    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__()
        _check_nonneg("em", alpha=alpha)
        self.alpha = float(alpha)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        lp, l1p = log_p(logits), log_1mp(logits)
        m = torch.where(observed == 1, -lp, -l1p)
        return torch.where(observed == 0, -self.alpha * binary_entropy(logits, lp, l1p), m), None


@LOSSES.register("entmin", "entropy minimisation on unknown labels (Grandvalet & Bengio 2004)")
class EntropyMinimisationLoss(MultiLabelLoss):
    r"""EntMin: BCE on the known labels, entropy *minimisation* on the unknown ones.

    .. math::
        \ell = \begin{cases} -\log p & y=+1\\ +\alpha H(p) & y=0\\ -\log(1-p) & y=-1\end{cases}

    Grandvalet & Bengio, "Semi-supervised learning by entropy minimization", NeurIPS 2004; the
    "EntMin" baseline of Zhou et al., ECCV 2022. :math:`\alpha=0.1`.
    """

    entrywise = True

    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__()
        _check_nonneg("entmin", alpha=alpha)
        self.alpha = float(alpha)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        lp, l1p = log_p(logits), log_1mp(logits)
        m = torch.where(observed == 1, -lp, -l1p)
        return torch.where(observed == 0, self.alpha * binary_entropy(logits, lp, l1p), m), None


# --------------------------------------------------------------------------- focal family
@LOSSES.register("focal", "focal loss; optional alpha-balancing, unknowns as negatives or ignored (Lin et al. 2017)")
class FocalLoss(MultiLabelLoss):
    r"""Focal loss, with optional :math:`\alpha`-balancing and a choice for the unknown labels.

    .. math::
        \ell = \begin{cases} -\alpha_+(1-p)^\gamma\log p & y=+1\\ -\alpha_-\,p^\gamma\log(1-p) & y=-1
        \text{ (and } y=0 \text{ with } \texttt{unknown="negative"})\\
        0 & y=0 \text{ with } \texttt{unknown="ignore"}\end{cases}

    Lin, Goyal, Girshick, He, Dollár, "Focal loss for dense object detection", ICCV 2017:
    :math:`\gamma=2`; :math:`\alpha`-balanced focal loss :math:`\alpha_+=\alpha`,
    :math:`\alpha_-=1-\alpha` with the paper's :math:`\alpha=0.25` (``alpha: 0.25``). The default
    ``alpha: null`` is the unbalanced loss (:math:`\alpha_\pm=1`), as before. ``unknown="ignore"``
    gives unknown entries zero loss (the mean stays over the :math:`B\times C` entries; mlcpl's
    ``PartialFocalWithLogitLoss`` averages over the known entries instead). ``detach_focusing``
    stops the gradient through :math:`(1-p)^\gamma` and :math:`p^\gamma` (mlcpl's default
    ``discard_focal_grad=True``).
    """

    entrywise = True

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, unknown: str = "negative",
                 detach_focusing: bool = False) -> None:
        super().__init__()
        _check_nonneg("focal", gamma=gamma)
        if alpha is not None and not 0.0 < alpha < 1.0:
            raise ConfigError(f"focal: alpha must be in (0, 1) (or null for no balancing), got {alpha}")
        if unknown not in ("negative", "ignore"):
            raise ConfigError(f"focal: unknown must be 'negative' or 'ignore', got {unknown!r}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.unknown = unknown
        self.ignores_unknowns = unknown == "ignore"
        self.detach_focusing = bool(detach_focusing)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        w_pos, w_neg = focal_weight_pos(logits, self.gamma), focal_weight_neg(logits, self.gamma)
        if self.detach_focusing:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        a_pos, a_neg = (1.0, 1.0) if self.alpha is None else (self.alpha, 1.0 - self.alpha)
        out = torch.where(observed == 1, -a_pos * w_pos * log_p(logits), -a_neg * w_neg * log_1mp(logits))
        if self.unknown == "ignore":
            out = torch.where(observed == 0, torch.zeros_like(out), out)
        return out, None


@LOSSES.register("asl", "asymmetric loss: focusing + probability shifting of negatives (Ridnik et al. 2021)")
class AsymmetricLoss(MultiLabelLoss):
    r"""ASL with unknown labels assumed negative.

    .. math::
        \ell = \begin{cases} -(1-p)^{\gamma_+}\log p & y=+1\\
        -p_m^{\gamma_-}\log(1-p_m) & y\in\{0,-1\}\end{cases},\qquad p_m=\max(p-m,0)

    Ridnik, Ben-Baruch, Zamir, Noy, Friedman, Protter, Zelnik-Manor, "Asymmetric loss for
    multi-label classification", ICCV 2021: :math:`\gamma_+=0`, :math:`\gamma_-=4`,
    :math:`m=0.05`. :math:`\log(1-p_m)=\log\min(\sigma(-x)+m,1)` is finite for every logit; the
    focusing weights are differentiated (the paper's gradient analysis; the reference code can
    optionally detach them).

    Partial labels (DualCoOp, Sun et al. 2022, and its variants): ``unknown="ignore"`` gives the
    unknown entries (:math:`y=0`) zero loss instead of the negative term (the reference drops
    them); the mean is still over the :math:`B\times C` entries. ``detach_focusing=True`` stops
    the gradient through the focusing weights, as the DualCoOp reference does
    (``disable_torch_grad_focal_loss``). DualCoOp uses :math:`\gamma_+=1`, :math:`\gamma_-=2`,
    :math:`m=0.05`. Both options default to the behaviour above.
    """

    entrywise = True

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
                 unknown: str = "negative", detach_focusing: bool = False) -> None:
        super().__init__()
        _check_nonneg("asl", gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
        if clip >= 1:
            raise ConfigError(f"asl: clip must be < 1, got {clip}")
        if unknown not in ("negative", "ignore"):
            raise ConfigError(f"asl: unknown must be 'negative' or 'ignore', got {unknown!r}")
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = float(clip)
        self.unknown = unknown
        self.detach_focusing = bool(detach_focusing)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        pos = -focal_weight_pos(logits, self.gamma_pos) * log_p(logits)
        w, log_1m_pm = shifted_negative(logits, self.clip, self.gamma_neg)
        if self.detach_focusing:
            w = w.detach()
            pos = -focal_weight_pos(logits, self.gamma_pos).detach() * log_p(logits)
        out = torch.where(observed == 1, pos, -w * log_1m_pm)
        if self.unknown == "ignore":
            out = torch.where(observed == 0, torch.zeros_like(out), out)
        return out, None


@LOSSES.register("hill", "Hill loss: focal-margin positives, (lambda-p)p^2 negatives (Zhang et al. 2021)")
class HillLoss(MultiLabelLoss):
    r"""Hill loss with unknown labels assumed negative.

    .. math::
        \ell = \begin{cases} -(1-p_m)^\gamma\log p_m & y=+1,\ p_m=\sigma(x-m)\\
        (\lambda-p)\,p^2 & y\in\{0,-1\}\end{cases}

    Zhang, Cheng, Huang, Xie, Zeng, Yang, "Simple and robust loss design for multi-label learning
    with missing labels", arXiv 2112.07368 (2021), Hill loss: :math:`\lambda=1.5`, margin
    :math:`m=1`, :math:`\gamma=2`.
    """

    entrywise = True

    def __init__(self, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__()
        _check_nonneg("hill", gamma=gamma)
        self.lamb = float(lamb)
        self.margin = float(margin)
        self.gamma = float(gamma)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        p = torch.sigmoid(logits)
        neg = (self.lamb - p) * p * p
        pos = focal_margin_pos(logits, self.margin, self.gamma)
        return torch.where(observed == 1, pos, neg), None


@LOSSES.register("splc", "self-paced loss correction: confident unknowns become positives (Zhang et al. 2021)")
class SPLCLoss(MultiLabelLoss):
    r"""SPLC: focal margin on positives, focal on negatives, and online correction of unknowns.

    .. math::
        \ell = \begin{cases} L^+(x) & y=+1\\
        \mathbb 1[p>\tau \wedge e\ge e_0]\,L^+(x) + \mathbb 1[\neg(p>\tau \wedge e\ge e_0)]\,L^-(x) & y=0\\
        L^-(x) & y=-1\end{cases}

    with :math:`L^+(x)=-(1-p_m)^\gamma\log p_m`, :math:`p_m=\sigma(x-m)` (focal margin),
    :math:`L^-(x)=-p^\gamma\log(1-p)`, :math:`e` the (0-based) epoch and :math:`e_0` =
    ``change_epoch``. Zhang et al., arXiv 2112.07368 (2021), SPLC with focal margin: :math:`\tau=0.6`,
    :math:`e_0=1`, :math:`m=1`, :math:`\gamma=2`. The correction is decided each step from the
    current prediction (no stored state, so no ``index`` is needed); corrected entries get the
    paper's :math:`L^+` with the margin. ``corrected_margin=False`` is the reference code's behaviour
    (SPLC's and SCPNet's ``loss.py``: the margin is subtracted from the logits of the *observed*
    positives only, before the correction, so a corrected entry gets
    :math:`-(1-p)^\gamma\log p` without margin).
    """

    def __init__(self, tau: float = 0.6, change_epoch: int = 1, margin: float = 1.0, gamma: float = 2.0,
                 corrected_margin: bool = True) -> None:
        super().__init__()
        if not isinstance(corrected_margin, bool):
            raise ConfigError(f"splc: corrected_margin must be true or false, got {corrected_margin!r}")
        self.corrected_margin = corrected_margin
        _check_nonneg("splc", gamma=gamma, change_epoch=change_epoch)
        if not 0.0 < tau < 1.0:
            raise ConfigError(f"splc: tau must be in (0, 1), got {tau}")
        self.tau = float(tau)
        self.change_epoch = int(change_epoch)
        self.margin = float(margin)
        self.gamma = float(gamma)

    def corrected(self, logits: Tensor, observed: Tensor, epoch: int) -> Tensor:
        """Mask of the unknown entries treated as positives at this epoch."""
        if epoch < self.change_epoch:
            return torch.zeros_like(observed, dtype=torch.bool)
        with torch.no_grad():
            return (observed == 0) & (torch.sigmoid(logits) > self.tau)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        corrected = self.corrected(logits, observed, epoch)
        pos = focal_margin_pos(logits, self.margin, self.gamma)
        if not self.corrected_margin:
            pos = torch.where(corrected, focal_margin_pos(logits, 0.0, self.gamma), pos)
        return torch.where((observed == 1) | corrected, pos, focal_neg(logits, self.gamma)), None
