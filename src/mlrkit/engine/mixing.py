r"""Mixing augmentations adapted to partial labels: LogicMix and MixUp-PME (the ``mix`` config section).

Both act on a training batch (features or images, and observed labels in {+1, 0, -1}) before the
model sees it, in the trainer; randomness comes from torch's generator, which the trainer seeds
from (run seed, epoch), so runs are reproducible and resumable.

**LogicMix** (mlcpl's ``LogicMix``): with probability :math:`p` a
sample is replaced by the mean of itself and :math:`k-1` other samples of the batch,
:math:`k\sim U\{k_{\min},\dots,k_{\max}\}`, and its labels by their logical OR, which is exact
under missing labels:

.. math::
    \tilde x=\frac1k\sum_{j=1}^k x_j,\qquad
    \tilde y_c=\begin{cases}+1 & \exists j: y_{jc}=+1\\ -1 & \forall j: y_{jc}=-1\\
    0 & \text{otherwise (unknown)}\end{cases}

(one known positive makes the mix positive; it is negative only if every part is a known
negative). The mixed labels are hard three-state labels, so every non-stateful loss applies.

**MixUp-PME** (mixup for partial labels, mlcpl's ``MixUpPME``): each sample :math:`i` is
mixed with a random partner :math:`j` of the batch, :math:`\lambda\sim U(\alpha,1)`,

.. math::
    \tilde x=\lambda x_i+(1-\lambda)x_j,\qquad t=\lambda\,\tau(y_i)+(1-\lambda)\,\tau(y_j),
    \quad \tau(+1)=1,\ \tau(-1)=0,\ \tau(0)=\tfrac12,

and the entries unknown in :math:`y_i` stay unknown. The loss of a soft target :math:`t` is the
mixture of the loss's own positive and negative terms,

.. math:: \ell(x,t)=t\,\ell(x,+1)+(1-t)\,\ell(x,-1)\ \text{ where } y_{ic}\neq0,
          \qquad \ell(x,0) \text{ where } y_{ic}=0,

which for BCE is exactly BCE with the soft target (mlcpl's ``MixUpPME``). It needs a loss whose
entries are independent (``entrywise``: bce, an, focal, asl, hill, em, entmin, spa); per-sample
:math:`\lambda` and a permutation partner (mlcpl's batch version pairs the two halves of a batch).
Defaults (mlcpl's): LogicMix :math:`p=1`, :math:`k_{\min}=2`, :math:`k_{\max}=3`; MixUp
:math:`\alpha=0.75`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mlrkit.errors import ConfigError
from mlrkit.losses import MultiLabelLoss
from mlrkit.methods.training_sections import MixSection


def parse_mix(section: Any) -> MixSection | None:
    """The ``mix`` section, checked (:class:`~mlrkit.methods.training_sections.MixSection`); None if absent/``none``."""
    if section is None:
        return None
    spec = MixSection.parse(section, "mix")
    return None if spec.name == "none" else spec


def logic_mix_labels(parts: Tensor, used: Tensor | None = None) -> Tensor:
    """LogicMix of observed labels ``parts`` [B, K, C] (int8); ``used`` [B, K] marks the parts that count."""
    if used is None:
        used = torch.ones(parts.shape[:2], dtype=torch.bool, device=parts.device)
    u = used.unsqueeze(-1)
    any_pos = ((parts == 1) & u).any(dim=1)
    all_neg = ((parts == -1) | ~u).all(dim=1)
    out = torch.zeros(parts.shape[0], parts.shape[2], dtype=parts.dtype, device=parts.device)
    out = torch.where(all_neg, torch.full_like(out, -1), out)
    return torch.where(any_pos, torch.ones_like(out), out)


def logic_mix(inputs: Tensor, observed: Tensor, spec: MixSection) -> tuple[Tensor, Tensor]:
    """Apply LogicMix to a batch; returns (mixed inputs, mixed observed labels)."""
    b = inputs.shape[0]
    dev = inputs.device
    k = torch.randint(spec.k_min, spec.k_max + 1, (b,)).to(dev)
    others = torch.randint(0, b, (b, spec.k_max - 1)).to(dev)
    idx = torch.cat([torch.arange(b, device=dev).unsqueeze(1), others], dim=1)  # [B, K]
    used = torch.arange(spec.k_max, device=dev).unsqueeze(0) < k.unsqueeze(1)
    mixed = (torch.rand(b) < spec.p).to(dev)
    used = used & (mixed.unsqueeze(1) | (torch.arange(spec.k_max, device=dev) == 0).unsqueeze(0))
    w = used.to(inputs.dtype) / used.sum(dim=1, keepdim=True).to(inputs.dtype)
    x = (inputs[idx] * w.view(b, spec.k_max, *([1] * (inputs.ndim - 1)))).sum(dim=1)
    return x, logic_mix_labels(observed[idx], used)


def mixup_pme(inputs: Tensor, observed: Tensor, spec: MixSection) -> tuple[Tensor, Tensor, Tensor]:
    """MixUp-PME on a batch; returns (mixed inputs, soft targets t [B, C], lambda [B])."""
    b = inputs.shape[0]
    dev = inputs.device
    partner = torch.randperm(b).to(dev)
    lam = (spec.alpha + (1.0 - spec.alpha) * torch.rand(b)).to(dev)
    shape = (b, *([1] * (inputs.ndim - 1)))
    x = lam.view(shape).to(inputs.dtype) * inputs + (1 - lam.view(shape).to(inputs.dtype)) * inputs[partner]
    tau = torch.where(observed == 1, 1.0, torch.where(observed == -1, 0.0, 0.5)).to(dev)
    t = lam.unsqueeze(1) * tau + (1 - lam.unsqueeze(1)) * tau[partner]
    return x, t, lam


class SoftTargetLoss:
    """``loss_fn`` for a MixUp-PME batch: the soft-target mixture of an ``entrywise`` loss (module doc)."""

    def __init__(self, loss: MultiLabelLoss, soft: Tensor) -> None:
        self.loss, self.soft = loss, soft

    def __call__(self, logits: Tensor, observed: Tensor, *, index: Tensor | None = None, epoch: int = 0) -> Tensor:
        from mlrkit.losses import check_inputs

        check_inputs(logits, observed, index)
        x = logits.float()
        lm = self.loss.loss_matrix
        own, reg = lm(x, observed, index=index, epoch=epoch)
        as_pos, _ = lm(x, torch.ones_like(observed), index=index, epoch=epoch)
        as_neg, _ = lm(x, torch.full_like(observed, -1), index=index, epoch=epoch)
        t = self.soft.to(x.dtype)
        m = torch.where(observed != 0, t * as_pos + (1 - t) * as_neg, own)
        return m.mean() if reg is None else m.mean() + reg


class Mixer:
    """Applies the configured mix to training batches; built once per run by the trainer."""

    def __init__(self, spec: MixSection, loss: MultiLabelLoss, *, method_name: str = "",
                 own_training_step: bool = False) -> None:
        if getattr(loss, "stateful", False):
            raise ConfigError(f"mix {spec.name!r}: loss {type(loss).__name__} keeps per-image state keyed by "
                              "dataset rows, which a mixed sample does not have; use a loss without state")
        if spec.name == "mixup" and not getattr(loss, "entrywise", False):
            raise ConfigError(f"mix mixup needs a loss whose entries are independent (bce, an, focal, asl, hill, "
                              f"em, entmin, spa); {type(loss).__name__} selects or normalises across the batch")
        if own_training_step:
            raise ConfigError(f"mix {spec.name!r}: method {method_name!r} has its own training step "
                              "(several views or extra terms); mixing applies to single-view methods only")
        self.spec, self.loss = spec, loss

    def __call__(self, batch: dict) -> tuple[dict, Any]:
        x, obs = batch["inputs"], batch["observed"]
        if not x.is_floating_point():
            raise ConfigError(f"mix {self.spec.name!r}: inputs must be floating point, got {x.dtype}")
        batch = dict(batch)
        if self.spec.name == "logicmix":
            batch["inputs"], batch["observed"] = logic_mix(x, obs, self.spec)
            return batch, self.loss
        batch["inputs"], soft, _ = mixup_pme(x, obs, self.spec)
        return batch, SoftTargetLoss(self.loss, soft)


def build_mixer(cfg, method, loss: MultiLabelLoss, own_training_step: bool) -> Mixer | None:
    """The run's :class:`Mixer` from ``cfg``'s ``mix`` section, or None. ``own_training_step``: whether
    ``method`` overrides :meth:`mlrkit.methods.Method.training_step` (then it cannot be mixed)."""
    spec = parse_mix(cfg.extra.get("mix"))
    if spec is None:
        return None
    return Mixer(spec, loss, method_name=cfg.method.name, own_training_step=own_training_step)
