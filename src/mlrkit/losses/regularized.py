r"""Assume-negative variants and regularised losses for missing labels.

Notation (used in every docstring of the loss zoo): :math:`x` a logit, :math:`p=\sigma(x)`,
observed label :math:`y\in\{+1,0,-1\}` (known positive, unknown, known negative), :math:`B` the
batch size, :math:`C` the number of classes. Every loss returns a per-entry matrix
:math:`\ell_{ic}` and an optional scalar regulariser :math:`R`; ``forward`` returns
:math:`\frac{1}{BC}\sum_{ic}\ell_{ic} + R` (Cole et al.'s normalisation, see
:mod:`mlrkit.losses.base`).

Losses here:

* ``an_ls``, ``wan``, ``epr``, ``role``: Cole et al., "Multi-label learning from single positive
  labels", CVPR 2021 (reference code: ``elijahcole/single-positive-multi-label``).
* ``n_ls``: negative label smoothing, Wei et al., "To smooth or not? When label smoothing meets
  noisy labels", ICML 2022 (first circulated as "Understanding (generalized) label smoothing when
  learning with noisy labels", 2021), applied to the assume-negative targets.
* ``l1r``, ``l2r``: assume-negative with an L1 / L2 penalty on the logits (output
  regularisation), the "L1R/L2R" baselines of the single-positive literature.

Stateful losses here (``role``) keep their per-example state in tensors with one row per
training example, indexed by the dataset row ids passed as ``index``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.errors import ConfigError
from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p

#: Cole et al.'s expected number of positives per image (``train.py`` lookup), per dataset.
COLE_EXPECTED_NUM_POS: dict[str, float] = {"pascal": 1.5, "coco": 2.9, "nuswide": 1.9, "cub": 31.4}
#: Fallback k when it is neither given nor estimable from the observed labels: Cole's COCO value.
DEFAULT_EXPECTED_NUM_POS: float = 2.9


# --------------------------------------------------------------------------- shared helpers
def as_observed_matrix(observed: Any) -> Tensor:
    """The training split's observed labels as an integer tensor [N, C] in {-1, 0, +1}."""
    obs = torch.as_tensor(observed) if not isinstance(observed, Tensor) else observed
    if obs.ndim != 2:
        raise ValueError(f"observed labels must be [N, C], got shape {tuple(obs.shape)}")
    if obs.is_floating_point():
        raise TypeError(f"observed labels must be an integer tensor in {{-1,0,1}}, got {obs.dtype}")
    if obs.numel() and (obs.min() < -1 or obs.max() > 1):
        raise ValueError("observed labels must be in {-1, 0, +1}")
    return obs


def state_rows(index: Tensor | None, n_rows: int, owner: str, device: torch.device) -> Tensor:
    """Validate ``index`` against a state table of ``n_rows`` rows and move it to ``device``."""
    if index is None:
        raise ValueError(f"{owner} is stateful: pass index= (dataset row ids)")
    if n_rows == 0:
        raise RuntimeError(f"{owner}: call prepare(observed_train) before the first forward")
    idx = index.to(device=device, dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_rows):
        raise IndexError(
            f"{owner}: index out of range [0, {n_rows}) (got {int(idx.min())}..{int(idx.max())}); "
            "index must be row ids of the observed matrix given to prepare()"
        )
    return idx


class ResizableStateMixin:
    """State tensors whose row count N is only known after ``prepare()``.

    ``load_state_dict`` adopts the saved shape, so a checkpoint can be restored into a freshly
    built loss (before or after ``prepare``); list the attribute names in ``_state_names``.
    """

    _state_names: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in self._state_names:
            key = prefix + name
            if key not in state_dict:
                continue
            current = getattr(self, name)
            incoming = state_dict[key]
            if current.shape != incoming.shape:
                fresh = torch.zeros(incoming.shape, dtype=current.dtype, device=current.device)
                if isinstance(current, nn.Parameter):
                    current.data = fresh
                else:
                    self._buffers[name] = fresh  # type: ignore[attr-defined]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


def expected_positive_regulariser(probs: Tensor, k: float) -> Tensor:
    r"""Cole et al.'s EPR, squared form, normalised by :math:`C^2` as in their code.

    .. math:: R(P) = \frac{1}{C^2}\Big(\frac{1}{B}\sum_i\sum_c p_{ic} - k\Big)^2
    """
    c = probs.shape[1]
    return (probs.sum(dim=1).mean() - k) ** 2 / float(c * c)


