r"""Entropy maximisation with asymmetric pseudo-labelling (EM + APL), Zhou et al., ECCV 2022.

The pseudo-labels are soft negatives kept in buffers of this loss, one row per training example
(keyed by ``index``); the observed labels are never modified.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mlrkit.errors import ConfigError
from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p
from mlrkit.losses.regularized import ResizableStateMixin, as_observed_matrix, state_rows
from mlrkit.losses.robust import binary_entropy


@LOSSES.register("em_apl", "EM + asymmetric pseudo-labelling: lowest-scoring unknowns become soft negatives "
                           "(Zhou et al. 2022)")
class EMAPLLoss(ResizableStateMixin, MultiLabelLoss):
    r"""EM + APL: entropy maximisation on unknowns, plus soft negatives chosen after a warm-up.

    Per entry, with :math:`s_{ic}` the soft target of a pseudo-negative (see below):

    .. math::
        \ell = \begin{cases} -\log p & y=+1\\
        -\alpha H(p) & y=0,\ \text{not pseudo-labelled}\\
        -\beta\,[\,s\log p + (1-s)\log(1-p)\,] & y=0,\ \text{pseudo-negative}\\
        -\log(1-p) & y=-1\end{cases}

    Zhou, Chen, Wang, Chen, Heng, "Acknowledging the unknown for multi-label learning with single
    positive labels", ECCV 2022 (APL as in their released code, which pseudo-labels negatives
    only; so does this class). Known negatives get plain BCE (Zhou's code has
    none; applied literally it would treat them as positives).

    **Pseudo-labelling** (the trainer calls :meth:`update_pseudo_labels` at the end of every
    epoch with the model's scores on the whole training set): for each class :math:`c` with
    :math:`U_c` unknown entries in the observed matrix given to :meth:`prepare`, after epoch
    :math:`e` (0-based) the number of pseudo-negatives is

    .. math::
        n_c(e) = \Big\lfloor \rho\,U_c\,\min\Big(1, \frac{e - W + 2}{E - W}\Big)\Big\rfloor
        \quad (e \ge W-1), \qquad n_c(e)=0 \quad (e < W-1)

    with :math:`\rho` = ``neg_proportion``, :math:`W` = ``warmup_epochs`` (epochs trained with EM
    only) and :math:`E` = ``num_epochs``: the proportion grows linearly, by :math:`\rho/(E-W)` per
    epoch, and reaches :math:`\rho` for the last epochs, as in Zhou's code (first update at the end
    of the :math:`W`-th epoch). Each update adds the lowest-scoring still-unlabelled unknown
    entries of the class until :math:`n_c(e)` is reached, and stores their probability at that
    moment as the soft target :math:`s` (Zhou's "soft" negatives). Pseudo-labels are never
    revoked; calling the update twice for the same epoch adds nothing.

    Defaults are Zhou's COCO settings (:data:`ZHOU_SETTINGS` lists all four datasets); set
    ``num_epochs`` to the run's number of epochs.
    """

    stateful = True
    run_context = ("num_epochs",)
    needs_epoch_scores = True
    _state_names = ("soft_target", "pseudo_negative", "unknown_mask", "unknown_per_class")
    #: Zhou et al.'s per-dataset settings (their ``main.py``), 10 epochs in every case.
    ZHOU_SETTINGS: dict[str, dict[str, float]] = {
        "pascal": {"alpha": 0.2, "beta": 0.02, "neg_proportion": 0.9, "warmup_epochs": 5},
        "coco": {"alpha": 0.1, "beta": 0.9, "neg_proportion": 0.9, "warmup_epochs": 5},
        "nuswide": {"alpha": 0.1, "beta": 0.2, "neg_proportion": 0.9, "warmup_epochs": 4},
        "cub": {"alpha": 0.01, "beta": 0.4, "neg_proportion": 0.9, "warmup_epochs": 3},
    }

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 0.9,
        neg_proportion: float = 0.9,
        warmup_epochs: int = 5,
        num_epochs: int = 10,
    ) -> None:
        super().__init__()
        if not (alpha >= 0 and beta >= 0):
            raise ConfigError(f"em_apl: alpha and beta must be >= 0, got {alpha}, {beta}")
        if not 0.0 <= neg_proportion <= 1.0:
            raise ConfigError(f"em_apl: neg_proportion must be in [0, 1], got {neg_proportion}")
        if warmup_epochs < 1 or num_epochs <= warmup_epochs:
            raise ConfigError(
                f"em_apl: need 1 <= warmup_epochs < num_epochs, got warmup_epochs={warmup_epochs}, "
                f"num_epochs={num_epochs}"
            )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.neg_proportion = float(neg_proportion)
        self.warmup_epochs = int(warmup_epochs)
        self.num_epochs = int(num_epochs)
        self.register_buffer("soft_target", torch.zeros(0, 0))
        self.register_buffer("pseudo_negative", torch.zeros(0, 0, dtype=torch.bool))
        self.register_buffer("unknown_mask", torch.zeros(0, 0, dtype=torch.bool))
        self.register_buffer("unknown_per_class", torch.zeros(0, dtype=torch.long))

    # ------------------------------------------------------------------ state
    def prepare(self, observed: Tensor) -> None:
        obs = as_observed_matrix(observed)
        dev = self.soft_target.device
        unknown = (obs == 0).to(dev)
        self.unknown_mask = unknown
        self.unknown_per_class = unknown.sum(dim=0)
        self.soft_target = torch.zeros(obs.shape, device=dev)
        self.pseudo_negative = torch.zeros(obs.shape, dtype=torch.bool, device=dev)

    def target_fraction(self, epoch: int) -> float:
        """The fraction of each class's unknown entries that are pseudo-negatives after ``epoch``."""
        if epoch < self.warmup_epochs - 1:
            return 0.0
        steps = epoch - self.warmup_epochs + 2
        return self.neg_proportion * min(1.0, steps / (self.num_epochs - self.warmup_epochs))

    @torch.no_grad()
    def update_pseudo_labels(self, scores: Tensor, epoch: int, *, logits: bool = True) -> int:
        """Add soft negatives after ``epoch`` (0-based) from the model's scores on the training set.

        ``scores`` [N, C] are rows in the order of the observed matrix given to :meth:`prepare`:
        logits by default (what the trainer passes), probabilities with ``logits=False``. Returns
        the number of entries newly pseudo-labelled.
        """
        n, c = self.unknown_mask.shape
        if n == 0:
            raise RuntimeError("em_apl: call prepare(observed_train) before update_pseudo_labels")
        scores = torch.as_tensor(scores)
        if tuple(scores.shape) != (n, c):
            raise ValueError(f"em_apl: scores must be [N={n}, C={c}] (the whole training split), "
                             f"got {tuple(scores.shape)}")
        dev = self.unknown_mask.device
        scores = scores.to(device=dev, dtype=torch.float32)
        if not torch.isfinite(scores).all():
            raise ValueError("em_apl: scores contain NaN or inf")
        if logits:
            probs = torch.sigmoid(scores)
        else:
            if scores.numel() and (scores.min() < 0 or scores.max() > 1):
                raise ValueError("em_apl: logits=False needs probabilities in [0, 1]")
            probs = scores
        frac = self.target_fraction(epoch)
        if frac <= 0:
            return 0
        target = torch.floor(frac * self.unknown_per_class.double() + 1e-9).long()
        need = (target - self.pseudo_negative.sum(dim=0)).clamp(min=0)  # [C]
        if int(need.sum()) == 0:
            return 0
        candidates = self.unknown_mask & ~self.pseudo_negative
        masked = probs.masked_fill(~candidates, math.inf)
        order = torch.sort(masked, dim=0, stable=True).indices  # ascending score per class
        take_sorted = torch.arange(n, device=dev).unsqueeze(1) < need.unsqueeze(0)
        chosen = torch.zeros_like(candidates).scatter_(0, order, take_sorted) & candidates
        self.soft_target[chosen] = probs[chosen]
        self.pseudo_negative |= chosen
        return int(chosen.sum())

    # ------------------------------------------------------------------ loss
    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        rows = state_rows(index, self.pseudo_negative.shape[0], "em_apl", self.pseudo_negative.device)
        if self.pseudo_negative.shape[1] != logits.shape[1]:
            raise ValueError(f"em_apl: prepared for {self.pseudo_negative.shape[1]} classes, "
                             f"got logits with {logits.shape[1]}")
        pn = self.pseudo_negative[rows].to(logits.device)
        s = self.soft_target[rows].to(device=logits.device, dtype=logits.dtype)
        lp, l1p = log_p(logits), log_1mp(logits)
        known = torch.where(observed == 1, -lp, -l1p)
        soft = -self.beta * (s * lp + (1.0 - s) * l1p)
        unknown = torch.where(pn, soft, -self.alpha * binary_entropy(logits, lp, l1p))
        return torch.where(observed == 0, unknown, known), None

    def stats(self) -> dict[str, Any]:
        """Counts for logging: pseudo-negatives in total and per class."""
        per_class = self.pseudo_negative.sum(dim=0)
        return {"pseudo_negatives": int(per_class.sum()), "per_class": per_class.tolist()}
