r"""``scpnet``: Ding et al., "Exploring Structured Semantic Prior for Multi Label Recognition with
Incomplete Labels", CVPR 2023. Models and the prior: :mod:`mlrkit.models.scpnet`.

**Cross-modality prompter** (eq. 5). A shared CoOp context of 4 vectors initialised from the token
embeddings of ``"a photo of a"`` (:class:`~mlrkit.models.prompt_learner.PromptLearner`) is fed with
each class name through the *frozen* CLIP text encoder, :math:`t_c = g([v_1..v_4, \text{name}_c])`;
the CLIP image encoder (ResNet or ViT tower) is fine-tuned. The text encoder runs at every step
(the context is learned); its weights are never trained nor saved.

**Prior-enhanced self-supervised learning** (PESSL, eqs. 8-13). Every training image comes as a
weak view :math:`x^w` (resize or random resized crop + horizontal flip) and a strong view
:math:`x^s` (the same kind of geometric augmentation drawn independently, then torchvision's RandAugment
and an erased square; with ``strong_augment: fixmatch``, the reference's FixMatch RandAugment with its
always-on Cutout on the image, before the geometric ops). With :math:`p^w=\sigma(\text{logits}(x^w))` (no gradient) and
:math:`p^s=\sigma(\text{logits}(x^s))`:

.. math::
    \Omega_n &= \{c \in \operatorname{TopK}_c(p^w_{n}) : p^w_{nc} \ge T_c\},
        \qquad m_n = \mathbb 1[\Omega_n \ne \emptyset]                                        && (8)\\
    \sigma_c &= \textstyle\sum_{i=1}^{N} S_{ic}                                                && (9)\\
    \beta_c &= \max\Big(\frac{\sigma_c}{\max\big(\max_{c'}\sigma_{c'},\ K N - \sum_{c'}\sigma_{c'}\big)},
        \ \frac1C\Big) \quad(\beta_c = 1/C \text{ while } \max\sigma < 1)                       && (10)\\
    T_c &= \tau_c\, \mathcal M(\beta_c), \qquad \mathcal M(x) = \frac{x}{2-x}                   && (11)\\
    L_{cst} &= -\frac{1}{BC}\sum_n m_n \sum_c \big[q_{nc}\log p^s_{nc} + (1-q_{nc})\log(1-p^s_{nc})\big]
                                                                                                 && (12)\\
    \tilde p_n &= A^* p^w_n, \qquad
    L_{dstl} = \frac{1}{BC}\sum_n m_n \sum_c
        \mathrm{KL}\big(\mathrm{Bern}(\tilde p_{nc})\,\|\,\mathrm{Bern}(p^s_{nc})\big)
                                                                                                 && (13)\\
    L &= L_{cls}(x^w) + \lambda_{cst} L_{cst} + \lambda_{dstl} L_{dstl}                          && (14)

where :math:`q_{nc}` is 1 for :math:`c\in\Omega_n` or an observed positive, 0 otherwise (an observed
negative stays 0), :math:`S` [N, C] holds the last :math:`q` of every training row that had a positive
(state keyed by the dataset index, saved in checkpoints), :math:`K` is ``confident_k``,
:math:`\tau_c` ``threshold`` (0.95) and :math:`\mathcal M` FlexMatch's convex mapping (Zhang et al.,
NeurIPS 2021). The status (10) is read before the batch updates :math:`S`. SASC, the structure-aware
calibration, is :math:`\tilde p = A^* p^w` (each class's calibrated score is the prior-weighted mean
of the scores of its associated classes). :math:`L_{cls}` is SPLC (Zhang et al., 2021: ``splc`` from
the loss zoo) on the weak view's logits; :math:`\lambda_{cst}=\lambda_{dstl}=1/8`. Both PESSL terms
average over the :math:`B\times C` entries like every mlrkit loss (the reference sums all three terms,
so the ratios between them are the same). The KL of (13) differs from the reference's binary
cross-entropy to :math:`\tilde p` by the entropy of :math:`\tilde p`, a constant: same gradients.

**Config** (section ``scpnet``, every key validated; unknown keys are a ConfigError): see
:data:`DEFAULTS` and ``docs/scpnet.md``. Ablation switches: ``sam`` (false: the plain
prompt-feature classifier), ``pessl`` (``both | cst | dstl | none``), ``graph_sam`` and
``graph_pessl`` (``static | dynamic``, see :mod:`mlrkit.models.scpnet`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mlrkit.engine.image_data import ImageBatches
from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.features.options import FeaturesSection
from mlrkit.methods.base import METHODS, Method, StepOutput, TaskInfo
from mlrkit.models.prompt_learner import TEXT_CHUNK, PromptLearner
from mlrkit.models.scpnet import (
    PRIOR_TEMPLATE,
    CLIPImageEncoder,
    SCPNetModel,
    StructuredPrior,
    cached_structured_prior,
    count_trainable,
)
from mlrkit.schema import Section
from mlrkit.utils import derive_seed

log = logging.getLogger("mlrkit")

PESSL_MODES = ("both", "cst", "dstl", "none")
TRAIN_ROWS_KEY = "scpnet_train_rows"


# ---------------------------------------------------------------------------- options
@dataclass
class SCPNetOptions:
    """The ``scpnet`` config section. Defaults: the paper's values, except where a comment says otherwise
    (``k``: all classes, while the reference's COCO recipe keeps 62 of 80; the strong view and evaluation
    resize: mlrkit's, see ``docs/scpnet.md`` "Deviations" and ``configs/scpnet/*-reference.yaml``)."""

    sam: bool = True                      # semantic association module (eqs. 6-7)
    pessl: str = "both"                   # both | cst | dstl | none
    graph_sam: str = "static"             # static | dynamic
    graph_pessl: str = "static"           # static | dynamic
    gcn_graph: str = "prior"              # prior (A*) | reweighted (A', the reference code's GCN input)
    k: int | None = None                  # prior top-K per row, the class itself included; null = all
    s: float = 0.2                        # re-weighting (eq. 3)
    tau_prior: float = 0.2                # softmax temperature tau' (eq. 4)
    template: str = PRIOR_TEMPLATE        # hand-written prompt of the prior
    ctx_init: str = "a photo of a"        # words initialising the learned context (eq. 5)
    gcn_layers: int = 3
    gcn_hidden: int | None = None         # null = 2 x D
    tau: float | str = 0.1                # likelihood temperature (eq. 7); "clip" = the VL model's own
    train_logit_scale: bool = True        # with tau "clip": train that logit scale (reference) | false: frozen
    lambda_cst: float = 0.125
    lambda_dstl: float = 0.125
    threshold: float = 0.95               # base threshold tau_c (eq. 11)
    confident_k: int = 2                  # top-K of the confident set (eq. 8)
    threshold_mapping: str = "convex"     # convex x/(2-x) | linear x
    dstl_on: str = "confident"            # distil on images with a confident set (reference) | all
    weak_scale: list[float] | None = None  # RandomResizedCrop scale of both views; null = plain resize
    flip: bool = True
    randaugment: list[int] | None = field(default_factory=lambda: [3, 5])  # [num_ops, magnitude]; null = off
    cutout: float = 0.0625                # Cutout area fraction of the strong view (0 = off)
    strong_augment: str = "torchvision"   # torchvision: RandAugment(randaugment) + erase `cutout` after the
    #                                       geometric ops | fixmatch: the reference's FixMatch RandAugment
    #                                       (randaugment[0] ops, magnitudes over the full range, Cutout side
    #                                       U[0, 0.5] W always) on the image, before the geometric ops
    eval_resize: str = "squash"           # squash: Resize((S, S)) | crop: Resize(S) + CenterCrop(S) (reference)
    interpolation: str = "model"          # model (the VL model's, bicubic for open_clip) | bilinear (reference)
    require_splc: bool = True             # L_cls must be the zoo's splc (false: any loss, e.g. the `an` baseline)
    text_chunk: int = TEXT_CHUNK          # class prompts per checkpointed text pass (0 = one pass); many classes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS = SCPNetOptions()


class SCPNetSection(Section):
    """The ``scpnet`` section's schema: :class:`SCPNetOptions` checked by :func:`parse_options`."""

    section_name = "scpnet"

    @classmethod
    def keys(cls) -> list[str]:
        return list(DEFAULTS.as_dict())

    @classmethod
    def parse(cls, d: Any, where: str | None = None) -> SCPNetOptions:  # type: ignore[override]
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"config section scpnet must be a mapping, got {d!r}")
        return parse_options(d)


