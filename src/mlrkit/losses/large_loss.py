r"""Large-loss modification (LL-R, LL-Ct, LL-Cp), Kim et al., CVPR 2022.

Kim, Kim, Lee, Kim, Lee, "Large Loss Matters in Weakly Supervised Multi-Label Classification",
CVPR 2022 (reference code ``snucml/LargeLossMatters``; defaults as the BoostLU code of Kim et al.,
"Bridging the gap between model explanations in partially annotated multi-label
classification", CVPR 2023, ``youngwk/BridgeGapExplanationPAMC``).

Training uses assume-negative BCE; in every batch the unknown entries (``observed == 0``) whose
AN loss :math:`-\log(1-p)` is largest are taken to be false negatives, and are

* **LL-R** (``ll_r``): rejected, their loss set to 0;
* **LL-Ct** (``ll_ct``): corrected for this step only, their loss becomes :math:`-\log p`;
* **LL-Cp** (``ll_cp``): corrected permanently: recorded in a state buffer [N, C] keyed by
  ``index``, they are observed positives from then on (and get :math:`-\log p` at once).

How many (0-based epoch :math:`e`, :math:`B\times C` entries in the batch, rate :math:`\Delta` =
``delta_rel`` as a fraction): LL-R and LL-Ct select :math:`\lceil BC\cdot e\Delta\rceil` entries
(the rejection rate starts at 0 and grows by :math:`\Delta` per epoch); LL-Cp selects
:math:`\lceil BC\cdot\Delta\rceil` entries per batch from epoch 1 on (0 in epoch 0), since its
corrections accumulate, as in both reference codes. The count is capped by the number of unknown
entries in the batch; only unknown entries are candidates (known labels are never modified); ties
are broken by ``torch.topk`` so exactly that many entries are selected. Defaults: :math:`\Delta` =
0.5 % (LL-R), 0.2 % (LL-Ct), 0.1 % (LL-Cp), the BoostLU code's values. The scheme is chosen by
class (compared with ``==`` where a name is involved): the LargeLossMatters code compared the name
with ``is``, which made its LL-Cp silently run as LL-Ct.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlrkit.errors import ConfigError
from mlrkit.losses.base import LOSSES, MultiLabelLoss, log_1mp, log_p
from mlrkit.losses.regularized import ResizableStateMixin, as_observed_matrix, state_rows

#: BoostLU code's default rates (percent there, fractions here).
DELTA_REL_DEFAULTS: dict[str, float] = {"LL-R": 0.005, "LL-Ct": 0.002, "LL-Cp": 0.001}


def select_largest(losses: Tensor, candidates: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` candidate entries with the largest ``losses`` (capped at #candidates)."""
    k = min(int(k), int(candidates.sum()))
    mask = torch.zeros(losses.numel(), dtype=torch.bool, device=losses.device)
    if k > 0:
        flat = losses.detach().masked_fill(~candidates, -math.inf).flatten()
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(losses)


class _LargeLossModification(MultiLabelLoss):
    scheme: str = ""

    def __init__(self, delta_rel: float) -> None:
        super().__init__()
        if not 0.0 <= delta_rel <= 1.0:
            raise ConfigError(f"{self.scheme}: delta_rel is a fraction in [0, 1] (0.005 = 0.5 %), got {delta_rel}")
        self.delta_rel = float(delta_rel)
        #: the entries selected in the last forward (detached, [B, C]), for logging and tests
        self.last_selected: Tensor | None = None

    def selection_fraction(self, epoch: int) -> float:
        """The fraction of the batch's B*C entries selected at ``epoch`` (0-based)."""
        if self.scheme == "LL-Cp":
            return self.delta_rel if epoch >= 1 else 0.0
        return min(1.0, max(0, epoch) * self.delta_rel)

    def num_selected(self, numel: int, epoch: int) -> int:
        """``ceil(numel * fraction)``, rounded first so that 200 * 3 * 0.005 gives 3, not 4."""
        return math.ceil(round(numel * self.selection_fraction(epoch), 9))

    def _base_observed(self, observed: Tensor, index: Tensor | None) -> Tensor:
        return observed

    def _record(self, selected: Tensor, index: Tensor | None) -> None:
        """Permanent corrections (LL-Cp only)."""

    def loss_matrix(self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int):
        obs = self._base_observed(observed, index)
        lp_neg, lp_pos = -log_1mp(logits), -log_p(logits)
        an = torch.where(obs == 1, lp_pos, lp_neg)
        k = self.num_selected(logits.numel(), epoch)
        selected = select_largest(an, obs == 0, k)
        self.last_selected = selected
        if self.scheme == "LL-R":
            m = torch.where(selected, torch.zeros_like(an), an)
        else:  # LL-Ct and LL-Cp: the selected entries are positives for this step
            m = torch.where(selected, lp_pos, an)
        if self.scheme == "LL-Cp":
            self._record(selected, index)
        return m, None

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, delta_rel={self.delta_rel}"


