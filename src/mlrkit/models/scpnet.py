r"""SCPNet (Ding et al., "Exploring Structured Semantic Prior for Multi Label Recognition with Incomplete
Labels", CVPR 2023): the structured prior, the semantic association module and the model.

Notation: :math:`C` classes, :math:`D` the width of the joint image-text space, :math:`t_i\in\mathbb R^D`
the text feature of class :math:`i`, :math:`f\in\mathbb R^D` an image feature.

**Structured prior prompter** (eqs. 1-4). From the CLIP text features of the hand-written prompts
``"a photo of a [CLS]."``:

.. math::
    A_{ij} &= \cos(t_i, t_j)                                                          && (1)\\
    \Omega_i &= \operatorname{TopK}_j(A_{ij}) \quad(\text{always containing } i)      && (2)\\
    A'_{ij} &= \begin{cases} 1-s & i=j\\
        s\,\dfrac{A^+_{ij}}{\sum_{k\in\Omega_i, k\ne i} A^+_{ik}} & j\in\Omega_i,\ j\ne i\\
        0 & j\notin\Omega_i\end{cases}                                                && (3)\\
    A^*_{ij} &= \frac{\mathbb 1[j\in\Omega_i]\exp(A'_{ij}/\tau')}
                     {\sum_{k\in\Omega_i}\exp(A'_{ik}/\tau')}                         && (4)

:math:`A^+=\max(A,0)`: a negative cosine (random-weight models) carries no association; a row whose
kept off-diagonal similarities are all zero keeps only its diagonal :math:`1-s` before the softmax.
``K`` counts the diagonal (with CLIP features a class is always its own nearest neighbour, as in the
reference code's ``topk`` over the raw similarity); ``K = C`` keeps every class. Every row of
:math:`A^*` sums to 1 and has at most ``K`` non-zeros. The re-weighting (3) is the one of ML-GCN
(Chen et al., CVPR 2019): the diagonal keeps weight :math:`1-s`, the neighbours share :math:`s`.

**Semantic association module** (eqs. 6-7). :math:`L` graph-convolution layers over the label
features :math:`H^0 = [t_1..t_C]` (the cross-modality prompter's output, eq. 5):

.. math::
    H^{l+1} &= \delta\big(\hat A\,H^l W^l\big)                                       && (6)\\
    Z^* &= H^0 + H^L, \qquad P(c\mid x) = \sigma\big(\cos(f(x), z^*_c)/\tau\big)       && (7)

with :math:`\delta` = LeakyReLU(0.2) after every layer but the last, :math:`\hat A = A^*` by default
(``gcn_graph="reweighted"`` uses :math:`A'` of eq. 3, which is what the reference code feeds its GCN)
and widths :math:`D\to 2D\to\dots\to 2D\to D`.

**Static vs dynamic graph** (Tables 3-5 switches). *Static*: :math:`A^*` computed once from the
hand-written prompts' CLIP features and fixed. *Dynamic* (our reading of the paper's "updated"
graph; the reference code has only the static one): eqs. 1-4 are re-applied at every step to the
*current* learned prompt features :math:`t_c` (eq. 5), with the same ``K``, ``s``, :math:`\tau'`;
the graph is treated as a constant (no gradient flows through it). At initialisation the learned
context equals ``"a photo of a"``, so both graphs start identical.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.errors import ConfigError, MlrkitError

PRIOR_TEMPLATE = "a photo of a {}."


# ---------------------------------------------------------------------------- structured prior
def cosine_similarity_matrix(features: Tensor) -> Tensor:
    """Eq. 1: :math:`A_{ij}=\\cos(t_i,t_j)`, [C, C] (float32)."""
    if features.ndim != 2:
        raise MlrkitError(f"class features must be [C, D], got {tuple(features.shape)}")
    f = F.normalize(features.float(), dim=-1)
    return f @ f.t()


def _check_prior_params(k: int | None, s: float, tau: float) -> None:
    if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
        raise ConfigError(f"scpnet: the prior's top-K must be a positive integer or null (all classes), got {k!r}")
    if not 0.0 <= s <= 1.0:
        raise ConfigError(f"scpnet: the re-weighting s must be in [0, 1], got {s}")
    if not tau > 0:
        raise ConfigError(f"scpnet: the prior temperature tau' must be > 0, got {tau}")


def topk_mask(similarity: Tensor, k: int | None) -> Tensor:
    """Eq. 2: bool [C, C], True at the ``k`` most similar classes of each row (the class itself included).

    ``k=None`` or ``k >= C`` keeps every class; ties are broken by ``torch.topk``.
    """
    c = similarity.shape[0]
    k = c if k is None else min(int(k), c)
    s = similarity.float().clone()
    s.fill_diagonal_(math.inf)  # the class itself is always kept
    idx = s.topk(k, dim=1).indices
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, idx, True)


def reweight(similarity: Tensor, mask: Tensor, s: float) -> Tensor:
    """Eq. 3: diagonal :math:`1-s`; kept neighbours share :math:`s` in proportion to :math:`\\max(A,0)`."""
    c = similarity.shape[0]
    eye = torch.eye(c, dtype=torch.bool, device=similarity.device)
    off = mask & ~eye
    a = torch.where(off, similarity.float().clamp_min(0.0), torch.zeros((), device=similarity.device))
    denom = a.sum(dim=1, keepdim=True)
    w = torch.where(denom > 0, s * a / denom.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))
    return w + (1.0 - s) * eye.float()


def masked_softmax(weights: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Eq. 4: row-wise softmax of :math:`A'/\\tau'` over the kept entries; zero elsewhere."""
    logits = (weights.float() / tau).masked_fill(~mask, -math.inf)
    return torch.softmax(logits, dim=1)


