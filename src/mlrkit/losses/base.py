"""The loss contract (after Cole et al. 2021).

Every loss maps (logits [B, C], observed labels [B, C] in {+1, 0, -1}) to a per-entry loss
matrix plus an optional scalar regulariser. One shared reduction turns them into the value that
``forward`` returns::

    L = mean over the B x C entries of loss_matrix  +  regulariser

(Cole et al. normalise by B*C whatever the number of known entries; so do we.)

Stateful losses (ROLE's label estimator, APL's soft negatives, LL-Cp's corrections, SPLC) keep
their state in buffers keyed by dataset row ``index``; the trainer calls :meth:`prepare` once
with the training split's observed labels, and the state travels in checkpoints.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.errors import ConfigError
from mlrkit.registry import Registry


def log_p(logits: Tensor) -> Tensor:
    """log sigmoid(x), finite for every finite x (no epsilon needed)."""
    return F.logsigmoid(logits)


def log_1mp(logits: Tensor) -> Tensor:
    """log(1 - sigmoid(x)) = log sigmoid(-x), finite for every finite x."""
    return F.logsigmoid(-logits)


def check_inputs(logits: Tensor, observed: Tensor, index: Tensor | None = None) -> None:
    """Assert the contract's inputs: same [B, C] shape, observed in {-1, 0, +1}, finite logits."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    if observed.shape != logits.shape:
        raise ValueError(f"observed {tuple(observed.shape)} != logits {tuple(logits.shape)}")
    if observed.is_floating_point():
        raise TypeError(f"observed labels must be an integer tensor in {{-1,0,1}}, got {observed.dtype}")
    if observed.numel() and (observed.min() < -1 or observed.max() > 1):
        raise ValueError("observed labels must be in {-1, 0, +1}")
    if index is not None and (index.ndim != 1 or index.shape[0] != logits.shape[0]):
        raise ValueError(f"index must be [B={logits.shape[0]}], got {tuple(index.shape)}")


class MultiLabelLoss(nn.Module):
    """Base class. Subclasses implement :meth:`loss_matrix`; ``forward`` applies the reduction."""

    #: whether the loss keeps per-example state keyed by ``index`` (needs ``index`` in forward)
    stateful: bool = False
    #: whether ``forward`` checks its inputs (:func:`check_inputs`); the trainer turns it off after the
    #: first batch, since every later batch comes from the same validated tensors
    validate_inputs: bool = True
    #: facts of the run this loss takes as constructor arguments, filled in by the engine unless set
    #: in the ``loss`` section: ``expected_num_pos`` (``data.expected_num_pos``), ``num_epochs``
    #: (``train.epochs``)
    run_context: tuple[str, ...] = ()
    #: learning-rate multiplier of the loss's own parameters (None: ``train.classifier_lr_mult``)
    lr_mult: float | None = None
    #: whether the trainer scores the whole training split after every epoch and passes the logits
    #: to :meth:`update_pseudo_labels` (pseudo-labelling losses such as EM+APL)
    needs_epoch_scores: bool = False
    #: trains on pseudo-labels that a method sets (``vlpl``): only with a method that ``makes_pseudo_labels``
    needs_pseudo_labels: bool = False
    #: whether each entry's loss depends only on that entry's logit and label (no batch-level
    #: selection, no per-row normalisation): MixUp-PME may then mix per-entry losses (mlrkit.engine.mixing)
    entrywise: bool = False
    #: whether every unknown entry gets zero loss (``pbce``, ``curriculum``, ``spa`` and ``focal`` with
    #: ``unknown: ignore``): such a loss learns what "absent" looks like from known negatives only, so on
    #: labels without any (single positive) nothing stops every score from rising; the trainer warns
    ignores_unknowns: bool = False

    def prepare(self, observed: Tensor) -> None:
        """Called once before training with the training split's observed labels [N, C] (int8)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called by the trainer at the end of every epoch (0-based)."""

    def update_pseudo_labels(self, scores: Tensor, epoch: int) -> object:
        """With ``needs_epoch_scores``: called after every epoch with the model's logits [N, C] on the
        whole training split (rows in the order given to :meth:`prepare`), before :meth:`on_epoch_end`."""
        return None

    def sync_state(self, reduce_max) -> None:
        """Distributed runs, at every epoch end: make index-keyed state identical on all ranks.

        ``reduce_max(tensor)`` takes the element-wise max across ranks in place. Default: nothing
        (stateless losses; state that every rank updates identically, e.g. from gathered scores).
        """

    def loss_matrix(
        self, logits: Tensor, observed: Tensor, *, index: Tensor | None, epoch: int
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(
        self, logits: Tensor, observed: Tensor, *, index: Tensor | None = None, epoch: int = 0
    ) -> Tensor:
        if self.validate_inputs:
            check_inputs(logits, observed, index)
        if self.stateful and index is None:
            raise ValueError(f"{type(self).__name__} is stateful: pass index= (dataset row ids)")
        matrix, reg = self.loss_matrix(logits.float(), observed, index=index, epoch=epoch)
        loss = matrix.mean()
        if reg is not None:
            loss = loss + reg
        return loss


LOSSES: Registry[type[MultiLabelLoss]] = Registry("loss")


def probabilities(loss_name: str, loss_params: dict, logits) -> np.ndarray:
    """Probabilities [N, C] (float64) from logits: the loss's inverse link when it defines one (``spa``:
    a strictly proper asymmetric loss's logits are calibrated only through it), else the sigmoid."""
    x = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss

    cls = LOSSES.get(loss_name)
    if hasattr(cls, "probabilities"):
        return cls(**loss_params).probabilities(x).numpy()
    return torch.sigmoid(x).numpy()


def build(name: str, **hparams) -> MultiLabelLoss:
    """Build a registered loss with its paper defaults, overridden by ``hparams``.

    An unknown hyper-parameter is a :class:`ConfigError` listing the valid ones.
    """
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss

    cls = LOSSES.get(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ConfigError(f"loss {name!r} has no hyper-parameter {unknown}; valid: {valid or 'none'}")
    return cls(**hparams)
