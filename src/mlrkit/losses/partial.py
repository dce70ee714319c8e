r"""Partial-label losses: class-aware selective (CSL), strictly proper asymmetric (SPA), Durand et al.'s
partial BCE and its curriculum pseudo-labelling.

Notation as in :mod:`mlrkit.losses.robust`: logit :math:`x`, :math:`p=\sigma(x)`, observed label
:math:`y\in\{+1,0,-1\}`; each loss gives a per-entry matrix :math:`\ell` averaged over the
:math:`B\times C` entries (Cole et al.'s normalisation; mlcpl averages over the known entries: multiply
by :math:`BC/\#\text{known}` to compare). Every logarithm is a ``logsigmoid``, so values and gradients
are finite for any finite logit.

* ``csl``: Ben-Baruch, Ridnik, Friedman, Ben-Cohen, Zamir, Noy, Zelnik-Manor, "Multi-label
  classification with partial annotations using class-aware selective loss", CVPR 2022.
* ``spa``: Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024.
* ``pbce``, ``curriculum``: Durand, Mehrasa, Mori, "Learning a deep ConvNet for multi-label
  classification with partial labels", CVPR 2019.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlrkit.errors import ConfigError
from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p
from mlrkit.losses.regularized import ResizableStateMixin, as_observed_matrix, state_rows
from mlrkit.losses.robust import focal_weight_pos, shifted_negative


def _check_positive(owner: str, **values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ConfigError(f"{owner}: {name} must be > 0, got {v}")


def _check_scores(owner: str, scores: Tensor, shape: tuple[int, int]) -> Tensor:
    scores = torch.as_tensor(scores).float()
    if tuple(scores.shape) != shape:
        raise ValueError(f"{owner}: scores must be [N={shape[0]}, C={shape[1]}] (the whole training split), "
                         f"got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{owner}: scores contain NaN or inf")
    return scores


# --------------------------------------------------------------------------- CSL
@LOSSES.register("csl", "class-aware selective loss: prior-based ignore + top-k likely positives ignored "
                        "(Ben-Baruch et al. 2022)")
class ClassAwareSelectiveLoss(MultiLabelLoss):
    r"""Class-aware selective loss (CSL) with the partial asymmetric base loss.

    Each entry gets a weight :math:`w\in\{0,1\}` and the asymmetric loss

    .. math::
        \ell = w\cdot\begin{cases} -\alpha_+(1-p)^{\gamma_+}\log p & y=+1\\
        -\alpha_-\,p_m^{\gamma_-}\log(1-p_m) & y=-1\\
        -\alpha_u\,p_m^{\gamma_u}\log(1-p_m) & y=0 \end{cases},\qquad p_m=\max(p-m,0),

    with :math:`w=1` on known entries and, on unknown ones (the *selective* mode),

    .. math::
        w_{ic}=0 \iff \hat P_c > \theta_P \ \text{ or }\ (i,c) \in \operatorname{top}_{kB}\{p_{jd} : y_{jd}=0\},

    i.e. a class whose estimated prior :math:`\hat P_c` exceeds :math:`\theta_P` ignores its
    unknowns (they are likely to hide positives), and the :math:`kB` unknown entries of the batch
    with the highest likelihood :math:`p` are ignored too; the other unknowns are negatives.

    Paper defaults (the reference code ``Alibaba-MIIL/PartialLabelingCSL``): :math:`\gamma_+=0`,
    :math:`\gamma_-=1`, :math:`\gamma_u=2`, :math:`\alpha_\pm=\alpha_u=1`, :math:`m=0`,
    :math:`k=5` (``likelihood_topk``), :math:`\theta_P=0.05`; the focusing weights carry no
    gradient (``detach_focusing``), as there.

    **Label prior.** The paper estimates :math:`\hat P_c` as the mean prediction of a model trained
    on the partial labels (their ``ComputePrior``). ``priors`` (a list of C values) fixes it; by
    default it is re-estimated at the end of every epoch from the model being trained,
    :math:`\hat P_c=\frac1N\sum_i\sigma(x_{ic})` over the whole training split (the trainer passes
    those scores to :meth:`update_pseudo_labels`); before the first estimate only the top-k rule
    applies. The prior is a buffer, saved in checkpoints.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 1.0, gamma_unann: float = 2.0,
                 alpha_pos: float = 1.0, alpha_neg: float = 1.0, alpha_unann: float = 1.0, clip: float = 0.0,
                 likelihood_topk: int = 5, prior_threshold: float = 0.05, priors: list[float] | None = None,
                 detach_focusing: bool = True) -> None:
        super().__init__()
        for name, v in dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, gamma_unann=gamma_unann, alpha_pos=alpha_pos,
                            alpha_neg=alpha_neg, alpha_unann=alpha_unann, clip=clip,
                            likelihood_topk=likelihood_topk, prior_threshold=prior_threshold).items():
            if not v >= 0:
                raise ConfigError(f"csl: {name} must be >= 0, got {v}")
        if clip >= 1:
            raise ConfigError(f"csl: clip must be < 1, got {clip}")
        if int(likelihood_topk) != likelihood_topk:
            raise ConfigError(f"csl: likelihood_topk must be a whole number, got {likelihood_topk}")
        self.gamma_pos, self.gamma_neg, self.gamma_unann = float(gamma_pos), float(gamma_neg), float(gamma_unann)
        self.alpha_pos, self.alpha_neg, self.alpha_unann = float(alpha_pos), float(alpha_neg), float(alpha_unann)
        self.clip = float(clip)
        self.likelihood_topk = int(likelihood_topk)
        self.prior_threshold = float(prior_threshold)
        self.detach_focusing = bool(detach_focusing)
        self.fixed_priors = priors is not None
        self.needs_epoch_scores = not self.fixed_priors  # the trainer passes the training split's logits
        if priors is not None:
            pr = torch.as_tensor(priors, dtype=torch.float32)
            if pr.ndim != 1 or not ((pr >= 0) & (pr <= 1)).all():
                raise ConfigError(f"csl: priors must be a list of C values in [0, 1], got {priors!r}")
        else:
            pr = torch.zeros(0)
        self.register_buffer("prior", pr)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        key = prefix + "prior"
        if key in state_dict and state_dict[key].shape != self.prior.shape:
            self._buffers["prior"] = torch.zeros_like(state_dict[key], device=self.prior.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def prepare(self, observed: Tensor) -> None:
        obs = as_observed_matrix(observed)
        if self.fixed_priors and self.prior.numel() != obs.shape[1]:
            raise ConfigError(f"csl: priors has {self.prior.numel()} values but the data has {obs.shape[1]} classes")

    @torch.no_grad()
    def update_pseudo_labels(self, scores: Tensor, epoch: int) -> int:
        """Re-estimate the label prior from the training split's logits [N, C] (unless ``priors`` is fixed)."""
        if self.fixed_priors:
            return 0
        s = torch.as_tensor(scores)
        if s.ndim != 2:
            raise ValueError(f"csl: scores must be [N, C] (the whole training split), got {tuple(s.shape)}")
        s = _check_scores("csl", s, tuple(s.shape))
        self._buffers["prior"] = torch.sigmoid(s).mean(0).to(self.prior.device)
        return 0

    def ignore_weights(self, logits: Tensor, observed: Tensor) -> Tensor:
        """The selective weights :math:`w` (float 0/1, [B, C]); computed without gradient."""
        with torch.no_grad():
            unknown = observed == 0
            w = torch.ones_like(logits)
            if self.prior.numel() and self.prior_threshold > 0:
                if self.prior.numel() != logits.shape[1]:
                    raise ValueError(f"csl: prior has {self.prior.numel()} classes, logits {logits.shape[1]}")
                high = (self.prior.to(logits.device) > self.prior_threshold).unsqueeze(0)
                w = w.masked_fill(unknown & high, 0.0)
            k = min(self.likelihood_topk * logits.shape[0], int(unknown.sum()))
            if k > 0:
                flat = logits.detach().masked_fill(~unknown, -math.inf).flatten()
                w.view(-1)[torch.topk(flat, k, sorted=False).indices] = 0.0
        return w

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        w_pos = focal_weight_pos(logits, self.gamma_pos)
        w_neg, log_1m_pm = shifted_negative(logits, self.clip, self.gamma_neg)
        w_unann, _ = shifted_negative(logits, self.clip, self.gamma_unann)
        if self.detach_focusing:
            w_pos, w_neg, w_unann = w_pos.detach(), w_neg.detach(), w_unann.detach()
        pos = -self.alpha_pos * w_pos * log_p(logits)
        neg = -self.alpha_neg * w_neg * log_1m_pm
        unann = -self.alpha_unann * w_unann * log_1m_pm
        m = torch.where(observed == 1, pos, torch.where(observed == -1, neg, unann))
        return m * self.ignore_weights(logits, observed), None


# --------------------------------------------------------------------------- SPA
@LOSSES.register("spa", "strictly proper asymmetric loss with a calibrated inverse link "
                        "(Cheng & Vasconcelos 2024)")
class StrictlyProperAsymmetricLoss(MultiLabelLoss):
    r"""Strictly proper asymmetric loss (SPA).

    .. math::
        \ell = \begin{cases} -\frac1{\zeta_+}\log\sigma\big(k_+(x-b_+)\big) & y=+1\\
        -\frac1{\zeta_-}\log\sigma\big(-k_-(x-b_-)\big) & y=-1
        \text{ (and } y=0 \text{ with } \texttt{unknown="negative"})\\
        0 & y=0 \text{ with } \texttt{unknown="ignore"} \end{cases}

    The asymmetry (a steeper, shifted negative term) plays the role of ASL's focusing, but the loss
    stays *strictly proper*: the minimiser of :math:`\eta\ell_+(x)+(1-\eta)\ell_-(x)` is unique,
    and the probability it encodes is recovered by the inverse link (:meth:`probabilities`)

    .. math::
        \hat\eta(x)=\frac{\frac{k_-}{\zeta_-}\sigma(k_-(x-b_-))}{\frac{k_-}{\zeta_-}\sigma(k_-(x-b_-))
        +\frac{k_+}{\zeta_+}\sigma(-k_+(x-b_+))}
        =\sigma\Big(\log\tfrac{k_-\zeta_+}{k_+\zeta_-}+\log\sigma(k_-(x-b_-))-\log\sigma(-k_+(x-b_+))\Big),

    which is increasing in :math:`x` (so rankings and mAP are those of the logits) and is the
    calibrated probability, unlike :math:`\sigma(x)`. Cheng & Vasconcelos, "Towards calibrated
    multi-label deep neural networks", CVPR 2024. Defaults :math:`\zeta_+=1, k_+=1, b_+=0,
    \zeta_-=5, k_-=3, b_-=1` are mlcpl's (the paper's code was not reachable here); unknown labels
    are ignored by default, as in mlcpl's ``PartialStrictlyProperAsymmetricWithLogitLoss``.

    mlcpl applies its loss to :math:`\hat\eta(x)` used *as a logit* (it overwrites the logits by the
    inverse link before the loss), which is neither the paper's loss nor proper; ``tests/
    test_mlcpl_parity.py`` shows that its value equals this loss evaluated at :math:`\hat\eta(x)`.
    """

    ignores_unknowns = True  # the default ``unknown: ignore``; set per instance

    entrywise = True

    def __init__(self, zeta_pos: float = 1.0, k_pos: float = 1.0, b_pos: float = 0.0, zeta_neg: float = 5.0,
                 k_neg: float = 3.0, b_neg: float = 1.0, unknown: str = "ignore") -> None:
        super().__init__()
        _check_positive("spa", zeta_pos=zeta_pos, k_pos=k_pos, zeta_neg=zeta_neg, k_neg=k_neg)
        if unknown not in ("negative", "ignore"):
            raise ConfigError(f"spa: unknown must be 'ignore' or 'negative', got {unknown!r}")
        self.zeta_pos, self.k_pos, self.b_pos = float(zeta_pos), float(k_pos), float(b_pos)
        self.zeta_neg, self.k_neg, self.b_neg = float(zeta_neg), float(k_neg), float(b_neg)
        self.unknown = unknown
        self.ignores_unknowns = unknown == "ignore"

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        pos = -log_p(self.k_pos * (logits - self.b_pos)) / self.zeta_pos
        neg = -log_1mp(self.k_neg * (logits - self.b_neg)) / self.zeta_neg
        out = torch.where(observed == 1, pos, neg)
        if self.unknown == "ignore":
            out = torch.where(observed == 0, torch.zeros_like(out), out)
        return out, None

    def link(self, logits: Tensor) -> Tensor:
        r"""The logit of :math:`\hat\eta(x)`: :math:`\log\tfrac{k_-\zeta_+}{k_+\zeta_-}+\log\sigma(k_-(x-b_-))
        -\log\sigma(-k_+(x-b_+))`, finite for every finite logit (float64 stays float64, else float32)."""
        x = logits if torch.is_tensor(logits) else torch.as_tensor(logits)  # (as_tensor would be a trace constant)
        x = x if x.dtype == torch.float64 else x.float()
        c = math.log(self.k_neg * self.zeta_pos / (self.k_pos * self.zeta_neg))
        return c + log_p(self.k_neg * (x - self.b_neg)) - log_1mp(self.k_pos * (x - self.b_pos))

    def probabilities(self, logits: Tensor) -> Tensor:
        r"""The calibrated probability :math:`\hat\eta(x)=\sigma(\mathrm{link}(x))` (the inverse link)."""
        return torch.sigmoid(self.link(logits))


# --------------------------------------------------------------------------- Durand et al.
def durand_g(known_fraction: Tensor, gamma: float, g_at_tenth: float) -> Tensor:
    r""":math:`g(p)=\alpha p^\gamma+\beta` with :math:`g(1)=1` and :math:`g(0.1)=` ``g_at_tenth``."""
    alpha = (g_at_tenth - 1.0) / (0.1**gamma - 1.0)
    return alpha * known_fraction.pow(gamma) + (1.0 - alpha)


class _PartialBCE(MultiLabelLoss):
    ignores_unknowns = True  # the known entries only (curriculum: until its pseudo-labels, from the model itself)

    def __init__(self, normalize: bool = True, gamma: float = 1.0, g_at_tenth: float = 5.0) -> None:
        super().__init__()
        _check_positive(type(self).__name__, gamma=gamma, g_at_tenth=g_at_tenth)
        self.normalize = bool(normalize)
        self.gamma = float(gamma)
        self.g_at_tenth = float(g_at_tenth)

    def _partial_bce(self, logits: Tensor, labels: Tensor) -> Tensor:
        m = torch.where(labels == 1, -log_p(logits), -log_1mp(logits))
        m = torch.where(labels == 0, torch.zeros_like(m), m)
        if self.normalize:
            frac = (labels != 0).float().mean(dim=1, keepdim=True)
            m = m * durand_g(frac, self.gamma, self.g_at_tenth)
        return m


@LOSSES.register("pbce", "partial BCE on known labels, normalised by the known fraction g(p) (Durand et al. 2019)")
class PartialBCELoss(_PartialBCE):
    r"""Partial BCE with Durand et al.'s normalisation by the proportion of known labels.

    .. math::
        \ell_{ic} = g(\rho_i)\,\big(-[y_{ic}=1]\log p_{ic}-[y_{ic}=-1]\log(1-p_{ic})\big),\qquad
        g(\rho)=\alpha\rho^\gamma+\beta,

    :math:`\rho_i` the fraction of image :math:`i`'s labels that are known. The mean over the
    :math:`B\times C` entries is Durand et al.'s :math:`\frac1B\sum_i\frac{g(\rho_i)}{C}\sum_c(\cdot)`.
    Durand, Mehrasa, Mori, CVPR 2019: :math:`\gamma=1`, :math:`\alpha,\beta` such that
    :math:`g(0.1)=5` and :math:`g(1)=1` (``g_at_tenth``). ``normalize: false`` is ``bce``.
    (mlcpl's ``normalize=True`` uses :math:`g=1/(1+n_\text{known})+1` instead.)
    """

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        return self._partial_bce(logits, observed), None


@LOSSES.register("curriculum", "curriculum pseudo-labelling of the easiest unknown labels + partial BCE "
                               "(Durand et al. 2019)")
class CurriculumLabellingLoss(ResizableStateMixin, _PartialBCE):
    r"""Partial BCE on the known labels plus curriculum pseudo-labels of the easiest unknown ones.

    After epoch :math:`e` (0-based) with :math:`e+1\ge e_0` and :math:`(e+1-e_0)` a multiple of
    ``every``, curriculum step :math:`s=(e+1-e_0)/\text{every}+1` labels the *originally unknown*
    entries from the model's training-set logits :math:`x`:

    * ``strategy: score`` (Durand et al.'s score threshold): :math:`\tilde y=\operatorname{sign}(x)`
      where :math:`|x|>\theta`;
    * ``strategy: proportion`` (their score proportion): :math:`\tilde y=\operatorname{sign}(x)` on
      the :math:`\lfloor\min(1,s\theta)\,U\rceil` unknown entries with the largest :math:`|x|`
      (:math:`U` = number of unknown entries), so the labelled share grows by :math:`\theta` per step.

    Training then uses :func:`PartialBCELoss` on :math:`y` where known, :math:`\tilde y` where
    pseudo-labelled, and ignores the rest:

    .. math:: \ell_{ic} = g(\rho_i)\,\big(-[\hat y_{ic}=1]\log p_{ic}-[\hat y_{ic}=-1]\log(1-p_{ic})\big),
              \quad \hat y = y \text{ if } y\neq0 \text{ else } \tilde y.

    Durand, Mehrasa, Mori, CVPR 2019, Sec. 4 (curriculum learning with pseudo-labels). Each step
    relabels from the current model (earlier pseudo-labels may change, as in mlcpl's
    ``CurriculumLabeling.update``). Defaults: ``proportion`` with :math:`\theta=0.1`, from epoch
    :math:`e_0=1`, every epoch (our choice: the paper reports several strategies and step sizes).
    The pseudo-labels are a buffer [N, C] keyed by ``index`` and saved in checkpoints.
    """

    stateful = True
    needs_epoch_scores = True  # the trainer passes the training split's logits after every epoch
    _state_names = ("pseudo", "unknown")

    def __init__(self, strategy: str = "proportion", threshold: float = 0.1, start_epoch: int = 1, every: int = 1,
                 normalize: bool = True, gamma: float = 1.0, g_at_tenth: float = 5.0) -> None:
        super().__init__(normalize, gamma, g_at_tenth)
        if strategy not in ("score", "proportion"):
            raise ConfigError(f"curriculum: strategy must be 'score' or 'proportion', got {strategy!r}")
        if strategy == "proportion" and not 0 < threshold <= 1:
            raise ConfigError(f"curriculum: the proportion per step must be in (0, 1], got {threshold}")
        if strategy == "score" and not threshold >= 0:
            raise ConfigError(f"curriculum: the score threshold must be >= 0, got {threshold}")
        if start_epoch < 1 or every < 1:
            raise ConfigError(f"curriculum: start_epoch and every must be >= 1, got {start_epoch}, {every}")
        self.strategy, self.threshold = strategy, float(threshold)
        self.start_epoch, self.every = int(start_epoch), int(every)
        self.register_buffer("pseudo", torch.zeros(0, 0, dtype=torch.int8))
        self.register_buffer("unknown", torch.zeros(0, 0, dtype=torch.bool))

    def prepare(self, observed: Tensor) -> None:
        obs = as_observed_matrix(observed)
        dev = self.pseudo.device
        self.pseudo = torch.zeros(obs.shape, dtype=torch.int8, device=dev)
        self.unknown = (obs == 0).to(dev)

    def step_of(self, epoch: int) -> int:
        """The curriculum step taken after ``epoch`` (0-based), 0 if none."""
        done = epoch + 1 - self.start_epoch
        if done < 0 or done % self.every:
            return 0
        return done // self.every + 1

    @torch.no_grad()
    def update_pseudo_labels(self, scores: Tensor, epoch: int) -> int:
        """Relabel the unknown entries from the training split's logits [N, C]; returns how many are labelled."""
        n, c = self.unknown.shape
        if n == 0:
            raise RuntimeError("curriculum: call prepare(observed_train) before update_pseudo_labels")
        step = self.step_of(epoch)
        if step == 0:
            return int((self.pseudo != 0).sum())
        x = _check_scores("curriculum", scores, (n, c)).to(self.unknown.device)
        if self.strategy == "score":
            chosen = self.unknown & (x.abs() > self.threshold)
        else:
            n_unknown = int(self.unknown.sum())
            k = int(round(min(1.0, step * self.threshold) * n_unknown))
            chosen = torch.zeros_like(self.unknown)
            if k > 0:
                flat = x.abs().masked_fill(~self.unknown, -1.0).flatten()
                chosen.view(-1)[torch.topk(flat, k, sorted=False).indices] = True
        sign = torch.where(x > 0, 1, -1).to(torch.int8)
        self.pseudo = torch.where(chosen, sign, torch.zeros_like(sign))
        return int(chosen.sum())

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        rows = state_rows(index, self.pseudo.shape[0], "curriculum", self.pseudo.device)
        if self.pseudo.shape[1] != logits.shape[1]:
            raise ValueError(f"curriculum: prepared for {self.pseudo.shape[1]} classes, got {logits.shape[1]}")
        pseudo = self.pseudo[rows].to(observed.device, observed.dtype)
        return self._partial_bce(logits, torch.where(observed == 0, pseudo, observed)), None

    def sync_state(self, reduce_max) -> None:
        """Every rank relabels from the same gathered scores: the state is identical already."""

    def num_pseudo_labels(self) -> int:
        return int((self.pseudo != 0).sum())
