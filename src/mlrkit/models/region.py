r"""Class-specific region aggregation (DualCoOp, Sun et al., NeurIPS 2022, Sec. 3.3).

Notation: dense image features :math:`x_j \in \mathbb R^D` for the :math:`HW` regions
:math:`j` of an image (``VisionLanguageModel.encode_dense``), one positive and one negative class
feature :math:`t^+_c, t^-_c \in \mathbb R^D` per class :math:`c` (text embeddings of learned
prompts, or learned embeddings). The region logits are scaled cosine similarities

.. math::
    r^\pm_{c,j} = \tau_r \cos(x_j, t^\pm_c), \qquad \tau_r = 20,

pooled with a spatial softmax over the regions of the **positive** branch (the reference uses
the positive half's weights for both halves):

.. math::
    w_{c,j} = \frac{\exp r^+_{c,j}}{\sum_k \exp r^+_{c,k}}, \qquad
    s^\pm_c = \tau_o \sum_j w_{c,j}\, r^\pm_{c,j}, \qquad \tau_o = 5.

DualCoOp then applies a 2-way softmax over :math:`(s^-_c, s^+_c)`; its positive probability is

.. math::
    \frac{e^{s^+_c}}{e^{s^-_c} + e^{s^+_c}} = \sigma(s^+_c - s^-_c),

so mlrkit models return the single logit :math:`s^+_c - s^-_c` per class and every loss of the
zoo (which works on sigmoid logits) applies unchanged. The temperatures are the reference
implementation's constants (``20 * conv1d(...)`` then ``5 * (output * w).sum(-1)``); CLIP's own
learned ``logit_scale`` (about 100) is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REGION_SCALE = 20.0
"""DualCoOp's temperature :math:`\\tau_r` on region cosine similarities."""

OUTPUT_SCALE = 5.0
"""DualCoOp's factor :math:`\\tau_o` on the aggregated region logits."""


def region_logits(dense: Tensor, class_features: Tensor, scale: float = REGION_SCALE) -> Tensor:
    r"""Scaled cosine similarities :math:`r_{c,j} = \tau_r\cos(x_j, t_c)`, [B, K, HW].

    Args:
        dense: region features [B, HW, D].
        class_features: one feature per class (or per class and branch) [K, D].
        scale: :math:`\tau_r`.
    """
    if dense.ndim != 3 or class_features.ndim != 2 or dense.shape[-1] != class_features.shape[-1]:
        raise ValueError(f"dense [B, HW, D] and class features [K, D] must agree, got "
                         f"{tuple(dense.shape)} and {tuple(class_features.shape)}")
    x = F.normalize(dense.float(), dim=-1)
    t = F.normalize(class_features.float(), dim=-1)
    return scale * torch.einsum("bjd,kd->bkj", x, t)


def aggregate(
    pos: Tensor, neg: Tensor, output_scale: float = OUTPUT_SCALE, weights: str = "positive"
) -> tuple[Tensor, Tensor]:
    r"""Class-specific region aggregation: :math:`(s^+, s^-)`, each [B, C].

    Args:
        pos: positive region logits :math:`r^+` [B, C, HW].
        neg: negative region logits :math:`r^-` [B, C, HW].
        output_scale: :math:`\tau_o`.
        weights: ``"positive"`` (DualCoOp and its variants: :math:`w = \mathrm{softmax}_j r^+`
            pools both branches) or ``"separate"`` (each branch pooled with its own softmax,
            as the reference code of the vision-only baseline of Rawlekar et al. does).
    """
    if pos.shape != neg.shape or pos.ndim != 3:
        raise ValueError(f"positive and negative region logits must both be [B, C, HW], got "
                         f"{tuple(pos.shape)} and {tuple(neg.shape)}")
    w_pos = torch.softmax(pos, dim=-1)
    if weights == "positive":
        w_neg = w_pos
    elif weights == "separate":
        w_neg = torch.softmax(neg, dim=-1)
    else:
        raise ValueError(f"weights must be 'positive' or 'separate', got {weights!r}")
    return output_scale * (w_pos * pos).sum(-1), output_scale * (w_neg * neg).sum(-1)


def pair_to_logit(s_pos: Tensor, s_neg: Tensor) -> Tensor:
    r"""The sigmoid logit equivalent to DualCoOp's 2-way softmax: :math:`s^+ - s^-`."""
    return s_pos - s_neg


def logit_to_pair_probability(s_pos: Tensor, s_neg: Tensor) -> Tensor:
    r"""DualCoOp's positive probability :math:`\mathrm{softmax}(s^-, s^+)_1` (for tests and reports)."""
    return torch.softmax(torch.stack([s_neg, s_pos], dim=1), dim=1)[:, 1]