@dataclass
class StructuredPrior:
    """The four matrices of eqs. 1-4, each [C, C]: ``similarity`` A, ``mask`` (top-K), ``reweighted`` A',
    ``prior`` A*."""

    similarity: Tensor
    mask: Tensor
    reweighted: Tensor
    prior: Tensor


def prior_from_features(features: Tensor, *, k: int | None, s: float, tau: float) -> StructuredPrior:
    """Eqs. 1-4 applied to class features [C, D]."""
    _check_prior_params(k, s, tau)
    sim = cosine_similarity_matrix(features)
    mask = topk_mask(sim, k)
    rew = reweight(sim, mask, s)
    return StructuredPrior(sim, mask, rew, masked_softmax(rew, mask, tau))


# ---------------------------------------------------------------------------- semantic association
class GraphConvolution(nn.Module):
    r"""One graph convolution :math:`H' = \hat A H W` (Kipf & Welling; no bias, as in SCPNet's code).

    :math:`W` is initialised uniformly in :math:`\pm 1/\sqrt{d_\text{out}}`.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(out_dim)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} -> {self.weight.shape[1]}"

    def forward(self, h: Tensor, adj: Tensor) -> Tensor:
        return adj @ (h @ self.weight)


class SemanticAssociation(nn.Module):
    r"""Eqs. 6-7: ``layers`` graph convolutions :math:`D\to h\to\dots\to h\to D` with LeakyReLU(0.2)
    between them, and the residual :math:`Z^* = H^0 + H^L`."""

    def __init__(self, dim: int, layers: int = 3, hidden: int | None = None, negative_slope: float = 0.2) -> None:
        super().__init__()
        if layers < 1:
            raise ConfigError(f"scpnet.gcn_layers must be >= 1, got {layers}")
        hidden = 2 * dim if hidden is None else int(hidden)
        if hidden < 1:
            raise ConfigError(f"scpnet.gcn_hidden must be >= 1, got {hidden}")
        dims = [dim] + [hidden] * (layers - 1) + [dim]
        self.layers = nn.ModuleList(GraphConvolution(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.negative_slope = float(negative_slope)

    def propagate(self, h0: Tensor, adj: Tensor) -> Tensor:
        """:math:`H^L` (eq. 6)."""
        h = h0
        for i, layer in enumerate(self.layers):
            h = layer(h, adj)
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, self.negative_slope)
        return h

    def forward(self, h0: Tensor, adj: Tensor) -> Tensor:
        """:math:`Z^* = H^0 + H^L` [C, D] (eq. 7)."""
        if adj.shape != (h0.shape[0], h0.shape[0]):
            raise MlrkitError(f"adjacency {tuple(adj.shape)} does not fit {h0.shape[0]} label features")
        return h0 + self.propagate(h0, adj.to(h0.dtype))


# ---------------------------------------------------------------------------- image tower
class _VisualShell(nn.Module):
    """What :class:`~mlrkit.vl.VisionLanguageModel`'s image side reads from ``clip``: ``visual`` and
    ``logit_scale`` (its device and dtype)."""

    def __init__(self, visual: nn.Module, logit_scale: Tensor) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("logit_scale", logit_scale.detach().clone())


class CLIPImageEncoder(nn.Module):
    """A trainable copy of a VL model's image tower (open_clip ModifiedResNet or ViT).

    Pooled, projected features come from :meth:`VisionLanguageModel.encode_image` (native or resized
    positional embeddings), so any input resolution works for both tower kinds. The text tower is not
    copied: it stays in the frozen VL model, out of the optimiser and out of checkpoints.
    """

    def __init__(self, vl) -> None:
        super().__init__()
        from mlrkit.vl.model import VisionLanguageModel

        shell = _VisualShell(copy.deepcopy(vl.clip.visual), vl.clip.logit_scale)
        for p in shell.visual.parameters():
            p.requires_grad_(True)
        self.tower = VisionLanguageModel(shell, spec=vl.spec, model_cfg=vl.model_cfg,
                                         preprocess_cfg=vl.preprocess_cfg,
                                         tokenizer_factory=vl._tokenizer_factory).train()
        self.embed_dim = int(vl.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Image features [B, D] (not normalised)."""
        return self.tower.encode_image(images)