class _ExpectedPositives:
    r"""Resolution of k, the expected number of positives per image (EPR and ROLE).

    Order: (1) ``expected_num_pos`` when given (e.g. a dataset's mean number of positives per
    image, or Cole's per-dataset value in :data:`COLE_EXPECTED_NUM_POS`); (2) when ``prepare`` saw
    known negatives (``full`` or ``partial:<f>`` protocols, whose known entries are a uniform
    sample), :math:`k = C\cdot\#\{y=+1\}/\#\{y\neq0\}`; (3) otherwise
    :data:`DEFAULT_EXPECTED_NUM_POS` (2.9, Cole's COCO value), with a warning.
    """

    run_context = ("expected_num_pos",)

    expected_num_pos: float | None
    _k_estimate: float | None
    _warned_default: bool

    def _init_expected(self, expected_num_pos: float | None) -> None:
        if expected_num_pos is not None and not (math.isfinite(expected_num_pos) and expected_num_pos > 0):
            raise ConfigError(f"expected_num_pos must be a positive number, got {expected_num_pos!r}")
        self.expected_num_pos = None if expected_num_pos is None else float(expected_num_pos)
        self._k_estimate = None
        self._warned_default = False

    def _estimate_expected(self, observed: Tensor) -> None:
        pos = int((observed == 1).sum())
        known = int((observed != 0).sum())
        if pos > 0 and known > pos:  # at least one known negative: the known entries are informative
            self._k_estimate = observed.shape[1] * pos / known
        else:
            self._k_estimate = None

    @property
    def k(self) -> float:
        """The expected number of positives per image used by the regulariser."""
        if self.expected_num_pos is not None:
            return self.expected_num_pos
        if self._k_estimate is not None:
            return self._k_estimate
        if not self._warned_default:
            warnings.warn(
                f"{type(self).__name__}: expected_num_pos not given and not estimable from the observed "
                f"labels (no known negatives); using {DEFAULT_EXPECTED_NUM_POS} (Cole et al.'s COCO value). "
                "Set loss.params.expected_num_pos to the dataset's mean number of positives per image.",
                stacklevel=3,
            )
            self._warned_default = True
        return DEFAULT_EXPECTED_NUM_POS

    @property
    def k_source(self) -> str:
        """Where :attr:`k` comes from: ``given``, ``estimated`` or ``default``."""
        if self.expected_num_pos is not None:
            return "given"
        return "estimated" if self._k_estimate is not None else "default"


def _assume_negative(logits: Tensor, observed: Tensor) -> Tensor:
    return torch.where(observed == 1, -log_p(logits), -log_1mp(logits))


# --------------------------------------------------------------------------- AN variants
@LOSSES.register("an_ls", "assume negative with label smoothing on every entry (Cole et al. 2021)")
class ANLabelSmoothingLoss(MultiLabelLoss):
    r"""AN-LS: assume negative, then label smoothing with coefficient :math:`\varepsilon`.

    .. math::
        \ell = \begin{cases}
        -[(1-\varepsilon)\log p + \varepsilon\log(1-p)] & y=+1\\
        -[(1-\varepsilon)\log(1-p) + \varepsilon\log p] & y\in\{0,-1\}
        \end{cases}

    Cole et al., CVPR 2021, "AN-LS" (``loss_an_ls``; ``ls_coef`` = 0.1). Cole's code has no known
    negatives; they are smoothed like the assumed ones here.
    """

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= eps < 0.5:
            raise ConfigError(f"an_ls: eps must be in [0, 0.5), got {eps}")
        self.eps = float(eps)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        lp, l1p = log_p(logits), log_1mp(logits)
        e = self.eps
        pos = -((1.0 - e) * lp + e * l1p)
        neg = -((1.0 - e) * l1p + e * lp)
        return torch.where(observed == 1, pos, neg), None