def _bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ConfigError(f"scpnet.{key} must be true or false, got {v!r}")


def _int(key: str, v: Any, low: int = 1, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or int(v) < low:
        raise ConfigError(f"scpnet.{key} must be an integer >= {low}{' or null' if allow_none else ''}, got {v!r}")
    return int(v)


def _float(key: str, v: Any, low: float | None = None, high: float | None = None, open_low: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"scpnet.{key} must be a number, got {v!r}")
    x = float(v)
    if (low is not None and (x < low or (open_low and x == low))) or (high is not None and x > high):
        lo = "" if low is None else f"{'>' if open_low else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ConfigError(f"scpnet.{key} must be {' and '.join(p for p in (lo, hi) if p)}, got {v!r}")
    return x


def _choice(key: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ConfigError(f"scpnet.{key} must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def parse_options(section: dict[str, Any] | None) -> SCPNetOptions:
    """Validate the ``scpnet`` section; unknown keys and bad values are a :class:`ConfigError`."""
    section = dict(section or {})
    valid = list(DEFAULTS.as_dict())
    unknown = sorted(set(section) - set(valid))
    if unknown:
        hints = [f"{k} (did you mean {' or '.join(difflib.get_close_matches(k, valid, n=2))}?)"
                 if difflib.get_close_matches(k, valid, n=2) else k for k in unknown]
        raise ConfigError(f"unknown config key(s) scpnet.{', scpnet.'.join(hints)}; valid: {', '.join(valid)}")
    d = {**DEFAULTS.as_dict(), **section}
    o = SCPNetOptions()
    o.sam = _bool("sam", d["sam"])
    o.pessl = _choice("pessl", d["pessl"], PESSL_MODES)
    o.graph_sam = _choice("graph_sam", d["graph_sam"], ("static", "dynamic"))
    o.graph_pessl = _choice("graph_pessl", d["graph_pessl"], ("static", "dynamic"))
    o.gcn_graph = _choice("gcn_graph", d["gcn_graph"], ("prior", "reweighted"))
    o.k = _int("k", d["k"], 1, allow_none=True)
    o.s = _float("s", d["s"], 0.0, 1.0)
    o.tau_prior = _float("tau_prior", d["tau_prior"], 0.0, open_low=True)
    if not isinstance(d["template"], str) or d["template"].count("{}") != 1:
        raise ConfigError(f"scpnet.template needs exactly one '{{}}' for the class name, got {d['template']!r}")
    o.template = d["template"]
    if not isinstance(d["ctx_init"], str) or not d["ctx_init"].strip():
        raise ConfigError(f"scpnet.ctx_init must be non-empty words, got {d['ctx_init']!r}")
    o.ctx_init = d["ctx_init"]
    o.gcn_layers = _int("gcn_layers", d["gcn_layers"], 1)
    o.gcn_hidden = _int("gcn_hidden", d["gcn_hidden"], 1, allow_none=True)
    o.tau = "clip" if d["tau"] == "clip" else _float("tau", d["tau"], 0.0, open_low=True)
    o.lambda_cst = _float("lambda_cst", d["lambda_cst"], 0.0)
    o.lambda_dstl = _float("lambda_dstl", d["lambda_dstl"], 0.0)
    o.threshold = _float("threshold", d["threshold"], 0.0, 1.0, open_low=True)
    o.confident_k = _int("confident_k", d["confident_k"], 1)
    o.threshold_mapping = _choice("threshold_mapping", d["threshold_mapping"], ("convex", "linear"))
    o.dstl_on = _choice("dstl_on", d["dstl_on"], ("confident", "all"))
    ws = d["weak_scale"]
    if ws is not None:
        if not isinstance(ws, (list, tuple)) or len(ws) != 2 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in ws) \
                or not 0 < float(ws[0]) <= float(ws[1]) <= 1:
            raise ConfigError(f"scpnet.weak_scale must be [low, high] with 0 < low <= high <= 1 or null, got {ws!r}")
        ws = [float(ws[0]), float(ws[1])]
    o.weak_scale = ws
    o.flip = _bool("flip", d["flip"])
    ra = d["randaugment"]
    if ra is not None:
        if not isinstance(ra, (list, tuple)) or len(ra) != 2:
            raise ConfigError(f"scpnet.randaugment must be [num_ops, magnitude] or null, got {ra!r}")
        ra = [_int("randaugment[0] (num_ops)", ra[0], 1), _int("randaugment[1] (magnitude)", ra[1], 0)]
    o.randaugment = ra
    o.cutout = _float("cutout", d["cutout"], 0.0, 0.99)
    o.strong_augment = _choice("strong_augment", d["strong_augment"], ("torchvision", "fixmatch"))
    if o.strong_augment == "fixmatch" and o.randaugment is None:
        raise ConfigError("scpnet.strong_augment: fixmatch draws randaugment[0] ops; set scpnet.randaugment "
                          "(e.g. [3, 5], the magnitude is unused) or strong_augment: torchvision")
    o.eval_resize = _choice("eval_resize", d["eval_resize"], ("squash", "crop"))
    o.interpolation = _choice("interpolation", d["interpolation"], ("model", "bilinear", "bicubic"))
    o.train_logit_scale = _bool("train_logit_scale", d["train_logit_scale"])
    o.require_splc = _bool("require_splc", d["require_splc"])
    o.text_chunk = int(_int("text_chunk", d["text_chunk"], 0))
    return o


# ---------------------------------------------------------------------------- PESSL, eqs. 8-13
def learning_status(selected: Tensor, confident_k: int) -> Tensor:
    r"""Eqs. 9-10: per-class learning status :math:`\beta` [C] from the stored confident sets ``selected`` [N, C]."""
    n, c = selected.shape
    sigma = selected.float().sum(dim=0)
    if c == 0 or float(sigma.max() if n else 0.0) < 1:
        return torch.full((c,), 1.0 / max(c, 1), device=selected.device)
    unused = confident_k * n - float(sigma.sum())
    denom = max(float(sigma.max()), unused)
    return (sigma / denom).clamp_min(1.0 / c)


def class_thresholds(status: Tensor, threshold: float, mapping: str = "convex") -> Tensor:
    r"""Eq. 11: :math:`T_c = \tau_c\,\mathcal M(\beta_c)`, :math:`\mathcal M(x)=x/(2-x)` (convex) or :math:`x`."""
    if mapping == "convex":
        return threshold * status / (2.0 - status)
    if mapping == "linear":
        return threshold * status
    raise ConfigError(f"scpnet.threshold_mapping must be convex or linear, got {mapping!r}")


def confident_set(p_weak: Tensor, thresholds: Tensor, confident_k: int) -> tuple[Tensor, Tensor]:
    """Eq. 8: ``(omega, m)``: bool [B, C], the top-``K`` classes of each row at or above their
    threshold, and bool [B], whether an image has any."""
    k = min(int(confident_k), p_weak.shape[1])
    top = torch.zeros_like(p_weak, dtype=torch.bool).scatter_(1, p_weak.topk(k, dim=1).indices, True)
    omega = top & (p_weak >= thresholds.to(p_weak.dtype).unsqueeze(0))
    return omega, omega.any(dim=1)


def consistency_targets(omega: Tensor, observed: Tensor) -> Tensor:
    """:math:`q` [B, C] float: 1 on the confident set and on observed positives, 0 elsewhere and on
    observed negatives."""
    q = omega | (observed == 1)
    return (q & (observed != -1)).float()


def consistency_loss(logits_strong: Tensor, targets: Tensor, image_mask: Tensor) -> Tensor:
    """Eq. 12: binary cross-entropy of the strong view to ``targets``, on masked images, / (B x C)."""
    ls = logits_strong.float()
    bce = -(targets * F.logsigmoid(ls) + (1.0 - targets) * F.logsigmoid(-ls))
    return (bce * image_mask.float().unsqueeze(1)).sum() / max(ls.numel(), 1)


def calibrate(p_weak: Tensor, graph: Tensor) -> Tensor:
    r"""SASC (eq. 13): :math:`\tilde p_n = A^* p^w_n`, i.e. :math:`\tilde p_{nc}=\sum_j A^*_{cj}p^w_{nj}`, [B, C]."""
    return p_weak.float() @ graph.float().t()


def binary_kl(target: Tensor, logits: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mathrm{Bern}(a)\,\|\,\mathrm{Bern}(\sigma(x)))` per entry; :math:`0\log 0 = 0`."""
    a = target.float().clamp(0.0, 1.0)
    x = logits.float()
    return (torch.xlogy(a, a) - a * F.logsigmoid(x)) + (torch.xlogy(1.0 - a, 1.0 - a) - (1.0 - a) * F.logsigmoid(-x))


def distillation_loss(logits_strong: Tensor, calibrated: Tensor, image_mask: Tensor) -> Tensor:
    """Eq. 13: KL of the strong view's probabilities to the calibrated weak ones, on masked images, / (B x C)."""
    kl = binary_kl(calibrated, logits_strong)
    return (kl * image_mask.float().unsqueeze(1)).sum() / max(kl.numel(), 1)


@torch.no_grad()
def update_status(selected: Tensor, index: Tensor, targets: Tensor) -> None:
    """Store :math:`q` of the rows with a positive into the learning-status state ``selected`` [N, C]."""
    has = targets.sum(dim=1) >= 1
    if has.any():
        selected[index[has].to(selected.device)] = targets[has].to(selected.dtype)


def pessl_terms(model: SCPNetModel, logits_weak: Tensor, logits_strong: Tensor, observed: Tensor, index: Tensor,
                opts: SCPNetOptions, prompt_features: Tensor | None = None) -> dict[str, Tensor]:
    """Eqs. 8-13 for a batch; updates the model's learning-status state. Returns ``cst``, ``dstl`` and
    diagnostics (``confident_images``, ``confident_per_image``, ``threshold_mean``)."""
    with torch.no_grad():
        if len(index):
            model.ensure_rows(int(index.max()) + 1)
        p_w = torch.sigmoid(logits_weak.detach().float())
        status = learning_status(model.selected, opts.confident_k)
        thr = class_thresholds(status, opts.threshold, opts.threshold_mapping)
        omega, m = confident_set(p_w, thr, opts.confident_k)
        q = consistency_targets(omega, observed)
        update_status(model.selected, index, q)
    zero = logits_strong.sum() * 0.0
    out = {"cst": zero, "dstl": zero}
    if opts.pessl in ("both", "cst"):
        out["cst"] = consistency_loss(logits_strong, q, m)
    if opts.pessl in ("both", "dstl"):
        with torch.no_grad():
            graph = model.graph("pessl", prompt_features)
            p_cal = calibrate(p_w, graph)
        mask = m if opts.dstl_on == "confident" else torch.ones_like(m)
        out["dstl"] = distillation_loss(logits_strong, p_cal, mask)
    out["confident_images"] = m.float().mean()
    out["confident_per_image"] = omega.float().sum(dim=1).mean()
    out["threshold_mean"] = thr.mean()
    return out


def scpnet_step(model: SCPNetModel, batch: dict, loss_fn, epoch: int, opts: SCPNetOptions) -> tuple[Tensor, dict]:
    """Eq. 14 for one batch: ``(loss, terms)``. ``batch["strong"]`` is needed unless ``pessl: none``."""
    x_w, observed, index = batch["inputs"], batch["observed"], batch["index"]
    if opts.pessl == "none":
        logits_w = model(x_w).float()
        l_cls = loss_fn(logits_w, observed, index=index, epoch=epoch)
        return l_cls, {"cls": l_cls.detach()}
    if "strong" not in batch:
        raise MlrkitError("scpnet: PESSL needs the strong view (batch['strong']); use the method's own loader")
    x_s = batch["strong"]
    t, z = model.class_features()
    feats = model.image_encoder(torch.cat([x_w, x_s.to(x_w.device)]))  # one pass: both views share BN batches
    logits = model.logits(feats, z).float()
    logits_w, logits_s = logits[: len(x_w)], logits[len(x_w):]
    l_cls = loss_fn(logits_w, observed, index=index, epoch=epoch)
    terms = pessl_terms(model, logits_w, logits_s, observed, index, opts, t)
    total = l_cls + opts.lambda_cst * terms["cst"] + opts.lambda_dstl * terms["dstl"]
    return total, {"cls": l_cls.detach(), **{k: v.detach() for k, v in terms.items()}}


# ---------------------------------------------------------------------------- data
def _interpolation(vl, name: str = "model"):
    from mlrkit.data.transforms import model_interpolation

    return model_interpolation(vl.preprocess_cfg, name, "scpnet.interpolation")


def scpnet_transforms(vl, image_size: int, opts: SCPNetOptions) -> tuple[Callable, Callable, Callable]:
    """``(eval, weak, strong)`` transforms with the VL model's own mean and std.

    eval: ``eval_resize`` (squash Resize((S, S)) or crop Resize(S) + CenterCrop(S)); weak: Resize((S, S))
    or RandomResizedCrop(S, ``weak_scale``), horizontal flip; strong, ``strong_augment: torchvision``: a
    weak-style geometric draw, then torchvision's RandAugment(``randaugment``) and Cutout (``cutout``: the
    erased area fraction, a square filled with the mean colour, i.e. 0 after normalisation);
    ``fixmatch`` (the reference): :class:`~mlrkit.data.transforms.FixMatchRandAugment` on the image, then
    a weak-style geometric draw.
    """
    from torchvision import transforms as T

    from mlrkit.data.transforms import FixMatchRandAugment, normalize_ops, resize_ops

    interp = _interpolation(vl, opts.interpolation)
    size = int(image_size)
    tail = normalize_ops(vl.preprocess_cfg["mean"], vl.preprocess_cfg["std"])

    def geometric() -> list:
        ops: list = [T.RandomResizedCrop(size, scale=tuple(opts.weak_scale), interpolation=interp)
                     if opts.weak_scale else T.Resize((size, size), interpolation=interp)]
        if opts.flip:
            ops.append(T.RandomHorizontalFlip(0.5))
        return ops

    eval_tf = T.Compose([*resize_ops(size, opts.eval_resize, interp, "scpnet.eval_resize"), *tail])
    weak = T.Compose([*geometric(), *tail])
    if opts.strong_augment == "fixmatch":
        return eval_tf, weak, T.Compose([FixMatchRandAugment(opts.randaugment[0], 0.5), *geometric(), *tail])
    strong_ops = geometric()
    if opts.randaugment:
        strong_ops.append(T.RandAugment(num_ops=opts.randaugment[0], magnitude=opts.randaugment[1],
                                        interpolation=interp))
    strong_ops += tail
    if opts.cutout > 0:
        strong_ops.append(T.RandomErasing(p=1.0, scale=(opts.cutout, opts.cutout), ratio=(1.0, 1.0), value=0))
    return eval_tf, weak, T.Compose(strong_ops)


class TwoViewRows(Dataset):
    """Row i -> {"inputs": weak(image i), "strong": strong(image i) (if given), "observed", "targets", "index": i}."""

    def __init__(self, split, observed: np.ndarray | None, weak: Callable, strong: Callable | None) -> None:
        from mlrkit.engine.image_data import ImageRows

        self.rows = ImageRows(split, observed, weak)
        self.strong = strong

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        img = self.rows.images.load(i)
        out = {"inputs": self.rows.transform(img), "observed": self.rows.observed[i],
               "targets": self.rows.targets[i], "index": i}
        if self.strong is not None:
            out["strong"] = self.strong(img)
        return out


class TwoViewBatches(ImageBatches):
    """:class:`ImageBatches` (order and augmentation seeded per epoch) over :class:`TwoViewRows`."""

    def __init__(self, split, observed: np.ndarray | None, weak: Callable, strong: Callable | None,
                 batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(split, observed, weak, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                         pin_memory=pin_memory)
        self.dataset = TwoViewRows(split, observed, weak, strong)


# ---------------------------------------------------------------------------- building
def build_scpnet_model(vl, class_names: list[str], opts: SCPNetOptions, *, train_rows: int, seed: int = 0,
                       prior: StructuredPrior | None = None, cache_dir=None) -> SCPNetModel:
    """An :class:`SCPNetModel` for ``class_names`` on the frozen VL model ``vl`` (its image tower is copied
    and made trainable). ``prior`` defaults to the cached structured prior of ``vl``."""
    if prior is None:
        prior = cached_structured_prior(vl, class_names, k=opts.k, s=opts.s, tau=opts.tau_prior,
                                        template=opts.template, seed=seed, cache_dir=cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 5))
        prompt = PromptLearner(vl, class_names, csc=False, init=opts.ctx_init, text_chunk=opts.text_chunk)
        image_encoder = CLIPImageEncoder(vl)
        return SCPNetModel(vl, image_encoder, prompt, prior, sam=opts.sam, graph_sam=opts.graph_sam,
                           graph_pessl=opts.graph_pessl, gcn_graph=opts.gcn_graph, gcn_layers=opts.gcn_layers,
                           gcn_hidden=opts.gcn_hidden, tau=None if opts.tau == "clip" else float(opts.tau),
                           prior_k=opts.k, prior_s=opts.s, prior_tau=opts.tau_prior, train_rows=train_rows,
                           train_logit_scale=opts.train_logit_scale)


# ---------------------------------------------------------------------------- method
@METHODS.register("scpnet", "SCPNet: CLIP structured label prior + prompts + GCN + prior-enhanced "
                            "self-supervision (Ding et al. 2023)")
class SCPNetMethod(Method):
    """SCPNet (module docstring). Hyper-parameters live in the ``scpnet`` config section; the VL model is
    ``vl.model``; the loss (``loss.name``) must be ``splc`` unless ``scpnet.require_splc: false``."""

    input_kind = "images"
    default_loss = {"name": "splc"}
    uses_vl_text = True
    image_size_from_vl = True
    uses_vl = True
    config_sections = {"scpnet": SCPNetSection, "features": FeaturesSection}

    def __init__(self) -> None:
        super().__init__()
        self.options = parse_options(None)  # replaced by the run's section when ``cfg`` is set
        self._train_rows: int | None = None
        self._device: torch.device | str = "cpu"
        self._transforms: tuple | None = None
        self._info: dict[str, Any] = {}

    # -------------------------------------------------------------- config
    def configure(self, cfg) -> None:
        """The ``scpnet`` section (checked by the config loader) and the loss it requires."""
        super().configure(cfg)
        self.options = cfg.section("scpnet")
        if self.options.require_splc and cfg.loss.name != "splc":
            raise ConfigError(f"scpnet: L_cls follows Zhang et al. (loss `splc`), got loss {cfg.loss.name!r}; set "
                              "scpnet.require_splc: false to train SCPNet with another loss (e.g. the `an` baseline)")

    def vl_model(self, device=None):
        from mlrkit.vl import load_frozen

        return load_frozen(self.cfg.vl.model, seed=self.cfg.seed, device=device)

    # -------------------------------------------------------------- data
    def prepare_data(self, data, *, device, progress: bool = True) -> None:
        """Nothing to cache (the image encoder is trained); remembers the training split's size."""
        self._device = device
        self._train_rows = len(data.train)
        if data.train.images is None:
            raise MlrkitError("scpnet trains its image encoder: the dataset needs images")

    def transforms(self) -> tuple[Callable, Callable, Callable]:
        if self._transforms is None:
            self._transforms = scpnet_transforms(self.vl_model(), self.cfg.data.image_size, self.options)
        return self._transforms

    def eval_transform(self):
        return self.transforms()[0]

    def transform_summary(self) -> dict[str, str]:
        from mlrkit.data.transforms import describe

        eval_tf, weak, strong = self.transforms()
        train = f"weak: {describe(weak)}"
        if self.options.pessl != "none":
            train += f"; strong: {describe(strong)}"
        return {"train": train, "eval": describe(eval_tf)}

    def make_loader(self, split, observed, batch_size: int, *, train: bool, seed: int,
                    shard: tuple[int, int] = (0, 1)):
        """Training: weak (+ strong, unless ``pessl: none``) views; evaluation: the eval transform."""
        if shard[1] > 1:
            raise MlrkitError("scpnet does not support distributed training yet: the PESSL learning-status state "
                              "(keyed by dataset index) would differ between ranks; train with one process")
        eval_tf, weak, strong = self.transforms()
        tc = self.cfg.train
        pin = torch.cuda.is_available()
        if not train:
            return ImageBatches(split, observed, eval_tf, batch_size, shuffle=False, seed=seed,
                                num_workers=tc.num_workers, pin_memory=pin)
        return TwoViewBatches(split, observed, weak, None if self.options.pessl == "none" else strong, batch_size,
                              shuffle=True, seed=seed, num_workers=tc.num_workers, pin_memory=pin)

    # -------------------------------------------------------------- model
    def build_model(self, task: TaskInfo) -> nn.Module:
        rows = task.extras.get(TRAIN_ROWS_KEY)
        if rows is None:
            rows = self._train_rows or 0
        task.extras[TRAIN_ROWS_KEY] = int(rows)  # in the checkpoint: predict rebuilds the same state shape
        vl = self.vl_model()
        cache = self.cfg.section("features").cache_dir
        model = build_scpnet_model(vl, list(task.class_names), self.options, train_rows=int(rows), seed=self.cfg.seed,
                                   cache_dir=cache)
        nz = (model.prior > 0).sum(dim=1).float()
        prior_info = {"nonzeros_per_row_mean": float(nz.mean()), "diagonal_mean": float(model.prior.diag().mean()),
                      "classes": len(task.class_names)}
        self._info = {"options": self.options.as_dict(), "trainable_params": count_trainable(model),
                      "prior": prior_info}
        return model

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        """Checks the learning-status state fits the training split; writes the prior next to the run."""
        if model.selected.shape[0] != len(data.train):
            raise MlrkitError(f"scpnet: learning-status state has {model.selected.shape[0]} rows, the training split "
                              f"{len(data.train)}")
        if self.cfg.out:
            out = Path(self.cfg.out) / "scpnet_prior.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(out, prior=model.prior.cpu().numpy(), reweighted=model.prior_reweighted.cpu().numpy(),
                     class_names=np.array(model.class_names), k=-1 if self.options.k is None else self.options.k,
                     s=self.options.s, tau_prior=self.options.tau_prior)

    def run_info(self) -> dict[str, Any]:
        return dict(self._info)

    # -------------------------------------------------------------- training
    def training_step(self, model: nn.Module, batch: dict, loss_fn, epoch: int):
        """Eq. 14 (see :func:`scpnet_step`); its terms (L_cls, L_cst, L_dstl...) go to ``metrics.jsonl``."""
        if self.options.require_splc:
            from mlrkit.losses.robust import SPLCLoss

            if not isinstance(loss_fn, SPLCLoss):
                raise ConfigError(f"scpnet: L_cls must be the splc loss, got {type(loss_fn).__name__}")
        loss, terms = scpnet_step(model, batch, loss_fn, epoch, self.options)
        return StepOutput(loss, {k: torch.as_tensor(v).detach() for k, v in terms.items()})

    def classifier_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The GCN's weights: they get ``train.classifier_lr_mult`` (the reference's separate ``gcn_lr``)."""
        return [] if model.sam is None else [p for p in model.sam.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------- baseline
class CLIPLinearClassifier(nn.Module):
    """logits = W f(x) + b: the trainable CLIP image tower and a linear head (no text side)."""

    def __init__(self, vl, num_classes: int) -> None:
        super().__init__()
        self.image_encoder = CLIPImageEncoder(vl)
        self.classifier = nn.Linear(int(vl.embed_dim), num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.image_encoder(images).float())


@METHODS.register("clip-finetune", "CLIP image tower (vl.model, ResNet or ViT) + linear head trained end to end: "
                                   "the fine-tuning baseline of SCPNet's encoder")
class CLIPFinetuneMethod(Method):
    """The same trainable CLIP image tower as ``scpnet`` with a linear classifier, on the weak view only.

    Hyper-parameters: ``flip`` (horizontal flip, true) and ``weak_scale`` (RandomResizedCrop scale range,
    null = plain resize), as SCPNet's weak view. Any loss (``an`` for the baseline); the head gets
    ``train.classifier_lr_mult``.
    """

    input_kind = "images"
    image_size_from_vl = True
    uses_vl = True

    def __init__(self, flip: bool = True, weak_scale: list[float] | None = None) -> None:
        super().__init__()
        self.options = parse_options({"flip": flip, "weak_scale": weak_scale, "pessl": "none", "sam": False})
        self._transforms: tuple | None = None

    def vl_model(self, device=None):
        from mlrkit.vl import load_frozen

        return load_frozen(self.cfg.vl.model, seed=self.cfg.seed, device=device)

    def build_model(self, task: TaskInfo) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, 5))
            return CLIPLinearClassifier(self.vl_model(), task.num_classes)

    def eval_transform(self):
        if self._transforms is None:
            self._transforms = scpnet_transforms(self.vl_model(), self.cfg.data.image_size, self.options)
        return self._transforms[0]

    def make_loader(self, split, observed, batch_size: int, *, train: bool, seed: int,
                    shard: tuple[int, int] = (0, 1)):
        if self._transforms is None:
            self._transforms = scpnet_transforms(self.vl_model(), self.cfg.data.image_size, self.options)
        eval_tf, weak, _ = self._transforms
        extra = {"shard": shard} if shard[1] > 1 else {}
        return ImageBatches(split, observed, weak if train else eval_tf, batch_size, shuffle=train, seed=seed,
                            num_workers=self.cfg.train.num_workers, pin_memory=torch.cuda.is_available(), **extra)
