r"""Prompt learning over a frozen CLIP: CoOp context vectors, learned class embeddings, and the
region models of DualCoOp / PositiveCoOp / NegativeCoOp / the vision-only baseline.

**Prompt learner** (CoOp, Zhou et al., IJCV 2022; DualCoOp, Sun et al., NeurIPS 2022). A class
prompt is the token sequence ``[SOT] X X ... X <class name> . [EOT]``; the embeddings of the
:math:`M` placeholder tokens ``X`` are replaced by learned context vectors
:math:`v_1..v_M \in \mathbb R^W` (:math:`W` = width of the text transformer), shared by all classes or
class-specific (``csc``), and the text transformer maps the sequence to a class feature

.. math::
    t_c = g([\mathrm{SOT}], v_1, \dots, v_M, e(\text{name}_c), e(.), [\mathrm{EOT}]) \in \mathbb R^D.

Context vectors start from :math:`\mathcal N(0, 0.02^2)` or from the token embeddings of words
(e.g. ``"a photo of a"``; :math:`M` is then the number of tokens of those words). Only the context
(and a method's learned embeddings) is trainable; the CLIP model is frozen and left out of
checkpoints. The constant token embeddings (SOT, class name, EOT) are non-persistent buffers
rebuilt from the class names, so a checkpoint holds only the learned tensors.

With open_clip's causal text transformer the output at the EOT position depends only on the
tokens before it, so prompts are cut after the longest EOT position (exact; a 77-token context
with 24-token prompts runs about 3x faster).

**Many classes.** Every learned prompt goes through the text transformer at every step, and
autograd keeps each layer's activations for all of them: memory grows as :math:`C \cdot L \cdot W`
times the depth (DualCoOp at 312 classes needs 6.4 GB). :func:`encode_prompts` runs the prompts in
chunks of ``text_chunk`` classes and, when gradients are needed, checkpoints each chunk
(``torch.utils.checkpoint``): only the chunk's learned inputs are kept and its transformer pass is
recomputed during the backward pass, so the text side's memory is bounded by one chunk, whatever
:math:`C`, for about one extra forward pass of time. The result is the same as the unchunked pass
(tested to float precision, values and gradients). A chunk is built from the context and the
constant token embeddings inside the checkpoint, so the full [C, L, W] prompt tensor never exists
with autograd history.

**Learned embeddings** (PositiveCoOp, Rawlekar et al., WACV 2025): one vector per class
:math:`u_c \in \mathbb R^D` in the joint space, used in place of a prompt's text feature.

**Models.** :class:`RegionPromptModel` computes a positive and a negative class feature per class
(each from a prompt or an embedding) and aggregates region similarities as in
:mod:`mlrkit.models.region`; :class:`RegionLinearModel` is the vision-only baseline (a linear map
of the region features, no text encoder). Both return the logit :math:`s^+_c - s^-_c` [B, C].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.models.region import OUTPUT_SCALE, REGION_SCALE, aggregate, region_logits

PLACEHOLDER = "X"
#: default number of class prompts per text-encoder pass (see "Many classes" above)
TEXT_CHUNK = 256


def _check_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise MlrkitError(f"class names must be non-empty strings, got {names!r}")
    return names


def prompt_name(class_name: str) -> str:
    """How a class name appears in a prompt (DualCoOp replaces ``_`` by a space)."""
    return class_name.replace("_", " ").strip()


def name_key(class_name: str) -> str:
    """The form under which class names are matched across class lists (case/underscore-insensitive)."""
    return " ".join(prompt_name(class_name).lower().split())


def _causal_text(vl) -> bool:
    parts = vl._text_parts()
    return parts["attn_mask"] is not None and not parts["use_pad_mask"] and parts["pool_type"] == "argmax"


class PromptLearner(nn.Module):
    """Learned context vectors for one kind of prompt (positive or negative), one prompt per class.

    Args:
        vl: the (frozen) :class:`~mlrkit.vl.VisionLanguageModel`; only its tokenizer and token
            embedding are used here (it is not stored as a submodule).
        class_names: the classes, in output order.
        n_ctx: number of context vectors :math:`M` (ignored when ``init`` is given).
        csc: class-specific contexts ([C, M, W]) instead of one shared context ([M, W]).
        init: words whose token embeddings initialise the context (e.g. ``"a photo of a"``);
            empty: random :math:`\\mathcal N(0, \\text{init\\_std}^2)`.
        init_std: standard deviation of the random initialisation (CoOp: 0.02).
        text_chunk: class prompts per text-encoder pass, each pass activation-checkpointed when
            gradients are needed (:func:`encode_prompts`); 0 = all prompts in one pass.
    """

    def __init__(self, vl, class_names: Sequence[str], *, n_ctx: int = 16, csc: bool = True, init: str = "",
                 init_std: float = 0.02, text_chunk: int = TEXT_CHUNK) -> None:
        super().__init__()
        names = _check_names(class_names)
        emb = vl.token_embedding
        width = int(emb.embedding_dim)
        init = " ".join(init.replace("_", " ").split())
        with torch.no_grad():
            if init:
                ids = vl.tokenize([init])[0]
                eot = int(ids.argmax())
                init_ids = ids[1:eot]
                if len(init_ids) == 0:
                    raise ConfigError(f"prompt initialisation {init!r} has no tokens")
                n_ctx = len(init_ids)
                ctx = emb(init_ids.to(emb.weight.device)).detach().float().cpu()  # [M, W]
                prefix_text = init
            else:
                if n_ctx < 1:
                    raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
                ctx = torch.empty(n_ctx, width).normal_(0.0, init_std)
                prefix_text = " ".join([PLACEHOLDER] * n_ctx)
            if csc:
                ctx = ctx.unsqueeze(0).repeat(len(names), 1, 1) if init else \
                    torch.empty(len(names), n_ctx, width).normal_(0.0, init_std)
            prompts = [f"{prefix_text} {prompt_name(n)}." for n in names]
            tokens = vl.tokenize(prompts)
            if (tokens[:, -1] != 0).any():
                bad = [prompts[i] for i in torch.nonzero(tokens[:, -1] != 0).flatten().tolist()]
                raise MlrkitError(f"{vl.spec}: prompts longer than the text context ({vl.context_length} tokens): "
                                  f"{bad[:3]}; use a smaller n_ctx")
            ctx_ids = vl.tokenize([prefix_text])[0][1:1 + n_ctx]
            if not torch.equal(tokens[:, 1:1 + n_ctx], ctx_ids.unsqueeze(0).expand(len(names), -1)):
                raise MlrkitError(f"the context tokens of {prefix_text!r} do not stay separate from the class names "
                                  "when tokenized; choose other initial words")
            self.full_length = int(tokens.shape[1])
            if _causal_text(vl):  # outputs at EOT do not depend on later positions: cut the padding
                tokens = tokens[:, : int(tokens.argmax(-1).max()) + 1]
            embedded = emb(tokens.to(emb.weight.device)).detach().float()
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("tokens", tokens.clone(), persistent=False)
        self.class_names = names
        self.n_ctx = int(n_ctx)
        self.csc = bool(csc)
        self.init = init
        self.per_class = {"ctx"} if csc else set()
        if isinstance(text_chunk, bool) or not isinstance(text_chunk, int) or text_chunk < 0:
            raise ConfigError(f"text_chunk must be an integer >= 0 (0 = no chunking), got {text_chunk!r}")
        self.text_chunk = int(text_chunk)

    def extra_repr(self) -> str:
        return (f"classes={len(self.class_names)}, n_ctx={self.n_ctx}, csc={self.csc}, "
                f"width={self.ctx.shape[-1]}, init={self.init or 'random'!r}")

    def forward(self, start: int = 0, stop: int | None = None) -> tuple[Tensor, Tensor]:
        """Prompt embeddings [C, L, W] (SOT, context, class-name tokens, EOT) and their token ids [C, L];
        ``start``/``stop`` select the classes ``start:stop`` only."""
        sl = slice(start, len(self.class_names) if stop is None else stop)
        prefix, suffix = self.token_prefix[sl], self.token_suffix[sl]
        ctx = self.ctx[sl] if self.csc else self.ctx.unsqueeze(0).expand(prefix.shape[0], -1, -1)
        prompts = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)
        return prompts, self.tokens[sl]

    def encode(self, vl, text_chunk: int | None = None) -> Tensor:
        """Class features [C, D] of the prompts through the frozen text transformer, ``text_chunk``
        classes per pass (default: the learner's own), see :func:`encode_prompts`."""
        return encode_prompts(vl, self, self.text_chunk if text_chunk is None else text_chunk)


def _encode_chunk(vl, learner: PromptLearner, start: int = 0, stop: int | None = None) -> Tensor:
    prompts, tokens = learner(start, stop)
    return vl.encode_text_from_embeddings(prompts, tokens).float()


def encode_prompts(vl, learner: PromptLearner, text_chunk: int = TEXT_CHUNK) -> Tensor:
    r"""Class features :math:`t_c = g(\text{prompt}_c)` [C, D] through the frozen text encoder,
    ``text_chunk`` classes per pass (0: one pass).

    With gradients enabled and more than one chunk, each chunk's pass is activation-checkpointed
    (non-reentrant ``torch.utils.checkpoint``): its transformer activations are freed after the
    forward pass and recomputed in the backward pass, so peak memory is that of one chunk plus the
    [C, D] outputs instead of growing with :math:`C`. Values and gradients equal the one-pass ones.
    """
    c = len(learner.class_names)
    if text_chunk <= 0 or c <= text_chunk:
        return _encode_chunk(vl, learner)
    # non-reentrant checkpointing tracks the learned context used inside the chunk (no explicit input needed)
    run = partial(checkpoint, _encode_chunk, use_reentrant=False) if (
        torch.is_grad_enabled() and learner.ctx.requires_grad) else _encode_chunk
    return torch.cat([run(vl, learner, start, min(c, start + text_chunk)) for start in range(0, c, text_chunk)])


class ClassEmbeddings(nn.Module):
    r"""One learned vector per class in the joint space, [C, D] (PositiveCoOp's learned embedding).

    Initialised from :math:`\mathcal N(0, \text{init\_std}^2)` (the reference's ``torch.randn``), or,
    when ``init`` [C, D] is given, with those directions at the same expected norm
    (:math:`\text{init\_std}\sqrt D`).
    """

    def __init__(self, class_names: Sequence[str], dim: int, init_std: float = 1.0,
                 init: Tensor | None = None) -> None:
        super().__init__()
        self.class_names = _check_names(class_names)
        c, d = len(self.class_names), int(dim)
        if init is None:
            w = torch.empty(c, d).normal_(0.0, init_std)
        else:
            if tuple(init.shape) != (c, d):
                raise MlrkitError(f"embedding initialisation must be [{c}, {d}], got {tuple(init.shape)}")
            w = F.normalize(init.detach().float().cpu(), dim=-1) * (init_std * d ** 0.5)
        self.weight = nn.Parameter(w)
        self.per_class = {"weight"}

    def extra_repr(self) -> str:
        return f"classes={len(self.class_names)}, dim={self.weight.shape[1]}"

    def forward(self) -> Tensor:
        return self.weight


class PromptBranch(nn.Module):
    r"""A class feature per class from a learned prompt, optionally plus a learned residual [C, D].

    The residual (``prompt_residual``) is what the PositiveCoOp reference code adds to the prompt's
    text feature (``t_c + a_c``, :math:`a_c \sim \mathcal N(0, I)` at the start: ``residual_std`` 1,
    its ``torch.randn``; 0 starts at :math:`t_c`); it is off by default (the papers' description has no
    residual).
    """

    def __init__(self, vl, class_names: Sequence[str], *, n_ctx: int, csc: bool, init: str, init_std: float,
                 residual: bool = False, text_chunk: int = TEXT_CHUNK, residual_std: float = 1.0) -> None:
        super().__init__()
        self.prompt = PromptLearner(vl, class_names, n_ctx=n_ctx, csc=csc, init=init, init_std=init_std,
                                    text_chunk=text_chunk)
        self.residual = ClassEmbeddings(class_names, vl.embed_dim, init_std=float(residual_std)) if residual else None
        self._cache: tuple[tuple, Tensor] | None = None

    def forward(self, vl) -> Tensor:
        """[C, D]; cached between calls in eval mode without gradients while the weights do not change."""
        if torch.is_grad_enabled() or self.training:
            self._cache = None
            return self._features(vl)
        key = tuple((p._version, p.data_ptr(), str(p.device)) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._features(vl))
        return self._cache[1]

    def _features(self, vl) -> Tensor:
        t = self.prompt.encode(vl)
        return t + self.residual() if self.residual is not None else t


class EmbeddingBranch(nn.Module):
    """A class feature per class that is a learned embedding (no text encoder)."""

    def __init__(self, class_names: Sequence[str], dim: int, init_std: float = 1.0,
                 init: Tensor | None = None) -> None:
        super().__init__()
        self.embedding = ClassEmbeddings(class_names, dim, init_std=init_std, init=init)

    def forward(self, vl) -> Tensor:
        return self.embedding()


class _RegionModel(nn.Module):
    """Shared parts: the frozen VL model and the image -> region-feature step."""

    def __init__(self, vl, class_names: Sequence[str], pos_embed: bool = True) -> None:
        super().__init__()
        if not getattr(vl, "frozen", False):
            vl.freeze()
        self.vl = vl
        self.class_names = _check_names(class_names)
        self.pos_embed = bool(pos_embed)

    def regions(self, x: Tensor) -> Tensor:
        """Region features [B, HW, D]: ``x`` itself (cached features) or ``vl.encode_dense(x)`` for images."""
        if x.ndim == 4:
            with torch.no_grad():
                return self.vl.encode_dense(x, pos_embed=self.pos_embed).float()
        if x.ndim != 3 or x.shape[-1] != self.vl.embed_dim:
            raise MlrkitError(f"inputs must be images [B, 3, H, W] or region features [B, HW, {self.vl.embed_dim}], "
                              f"got {tuple(x.shape)}")
        return x.float()

    def forward(self, x: Tensor) -> Tensor:
        """Logits :math:`s^+ - s^-` [B, C]."""
        s_pos, s_neg = self.pair_scores(x)
        return s_pos - s_neg

    def pair_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class RegionPromptModel(_RegionModel):
    """DualCoOp-style model: positive/negative class features (prompts or embeddings) + region aggregation.

    ``positive`` / ``negative`` are :class:`PromptBranch` or :class:`EmbeddingBranch` modules:
    DualCoOp = (prompt, prompt), PositiveCoOp = (prompt, embedding), NegativeCoOp = (embedding, prompt).
    """

    def __init__(self, vl, class_names: Sequence[str], positive: nn.Module, negative: nn.Module, *,
                 region_scale: float = REGION_SCALE, output_scale: float = OUTPUT_SCALE, weights: str = "positive",
                 pos_embed: bool = True) -> None:
        super().__init__(vl, class_names, pos_embed)
        self.positive = positive
        self.negative = negative
        self.region_scale = float(region_scale)
        self.output_scale = float(output_scale)
        self.weights = weights

    def class_features(self) -> tuple[Tensor, Tensor]:
        """Positive and negative class features, each [C, D] (not normalised)."""
        return self.positive(self.vl), self.negative(self.vl)

    def pair_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dense = self.regions(x)
        t_pos, t_neg = self.class_features()
        c = len(self.class_names)
        r = region_logits(dense, torch.cat([t_pos, t_neg]), self.region_scale)  # [B, 2C, HW]
        return aggregate(r[:, :c], r[:, c:], self.output_scale, self.weights)


class RegionLinearModel(_RegionModel):
    r"""The vision-only baseline (Rawlekar et al., WACV 2025): learned positive/negative embeddings
    applied linearly to the region features, no text encoder.

    .. math::
        r^\pm_{c,j} = u^\pm_c \cdot x_j + b^\pm_c, \qquad
        s^\pm_c = \tau_o \sum_j \mathrm{softmax}_j(r^\pm_{c,\cdot})_j\, r^\pm_{c,j}

    i.e. a linear layer :math:`D \to 2C` on every region (:math:`2CD + 2C` parameters), each output
    pooled with its own spatial softmax (the reference code's choice), :math:`\tau_o = 5`.
    Initialised as ``nn.Linear`` (uniform :math:`\pm 1/\sqrt D`).
    """

    def __init__(self, vl, class_names: Sequence[str], *, output_scale: float = OUTPUT_SCALE,
                 weights: str = "separate", pos_embed: bool = True) -> None:
        super().__init__(vl, class_names, pos_embed)
        c, d = len(self.class_names), int(vl.embed_dim)
        bound = 1.0 / math.sqrt(d)
        self.pos_weight = nn.Parameter(torch.empty(c, d).uniform_(-bound, bound))
        self.neg_weight = nn.Parameter(torch.empty(c, d).uniform_(-bound, bound))
        self.pos_bias = nn.Parameter(torch.empty(c).uniform_(-bound, bound))
        self.neg_bias = nn.Parameter(torch.empty(c).uniform_(-bound, bound))
        self.per_class = {"pos_weight", "neg_weight", "pos_bias", "neg_bias"}
        self.output_scale = float(output_scale)
        self.weights = weights

    def pair_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dense = self.regions(x)
        r_pos = torch.einsum("bjd,cd->bcj", dense, self.pos_weight) + self.pos_bias[None, :, None]
        r_neg = torch.einsum("bjd,cd->bcj", dense, self.neg_weight) + self.neg_bias[None, :, None]
        return aggregate(r_pos, r_neg, self.output_scale, self.weights)


# ---------------------------------------------------------------------------- counting and transfer
def count_parameters(model: nn.Module) -> dict[str, int]:
    """``trainable_params`` (requires_grad) and ``total_params`` (all, the frozen CLIP included)."""
    params = list(model.parameters())
    return {"trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
            "total_params": int(sum(p.numel() for p in params))}


def per_class_parameters(model: nn.Module) -> set[str]:
    """Names (in ``model.named_parameters()``) of the parameters whose first axis is the class."""
    out = set()
    for mod_name, mod in model.named_modules():
        for p in getattr(mod, "per_class", ()):
            out.add(f"{mod_name}.{p}" if mod_name else p)
    return out


def transfer_state(model: nn.Module, state: dict[str, Tensor], source_classes: Sequence[str]) -> dict[str, str]:
    """Load learned prompts/embeddings saved for ``source_classes`` into ``model`` (its own class list).

    * a shared context (and any other parameter without a class axis) loads as is, into any class list;
    * a shared context loads into a class-specific one (copied to every class);
    * class-specific contexts and per-class embeddings load **by class name** (case- and
      underscore-insensitive): every class of ``model`` must exist in ``source_classes``,
      otherwise :class:`MlrkitError` names the missing ones;
    * a class-specific context cannot load into a shared one, and shapes (n_ctx, width) must agree.

    Returns, per parameter, how it was loaded (``"as is"``, ``"broadcast"``, ``"by name"``).
    """
    target = list(model.class_names)
    src_keys = [name_key(n) for n in source_classes]
    if len(set(src_keys)) != len(src_keys):
        raise MlrkitError("the saved class list has duplicate names: cannot load by name")
    where = {k: i for i, k in enumerate(src_keys)}
    per_class = per_class_parameters(model)
    own = {k: p for k, p in model.named_parameters() if p.requires_grad}
    missing_keys = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(dict(model.named_parameters())))
    if missing_keys or unexpected:
        raise MlrkitError(f"the saved prompts do not fit this model (another method?): missing {missing_keys[:5]}, "
                          f"unexpected {unexpected[:5]}")
    how: dict[str, str] = {}
    with torch.no_grad():
        for k, p in own.items():
            src = state[k].to(device=p.device, dtype=p.dtype)
            if k not in per_class:
                if src.shape != p.shape:
                    kind = "class-specific" if src.ndim == p.ndim + 1 else "saved"
                    raise MlrkitError(f"{k}: a {kind} tensor {tuple(src.shape)} cannot load into {tuple(p.shape)} "
                                      "(a class-specific context loads only into a class-specific one)")
                p.copy_(src)
                how[k] = "as is"
            elif src.ndim == p.ndim - 1:  # shared context -> class-specific
                if src.shape != p.shape[1:]:
                    raise MlrkitError(f"{k}: saved context {tuple(src.shape)} does not fit {tuple(p.shape[1:])}")
                p.copy_(src.unsqueeze(0).expand_as(p))
                how[k] = "broadcast"
            else:
                if src.shape[1:] != p.shape[1:] or src.shape[0] != len(source_classes):
                    raise MlrkitError(f"{k}: saved {tuple(src.shape)} for {len(source_classes)} classes does not fit "
                                      f"{tuple(p.shape)}")
                missing = [n for n in target if name_key(n) not in where]
                if missing:
                    raise MlrkitError(f"{k}: class-specific parameters load by class name, and {len(missing)} "
                                      f"class(es) are not in the saved list: {missing[:10]}; use a shared context "
                                      "(csc: false) to transfer to new classes")
                p.copy_(src[[where[name_key(n)] for n in target]])
                how[k] = "by name"
    return how