@LOSSES.register("n_ls", "assume negative with negative label smoothing (Wei et al. 2022), rate r<=0")
class NegativeLabelSmoothingLoss(MultiLabelLoss):
    r"""N-LS: assume negative with *negative* label smoothing (generalised label smoothing, r <= 0).

    The AN target :math:`t` (1 for :math:`y=+1`, 0 otherwise) is smoothed with a non-positive rate
    :math:`r` as in Wei et al. (binary case, :math:`K=2`): :math:`\tilde t = (1-r)\,t + r/2`, and

    .. math:: \ell = -[\tilde t\log p + (1-\tilde t)\log(1-p)]

    i.e. with the default :math:`r=-0.2`: :math:`\tilde t = 1.1` for :math:`y=+1` and
    :math:`\tilde t=-0.1` for :math:`y\in\{0,-1\}` (the mirror image of ``an_ls`` with
    :math:`\varepsilon=0.1`). Unlike positive smoothing, N-LS rewards confident predictions; it is
    unbounded below as :math:`|x|\to\infty` (finite for every finite logit), as in Wei et al.

    Wei, Liu, Liu, Cheng, Niu, Liu, "To smooth or not? When label smoothing meets noisy labels",
    ICML 2022.
    """

    def __init__(self, rate: float = -0.2) -> None:
        super().__init__()
        if not -1.0 <= rate <= 0.0:
            raise ConfigError(f"n_ls: rate must be in [-1, 0] (use an_ls for positive smoothing), got {rate}")
        self.rate = float(rate)

    def targets(self) -> tuple[float, float]:
        """The smoothed targets (for y=+1, for y in {0,-1})."""
        return 1.0 - self.rate / 2.0, self.rate / 2.0

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        t_pos, t_neg = self.targets()
        t = torch.where(observed == 1, t_pos, t_neg).to(logits.dtype)
        return -(t * log_p(logits) + (1.0 - t) * log_1mp(logits)), None


@LOSSES.register("wan", "weak assume negative: assumed negatives down-weighted by 1/(C-1) (Cole et al. 2021)")
class WeakAssumeNegativeLoss(MultiLabelLoss):
    r"""WAN: assume negative with the assumed (unknown) negatives down-weighted by :math:`\gamma`.

    .. math::
        \ell = \begin{cases} -\log p & y=+1\\ -\gamma\log(1-p) & y=0\\ -\log(1-p) & y=-1\end{cases}

    :math:`\gamma = 1/(C-1)` by default (Cole et al., CVPR 2021, ``loss_wan``; after Mac Aodha et
    al. 2019), with :math:`C` taken from the logits when ``gamma`` is not given.
    """

    def __init__(self, gamma: float | None = None) -> None:
        super().__init__()
        if gamma is not None and not gamma >= 0:
            raise ConfigError(f"wan: gamma must be >= 0, got {gamma}")
        self.gamma = None if gamma is None else float(gamma)

    def weight(self, num_classes: int) -> float:
        if self.gamma is not None:
            return self.gamma
        if num_classes < 2:
            raise ValueError("wan: the default gamma = 1/(C-1) needs C >= 2 classes; pass gamma=")
        return 1.0 / (num_classes - 1)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        g = self.weight(logits.shape[1])
        l1p = -log_1mp(logits)
        neg = torch.where(observed == 0, g * l1p, l1p)
        return torch.where(observed == 1, -log_p(logits), neg), None


class _LogitPenaltyLoss(MultiLabelLoss):
    order: int = 1

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        penalty = logits.abs().mean() if self.order == 1 else logits.square().mean()
        return _assume_negative(logits, observed), self.weight * penalty


@LOSSES.register("l1r", "assume negative + L1 penalty on the logits (output regularisation)")
class L1RegularisedANLoss(_LogitPenaltyLoss):
    r"""L1R: assume negative plus an L1 penalty on the logits.

    .. math::
        \ell = \begin{cases}-\log p & y=+1\\ -\log(1-p) & y\in\{0,-1\}\end{cases},\qquad
        R = \frac{\lambda}{BC}\sum_{ic}|x_{ic}|

    The penalty keeps the (mostly false) assumed negatives from being driven to :math:`p=0`: at
    the optimum an assumed negative sits at :math:`p=\lambda` (:math:`\lambda = 0.01` by default).
    "L1R" is a baseline of the single-positive literature (compared against in Zhou et al.,
    ECCV 2022); no reference code defines it, so the penalty is put on the model's outputs, the
    only parameters a loss sees. Penalise the weights instead with the optimiser's weight decay.
    """

    order = 1


@LOSSES.register("l2r", "assume negative + squared L2 penalty on the logits (output regularisation)")
class L2RegularisedANLoss(_LogitPenaltyLoss):
    r"""L2R: assume negative plus a squared-L2 penalty on the logits.

    .. math::
        \ell = \begin{cases}-\log p & y=+1\\ -\log(1-p) & y\in\{0,-1\}\end{cases},\qquad
        R = \frac{\lambda}{BC}\sum_{ic}x_{ic}^2

    At the optimum an assumed negative sits where :math:`2\lambda|x| = p` (about :math:`p=0.035`
    for the default :math:`\lambda=0.01`). See :class:`L1RegularisedANLoss` for the provenance.
    """

    order = 2