# ---------------------------------------------------------------------------- model
GRAPHS = ("static", "dynamic")


class SCPNetModel(nn.Module):
    r"""SCPNet: trainable image encoder, CoOp prompts on the frozen text encoder (eq. 5), optional
    semantic association module (eqs. 6-7), and the PESSL learning-status state.

    ``forward(images)`` returns the logits :math:`\cos(f, z^*_c)/\tau` [B, C] (eq. 7; without SAM
    :math:`z^*_c = t_c`, the plain prompt-feature classifier).

    Args:
        vl: the frozen VL model (text side); held outside the module tree (see :attr:`vl`).
        image_encoder: the trainable :class:`CLIPImageEncoder`.
        prompt: a :class:`~mlrkit.models.prompt_learner.PromptLearner` (shared context, eq. 5).
        prior: the static structured prior (eqs. 1-4).
        sam: use the semantic association module.
        graph_sam / graph_pessl: ``static`` or ``dynamic`` graph (module docstring).
        gcn_graph: ``prior`` (:math:`A^*`) or ``reweighted`` (:math:`A'`) as the GCN's adjacency.
        gcn_layers / gcn_hidden: depth L and hidden width (default 2D) of the GCN.
        tau: likelihood temperature :math:`\tau` (eq. 7); ``None`` uses the VL model's learned one.
        train_logit_scale: with ``tau=None``, make that logit scale a trained parameter of this model
            (the reference code's ``scale: clip`` trains CLIP's ``logit_scale``), else keep it frozen.
        prior_k / prior_s / prior_tau: K, s, :math:`\tau'` (used again by dynamic graphs).
        train_rows: rows of the training split (size of the learning-status state).
    """

    def __init__(self, vl, image_encoder: CLIPImageEncoder, prompt: nn.Module, prior: StructuredPrior, *,
                 sam: bool = True, graph_sam: str = "static", graph_pessl: str = "static", gcn_graph: str = "prior",
                 gcn_layers: int = 3, gcn_hidden: int | None = None, tau: float | None = 0.1,
                 prior_k: int | None = None, prior_s: float = 0.2, prior_tau: float = 0.2,
                 train_rows: int = 0, train_logit_scale: bool = True) -> None:
        super().__init__()
        if not getattr(vl, "frozen", False):
            vl.freeze()
        for name, value in (("graph_sam", graph_sam), ("graph_pessl", graph_pessl)):
            if value not in GRAPHS:
                raise ConfigError(f"scpnet.{name} must be one of {GRAPHS}, got {value!r}")
        if gcn_graph not in ("prior", "reweighted"):
            raise ConfigError(f"scpnet.gcn_graph must be prior or reweighted, got {gcn_graph!r}")
        object.__setattr__(self, "_vl", vl)  # not a submodule: out of state_dict, EMA copies and parameter lists
        self.image_encoder = image_encoder
        self.prompt = prompt
        self.class_names = list(prompt.class_names)
        c = len(self.class_names)
        if prior.prior.shape != (c, c):
            raise MlrkitError(f"the prior is {tuple(prior.prior.shape)} for {c} classes")
        self.sam = SemanticAssociation(int(vl.embed_dim), gcn_layers, gcn_hidden) if sam else None
        self.graph_sam, self.graph_pessl, self.gcn_graph = graph_sam, graph_pessl, gcn_graph
        self.prior_k, self.prior_s, self.prior_tau = prior_k, float(prior_s), float(prior_tau)
        if tau is not None and not tau > 0:
            raise ConfigError(f"scpnet.tau must be > 0 or 'clip', got {tau}")
        self.tau = None if tau is None else float(tau)
        # log(1/tau) trained with the model (tau=None and train_logit_scale), else None (frozen or fixed tau)
        self.logit_scale = nn.Parameter(vl.logit_scale.detach().float().clone().reshape(())) \
            if (tau is None and train_logit_scale) else None
        self.register_buffer("prior", prior.prior.float().clone())
        self.register_buffer("prior_reweighted", prior.reweighted.float().clone())
        # PESSL learning status (eqs. 9-10): the last confident set of every training row, keyed by index.
        self.register_buffer("selected", torch.zeros(int(train_rows), c, dtype=torch.uint8))
        self._cache: tuple[tuple, Tensor] | None = None

    def ensure_rows(self, rows: int) -> None:
        """Grow the learning-status state to ``rows`` rows (zeros); for use without a described training
        split (benchmarks, ad-hoc steps). The trainer sizes it from the split, so it never grows there."""
        n = self.selected.shape[0]
        if rows > n:
            pad = torch.zeros(rows - n, self.selected.shape[1], dtype=self.selected.dtype, device=self.selected.device)
            self.selected = torch.cat([self.selected, pad])

    @property
    def vl(self):
        """The frozen VL model (text side). It is kept out of the module tree, so checkpoints, weight EMAs
        and parameter counts never hold the frozen text tower; ``.to()`` still moves it."""
        return self._vl

    def _apply(self, fn, recurse: bool = True):
        self._vl._apply(fn)
        return super()._apply(fn, recurse)

    # -------------------------------------------------------------- text side
    def scale(self) -> Tensor | float:
        """:math:`1/\\tau` of eq. 7."""
        if self.tau is not None:
            return 1.0 / self.tau
        return (self.logit_scale if self.logit_scale is not None else self.vl.logit_scale).exp().float()

    def prompt_features(self) -> Tensor:
        """:math:`t_c` [C, D]: the learned prompts through the frozen text encoder (eq. 5)."""
        return self.prompt.encode(self.vl)

    def graph(self, which: str, t: Tensor | None = None) -> Tensor:
        """The static :math:`A^*` or, for a dynamic graph, eqs. 1-4 on the current prompt features ``t``."""
        kind = self.graph_sam if which == "sam" else self.graph_pessl
        if kind == "static":
            return self.prior_reweighted if (which == "sam" and self.gcn_graph == "reweighted") else self.prior
        if t is None:
            t = self.prompt_features()
        p = prior_from_features(t.detach(), k=self.prior_k, s=self.prior_s, tau=self.prior_tau)
        return p.reweighted if (which == "sam" and self.gcn_graph == "reweighted") else p.prior

    def label_features(self, t: Tensor) -> Tensor:
        """:math:`z^*` [C, D]: eq. 7 with SAM, else the prompt features themselves."""
        if self.sam is None:
            return t
        return self.sam(t, self.graph("sam", t))

    def class_features(self) -> tuple[Tensor, Tensor]:
        """``(t, z*)``; cached in eval mode without gradients while the weights do not change."""
        if torch.is_grad_enabled() or self.training:
            self._cache = None
            t = self.prompt_features()
            return t, self.label_features(t)
        tensors = [*self.prompt.parameters(), *(self.sam.parameters() if self.sam is not None else ()),
                   self.prior, self.prior_reweighted]
        key = tuple((p._version, p.data_ptr(), str(p.device)) for p in tensors)
        if self._cache is None or self._cache[0] != key:
            t = self.prompt_features()
            self._cache = (key, (t, self.label_features(t)))
        return self._cache[1]

    # -------------------------------------------------------------- image side
    def logits(self, image_features: Tensor, label_features: Tensor) -> Tensor:
        """:math:`\\cos(f, z^*_c)/\\tau` [B, C] (eq. 7 before the sigmoid)."""
        f = F.normalize(image_features.float(), dim=-1)
        z = F.normalize(label_features.float(), dim=-1)
        return self.scale() * f @ z.t()

    def forward(self, images: Tensor) -> Tensor:
        _, z = self.class_features()
        return self.logits(self.image_encoder(images), z)