@LOSSES.register("ll_r", "large-loss rejection: largest unknown-entry AN losses set to 0 (Kim et al. 2022)")
class LargeLossRejection(_LargeLossModification):
    r"""LL-R: AN with the largest unknown-entry losses rejected.

    .. math::
        \ell = \begin{cases} -\log p & y=+1\\ 0 & y=0,\ \text{among the } \lceil BC\,e\Delta\rceil
        \text{ largest } -\log(1-p)\\ -\log(1-p) & \text{otherwise}\end{cases}

    Kim et al., CVPR 2022; :math:`\Delta=0.5\,\%` per epoch. See :mod:`mlrkit.losses.large_loss`.
    """

    scheme = "LL-R"

    def __init__(self, delta_rel: float = DELTA_REL_DEFAULTS["LL-R"]) -> None:
        super().__init__(delta_rel)


@LOSSES.register("ll_ct", "large-loss temporary correction: largest unknown-entry losses flipped to "
                          "positive for the step (Kim et al. 2022)")
class LargeLossTemporaryCorrection(_LargeLossModification):
    r"""LL-Ct: AN with the largest unknown-entry losses treated as positives for this step.

    .. math::
        \ell = \begin{cases} -\log p & y=+1 \text{ or } (y=0 \text{ among the }
        \lceil BC\,e\Delta\rceil \text{ largest } -\log(1-p))\\ -\log(1-p) & \text{otherwise}\end{cases}

    Kim et al., CVPR 2022; :math:`\Delta=0.2\,\%` per epoch. See :mod:`mlrkit.losses.large_loss`.
    """

    scheme = "LL-Ct"

    def __init__(self, delta_rel: float = DELTA_REL_DEFAULTS["LL-Ct"]) -> None:
        super().__init__(delta_rel)


@LOSSES.register("ll_cp", "large-loss permanent correction: largest unknown-entry losses become "
                          "positives for good (Kim et al. 2022)")
class LargeLossPermanentCorrection(ResizableStateMixin, _LargeLossModification):
    r"""LL-Cp: AN where the largest unknown-entry losses are permanently flipped to positive.

    With :math:`\tilde y` the observed labels with the recorded corrections applied (+1):

    .. math::
        \ell = \begin{cases} -\log p & \tilde y=+1 \text{ or } (\tilde y=0 \text{ among the }
        \lceil BC\Delta\rceil \text{ largest } -\log(1-p),\ e\ge1)\\ -\log(1-p) & \text{otherwise}\end{cases}

    and the entries selected in a step are added to the corrections. Kim et al., CVPR 2022;
    :math:`\Delta=0.1\,\%` per batch. The corrections live in the boolean buffer ``corrected``
    [N, C] allocated by :meth:`prepare` and keyed by ``index``; it is part of ``state_dict()``, so
    a resumed run continues exactly. They are recorded only in training mode with gradients
    enabled (a validation forward never changes them).
    """

    scheme = "LL-Cp"
    stateful = True
    _state_names = ("corrected",)

    def __init__(self, delta_rel: float = DELTA_REL_DEFAULTS["LL-Cp"]) -> None:
        super().__init__(delta_rel)
        self.register_buffer("corrected", torch.zeros(0, 0, dtype=torch.bool))

    def prepare(self, observed: Tensor) -> None:
        obs = as_observed_matrix(observed)
        self.corrected = torch.zeros(obs.shape, dtype=torch.bool, device=self.corrected.device)

    def _rows(self, index: Tensor | None) -> Tensor:
        return state_rows(index, self.corrected.shape[0], "ll_cp", self.corrected.device)

    def _base_observed(self, observed: Tensor, index: Tensor | None) -> Tensor:
        rows = self._rows(index)
        if self.corrected.shape[1] != observed.shape[1]:
            raise ValueError(f"ll_cp: prepared for {self.corrected.shape[1]} classes, got {observed.shape[1]}")
        flipped = self.corrected[rows].to(observed.device) & (observed == 0)
        return torch.where(flipped, torch.ones_like(observed), observed)

    def _record(self, selected: Tensor, index: Tensor | None) -> None:
        if not (self.training and torch.is_grad_enabled()):
            return
        rows = self._rows(index)
        b, c = selected.nonzero(as_tuple=True)
        if b.numel():
            self.corrected[rows[b.to(rows.device)], c.to(rows.device)] = True

    def sync_state(self, reduce_max) -> None:
        """Distributed runs: each rank flipped entries of its own rows; the union is kept everywhere."""
        reduce_max(self.corrected)

    def num_corrected(self) -> int:
        """How many entries have been flipped to positive so far."""
        return int(self.corrected.sum())