# --------------------------------------------------------------------------- EPR and ROLE
@LOSSES.register("epr", "observed positives + expected-positive regulariser (Cole et al. 2021)")
class EPRLoss(_ExpectedPositives, MultiLabelLoss):
    r"""EPR: observed labels only, plus Cole et al.'s expected-positive regulariser.

    .. math::
        \ell = \begin{cases}-\log p & y=+1\\ 0 & y=0\\ -\log(1-p) & y=-1\end{cases},\qquad
        R = \frac{1}{C^2}\Big(\frac{1}{B}\sum_i\sum_c p_{ic} - k\Big)^2

    Cole et al., CVPR 2021, section "expected positive regularization" and ``loss_epr``
    (squared norm, divided by :math:`C^2`; the main term divided by :math:`BC`, which is exactly
    this package's reduction). :math:`k` is the
    expected number of positives per image: ``expected_num_pos`` when given (Cole's values:
    :data:`COLE_EXPECTED_NUM_POS`), else estimated by :meth:`prepare` from known negatives, else 2.9
    (see :class:`_ExpectedPositives`). Cole's code has no known negatives; they get BCE here.
    """

    def __init__(self, expected_num_pos: float | None = None) -> None:
        super().__init__()
        self._init_expected(expected_num_pos)

    def prepare(self, observed: Tensor) -> None:
        self._estimate_expected(as_observed_matrix(observed))

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        zero = torch.zeros_like(logits)
        m = torch.where(observed == 1, -log_p(logits), zero)
        m = torch.where(observed == -1, -log_1mp(logits), m)
        return m, expected_positive_regulariser(torch.sigmoid(logits), self.k)

    def extra_repr(self) -> str:
        return f"expected_num_pos={self.expected_num_pos}"


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@LOSSES.register("role", "regularised online label estimation: learned [N,C] label table (Cole et al. 2021)")
class ROLELoss(ResizableStateMixin, _ExpectedPositives, MultiLabelLoss):
    r"""ROLE: jointly learns the classifier and a label-estimator table :math:`\hat Y\in[0,1]^{N\times C}`.

    The estimator is an ``nn.Parameter`` of logits :math:`z` [N, C] inside this loss,
    :math:`q=\sigma(z_{\text{index}})`; :math:`\bar q,\bar p` denote stop-gradient copies. For
    each entry (Cole et al., CVPR 2021, "ROLE", and their ``loss_role``):

    .. math::
        \ell = \tfrac12\big[o(p) + o(q)\big]
             + \tfrac12\big[-\bar q\log p-(1-\bar q)\log(1-p)\big]
             + \tfrac12\big[-\bar p\log q-(1-\bar p)\log(1-q)\big]

    with :math:`o(v) = -\log v` for :math:`y=+1`, :math:`-\log(1-v)` for :math:`y=-1` (known
    negatives: an extension, Cole's setting has none) and 0 for :math:`y=0`, and regulariser
    :math:`R = \tfrac12[R_k(P) + R_k(Q)]`, :math:`R_k` the expected-positive regulariser of
    :class:`EPRLoss` (same :math:`k` resolution). Cole's normalisation (main term divided by
    :math:`BC`, regulariser added as is) is the package's reduction, so nothing is rescaled.

    State and training:

    * :meth:`prepare` allocates :math:`z` [N, C] like Cole's ``LabelEstimator``: unknown entries
      uniform in :math:`[-\mathrm{logit}(0.6), \mathrm{logit}(0.6)]` (drawn from ``seed``),
      known positives :math:`\mathrm{logit}(0.995)`, known negatives :math:`\mathrm{logit}(0.005)`.
      Rows are addressed by ``index``. Build the optimiser after ``prepare``.
    * The table is trainable: give :meth:`parameters` to the optimiser with learning rate
      ``lr * lr_mult`` (``lr_mult = 10`` as Cole; :meth:`optimizer_param_groups` builds the
      group). It is saved in ``state_dict`` and restored by ``load_state_dict``.
    * ``linear_init`` flags Cole's "ROLE + LinearInit" schedule, which the method/trainer runs:
      phase 1 trains a linear classifier on frozen features (:data:`LINEAR_INIT_SCHEDULE`), phase
      2 fine-tunes end to end, carrying the estimator over (same loss object, or
      :meth:`set_estimates` with phase 1's :meth:`estimates`).
    """

    stateful = True
    _state_names = ("estimator_logits",)
    #: Cole et al.'s LinearInit phase-1 settings (train.py lookup) and phase lengths.
    LINEAR_INIT_SCHEDULE: dict[str, Any] = {
        "phase1": {"mode": "linear_fixed_features", "epochs": 25, "lr": 1e-3, "batch_size": 16,
                   "batch_size_cub": 8},
        "phase2": {"mode": "end_to_end", "epochs": 10, "carry": "classifier and label estimator"},
    }
    INIT_UNKNOWN_HALF_WIDTH = 0.1  # unknowns start at sigmoid^-1 of U(0.5 - 0.1, 0.5 + 0.1), Cole's w
    INIT_POSITIVE = 0.995
    INIT_NEGATIVE = 0.005

    def __init__(
        self,
        expected_num_pos: float | None = None,
        lr_mult: float = 10.0,
        linear_init: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._init_expected(expected_num_pos)
        if not lr_mult > 0:
            raise ConfigError(f"role: lr_mult must be > 0, got {lr_mult}")
        self.lr_mult = float(lr_mult)
        self.linear_init = bool(linear_init)
        self.seed = int(seed)
        self.estimator_logits = nn.Parameter(torch.zeros(0, 0))

    def prepare(self, observed: Tensor) -> None:
        obs = as_observed_matrix(observed)
        self._estimate_expected(obs)
        n, c = obs.shape
        gen = torch.Generator().manual_seed(self.seed)
        q = _logit(0.5 + self.INIT_UNKNOWN_HALF_WIDTH)
        init = q * (2.0 * torch.rand(n, c, generator=gen) - 1.0)
        obs_cpu = obs.cpu()
        init[obs_cpu == 1] = _logit(self.INIT_POSITIVE)
        init[obs_cpu == -1] = _logit(self.INIT_NEGATIVE)
        self.estimator_logits = nn.Parameter(init.to(obs.device))

    def optimizer_param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimiser group for the label table: ``lr * lr_mult``, no weight decay (as Cole)."""
        return [{"params": [self.estimator_logits], "lr": lr * self.lr_mult, "weight_decay": 0.0}]

    def estimates(self) -> Tensor:
        """The current label estimates :math:`\\sigma(z)` [N, C] (detached)."""
        return torch.sigmoid(self.estimator_logits.detach())

    @torch.no_grad()
    def set_estimates(self, probs: Tensor | np.ndarray) -> None:
        """Initialise the table from label probabilities [N, C] (Cole's LinearInit carry-over);
        probabilities are clipped to [1e-5, 1 - 1e-5] as Cole's ``inverse_sigmoid``."""
        p = torch.as_tensor(probs, dtype=torch.float32).clamp(1e-5, 1.0 - 1e-5)
        if p.ndim != 2:
            raise ValueError(f"role: estimates must be [N, C], got {tuple(p.shape)}")
        z = torch.log(p) - torch.log1p(-p)
        if self.estimator_logits.shape == z.shape:
            self.estimator_logits.copy_(z.to(self.estimator_logits.device))
        else:
            self.estimator_logits = nn.Parameter(z.to(self.estimator_logits.device))

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        table = self.estimator_logits
        rows = state_rows(index, table.shape[0], "role", table.device)
        if table.shape[1] != logits.shape[1]:
            raise ValueError(f"role: prepared for {table.shape[1]} classes, got logits with {logits.shape[1]}")
        z = table[rows].to(logits.device)
        lp, l1p = log_p(logits), log_1mp(logits)
        lq, l1q = log_p(z), log_1mp(z)
        p, q = torch.sigmoid(logits), torch.sigmoid(z)
        pos, neg = observed == 1, observed == -1
        zero = torch.zeros_like(logits)
        obs_f = torch.where(pos, -lp, torch.where(neg, -l1p, zero))
        obs_g = torch.where(pos, -lq, torch.where(neg, -l1q, zero))
        qd, pd = q.detach(), p.detach()
        cross_f = -(qd * lp + (1.0 - qd) * l1p)
        cross_g = -(pd * lq + (1.0 - pd) * l1q)
        m = 0.5 * (obs_f + obs_g) + 0.5 * (cross_f + cross_g)
        k = self.k
        reg = 0.5 * (expected_positive_regulariser(p, k) + expected_positive_regulariser(q, k))
        return m, reg

    def extra_repr(self) -> str:
        n, c = self.estimator_logits.shape
        return (f"expected_num_pos={self.expected_num_pos}, lr_mult={self.lr_mult}, "
                f"linear_init={self.linear_init}, table=[{n}, {c}]")