# ---------------------------------------------------------------------------- prior of a VL model
def prior_text_features(vl, class_names: Sequence[str], template: str = PRIOR_TEMPLATE) -> Tensor:
    """CLIP text features [C, D] of the hand-written prompts (``"a photo of a [CLS]."``), L2-normalised.

    Class names appear as in the learned prompts (``_`` read as a space), so the prior and the
    prompt learner's initial features describe the same sentences.
    """
    from mlrkit.models.prompt_learner import prompt_name

    names = check_names(class_names)
    with torch.no_grad():
        return vl.class_text_embeddings([prompt_name(n) for n in names], (template,)).float().cpu()


def structured_prior(vl, class_names: Sequence[str], k: int | None = None, s: float = 0.2, tau: float = 0.2, *,
                     template: str = PRIOR_TEMPLATE) -> Tensor:
    """:math:`A^*` [C, C] (eqs. 1-4) of a VL model's text encoder for ``class_names`` (not cached)."""
    return prior_from_features(prior_text_features(vl, class_names, template), k=k, s=s, tau=tau).prior


def prior_cache_key(vl, class_names: Sequence[str], *, k: int | None, s: float, tau: float, template: str,
                    seed: int = 0) -> str:
    """Identity of a prior: the VL model (spec + weights hash or seed), the class names and the parameters."""
    import hashlib
    import json

    from mlrkit.vl.features import vl_encoder_key

    ident = {"vl": vl_encoder_key(vl, seed=seed), "classes": list(class_names), "k": k, "s": float(s),
             "tau": float(tau), "template": template, "version": 1}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def cached_structured_prior(vl, class_names: Sequence[str], *, k: int | None, s: float, tau: float,
                            template: str = PRIOR_TEMPLATE, seed: int = 0, cache_dir=None) -> StructuredPrior:
    """:func:`prior_from_features` of the VL model's prompt features, computed once and cached.

    The cache is ``<cache_dir>/scpnet-prior/<key>.pt`` (default ``cache_dir``: the FeatureStore's root),
    keyed by :func:`prior_cache_key`; a few kilobytes per entry.
    """
    from pathlib import Path

    from mlrkit.features.store import default_cache_dir
    from mlrkit.utils import atomic_write

    _check_prior_params(k, s, tau)
    key = prior_cache_key(vl, class_names, k=k, s=s, tau=tau, template=template, seed=seed)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "scpnet-prior" / f"{key}.pt"
    if path.is_file():
        d = torch.load(path, map_location="cpu", weights_only=True)
        if d.get("class_names") == list(class_names):
            return StructuredPrior(d["similarity"], d["mask"], d["reweighted"], d["prior"])
    p = prior_from_features(prior_text_features(vl, class_names, template), k=k, s=s, tau=tau)
    with atomic_write(path) as tmp:
        torch.save({"class_names": list(class_names), "vl": vl.spec, "k": k, "s": s, "tau": tau, "template": template,
                    "similarity": p.similarity, "mask": p.mask, "reweighted": p.reweighted, "prior": p.prior}, tmp)
    return p


def count_trainable(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per part of an :class:`SCPNetModel`."""
    def n(m: nn.Module | None) -> int:
        return 0 if m is None else sum(p.numel() for p in m.parameters() if p.requires_grad)

    return {"image_encoder": n(model.image_encoder), "prompt": n(model.prompt), "sam": n(model.sam)}


def check_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if not names or not all(isinstance(x, str) and x.strip() for x in names):
        raise MlrkitError(f"class names must be non-empty strings, got {names!r}")
    return names
