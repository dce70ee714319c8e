"""The vision-language model object every method uses: :class:`VisionLanguageModel`.

It wraps an open_clip model (``CLIP`` or ``CustomTextCLIP``) and adds what the multi-label methods
need on top of the plain ``encode_image``/``encode_text``:

* ``encode_dense``: region/patch features projected into the joint embedding space
  (DualCoOp, Sun et al., NeurIPS 2022; MaskCLIP, Zhou et al., ECCV 2022), for ViTs and for
  open_clip's ``ModifiedResNet`` (RN50/RN101/...);
* prompt-learning hooks (CoOp, Zhou et al., IJCV 2022): ``token_embedding`` and
  ``encode_text_from_embeddings``, so a prompt learner can replace the context tokens' embeddings;
* the model's own preprocessing (``preprocess_train``/``preprocess_val``/``transform``), so images
  are always normalised with the mean/std the weights were trained with;
* class text embeddings with a prompt-template ensemble and zero-shot scores.

open_clip is imported lazily (it is the optional ``mlrkit[vl]`` dependency and slow to import).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlrkit.errors import MlrkitError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": ("a photo of a {}.",),
    "ensemble": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a close-up photo of a {}.",
        "a cropped photo of a {}.",
        "a bright photo of a {}.",
        "a dark photo of a {}.",
        "a blurry photo of a {}.",
        "a photo of a small {}.",
        "a photo of a large {}.",
        "a picture containing a {}.",
    ),
}
"""Prompt templates for :meth:`VisionLanguageModel.class_text_embeddings` (each has one ``{}``)."""


def prompt_templates(name: str) -> tuple[str, ...]:
    """The prompt templates named by ``vl.templates``: ``single``, ``ensemble`` or ``name`` ("{}.")."""
    from mlrkit.errors import ConfigError

    if name == "name":
        return ("{}.",)
    if name not in TEMPLATES:
        raise ConfigError(f"vl.templates must be one of {sorted(TEMPLATES) + ['name']}, got {name!r}")
    return TEMPLATES[name]


def require_open_clip() -> Any:
    """Import and return ``open_clip``, or raise a clear error naming the extra to install."""
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MlrkitError(
            f"the vision-language backends need open_clip ({e}); install it with `pip install 'mlrkit[vl]'`"
        ) from None
    return open_clip


def build_open_clip(model_cfg: dict[str, Any], *, seed: int, name: str) -> nn.Module:
    """Instantiate an open_clip model from a config dict, randomly initialised from ``seed``.

    Never downloads tower weights (timm / Hugging Face "pretrained" flags are switched off).
    """
    oc = require_open_clip()
    cfg = copy.deepcopy(model_cfg)
    if not isinstance(cfg.get("vision_cfg"), dict) or not isinstance(cfg.get("text_cfg"), dict) \
            or "embed_dim" not in cfg:
        raise MlrkitError(f"{name}: a model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if vision.get("timm_model_name"):
        vision["timm_model_pretrained"] = False
    if text.get("hf_model_name"):
        text["hf_model_pretrained"] = False
    custom_text = bool(cfg.pop("custom_text", False)) or bool(text.get("hf_model_name"))
    if custom_text:
        cls = oc.CoCa if "multimodal_cfg" in cfg else oc.CustomTextCLIP
    else:
        cls = oc.CLIP
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = cls(**cfg)
    except Exception as e:  # noqa: BLE001 - open_clip/timm/transformers raise many types
        raise MlrkitError(f"cannot build {name}: {type(e).__name__}: {e}") from None
    return clip.eval()


def _as_size(size: Any) -> int | tuple[int, int]:
    """An image size as an int when square, else (height, width)."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise MlrkitError(f"image size must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
        return h if h == w else (h, w)
    return int(size)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _resize_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Resize a row-major grid of positional embeddings ``[old_h*old_w, C]`` to ``[new_h*new_w, C]``.

    Bicubic, ``align_corners=False``, antialiased: the convention of open_clip's ``resize_pos_embed``.
    """
    if old == new:
        return pos
    c = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], c).to(pos.dtype)


class NoTextTower(MlrkitError, AttributeError):
    """A model without an open_clip text transformer (an image tower alone, a Hugging Face text tower) asked
    for its text parts. Also an AttributeError, so that ``hasattr``/``getattr`` probes of the text properties
    (``torch.jit.trace`` scans every attribute of a module) see "no such attribute" rather than a crash."""


class VisionLanguageModel(nn.Module):
    """A CLIP-style model behind one interface (see ``docs/vl-backends.md``).

    Build it with :func:`mlrkit.vl.load`. The open_clip model is ``self.clip``; its state-dict keys
    are open_clip's with a ``clip.`` prefix (the loader strips that prefix again, so a saved
    ``state_dict()`` of this module loads back through ``openclip:<arch>@<file>``).

    Attributes:
        spec: the spec string it was loaded from.
        model_cfg: the effective open_clip model config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``, ``quick_gelu``...), enough to rebuild the architecture.
        preprocess_cfg: open_clip preprocessing config (size, mean, std, interpolation, resize_mode).
        embed_dim: width D of the joint embedding space.
        frozen: set by :meth:`freeze`; frozen modules are left out of mlrkit checkpoints.
    """

    def __init__(
        self,
        clip: nn.Module,
        *,
        spec: str,
        model_cfg: dict[str, Any],
        preprocess_cfg: dict[str, Any],
        tokenizer_factory: Callable[[], Callable[..., torch.Tensor]],
    ) -> None:
        super().__init__()
        self.clip = clip
        self.spec = spec
        self.model_cfg = copy.deepcopy(model_cfg)
        self.preprocess_cfg = dict(preprocess_cfg)
        self.preprocess_cfg["size"] = _as_size(self.preprocess_cfg["size"])
        self.embed_dim = int(model_cfg["embed_dim"])
        self.frozen = False
        self._tokenizer_factory = tokenizer_factory
        self._tokenizer: Callable[..., torch.Tensor] | None = None
        self.preprocess_train = self.transform(train=True)
        self.preprocess_val = self.transform(train=False)

    # ------------------------------------------------------------------ basics
    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, embed_dim={self.embed_dim}, image_size={self.image_size}"

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned log temperature (a tensor); ``logit_scale.exp()`` multiplies cosine similarities."""
        return self.clip.logit_scale

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The native input resolution (an int for square models)."""
        return self.preprocess_cfg["size"]

    @property
    def token_embedding(self) -> nn.Embedding:
        """The text transformer's token embedding; CoOp-style prompt learners replace the embeddings of
        their context tokens and call :meth:`encode_text_from_embeddings`."""
        return self._text_parts()["token_embedding"]

    @property
    def context_length(self) -> int:
        """Number of token positions the text tower takes (the tokenizer pads/truncates to it)."""
        for holder in (self.clip, getattr(self.clip, "text", None)):
            if getattr(holder, "context_length", None) is not None:
                return int(holder.context_length)
        return int(self._text_parts()["positional_embedding"].shape[0])

    def freeze(self) -> VisionLanguageModel:
        """Freeze for use as a fixed encoder: no gradients, eval mode, ``frozen = True``.

        A frozen model stays in eval mode even when a parent module calls ``.train()`` (BatchNorm
        statistics of ResNet towers must not drift). mlrkit checkpoints skip frozen modules.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> VisionLanguageModel:
        return super().train(mode and not getattr(self, "frozen", False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode_image`."""
        return self.encode_image(images)

    # ------------------------------------------------------------------ preprocessing
    def transform(
        self, train: bool, image_size: int | tuple[int, int] | None = None, aug_cfg: dict[str, Any] | None = None
    ) -> Callable[[Any], torch.Tensor]:
        """The model's torchvision transform (PIL image -> normalised tensor) from open_clip.

        Args:
            train: training augmentation (random resized crop) instead of resize + centre crop.
            image_size: another resolution (e.g. 448 for DualCoOp); mean/std/interpolation stay the
                model's own. The image encoders accept it (positional embeddings are interpolated).
            aug_cfg: open_clip ``AugmentationCfg`` fields for the training transform.
        """
        require_open_clip()
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = dict(self.preprocess_cfg)
        if image_size is not None:
            cfg["size"] = _as_size(image_size)
        return image_transform_v2(PreprocessCfg(**cfg), is_train=train, aug_cfg=aug_cfg)

    # ------------------------------------------------------------------ image side
    def _visual_kind(self) -> str:
        require_open_clip()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = self.clip.visual
        if isinstance(visual, VisionTransformer):
            return "vit"
        if isinstance(visual, ModifiedResNet):
            return "resnet"
        return "other"

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise MlrkitError(f"images must be a preprocessed batch [B, 3, H, W], got {shape}")
        return images.to(device=self.device, dtype=self._visual_dtype())

    def _visual_dtype(self) -> torch.dtype:
        visual = self.clip.visual
        weight = getattr(getattr(visual, "conv1", None), "weight", None)
        return weight.dtype if weight is not None else self.clip.logit_scale.dtype

    def dense_grid(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) of the feature grid ``encode_dense`` returns for inputs of ``image_size`` (default native)."""
        h, w = _pair(self.image_size if image_size is None else image_size)
        kind = self._visual_kind()
        if kind == "vit":
            ph, pw = _pair(self.clip.visual.patch_size)
            return h // ph, w // pw
        if kind == "resnet":
            def down(n: int) -> int:
                n = (n - 1) // 2 + 1  # stem conv 3x3, stride 2, padding 1
                for _ in range(4):  # stem avgpool + the stride-2 avgpools of layer2..layer4
                    n //= 2
                return n

            return down(h), down(w)
        raise MlrkitError(f"{self.spec}: dense features need an open_clip ViT or ModifiedResNet image tower")

    def _vit_tokens(self, images: torch.Tensor, dense: bool) -> torch.Tensor:
        """All ViT tokens after the transformer, [B, 1 + h*w, width]; positional embedding resized if needed."""
        v = self.clip.visual
        x = v.conv1(images)  # [B, width, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        pos = v.positional_embedding
        native = _pair(v.grid_size)
        if grid != native:
            pos = torch.cat([pos[:1], _resize_grid(pos[1:], native, grid)], dim=0)
        x = x + pos.to(x.dtype)
        if not dense:  # patch dropout (training only) would remove regions from a dense map
            x = v.patch_dropout(x)
        x = v.ln_pre(x)
        return v.transformer(x)

    def _resnet_features(self, images: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        x = v.stem(images)
        x = v.layer1(x)
        x = v.layer2(x)
        x = v.layer3(x)
        return v.layer4(x)  # [B, C, h, w]

    def _attnpool_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """The attention pool's positional embedding [1 + h*w, C] for a feature grid (resized if needed)."""
        pos = self.clip.visual.attnpool.positional_embedding
        s = math.isqrt(pos.shape[0] - 1)
        if (s, s) == grid:
            return pos
        return torch.cat([pos[:1], _resize_grid(pos[1:], (s, s), grid)], dim=0)

    def _attnpool(self, feats: torch.Tensor) -> torch.Tensor:
        """open_clip's ``AttentionPool2d.forward`` at any grid size (identical code at the native size)."""
        pool = self.clip.visual.attnpool
        grid = (feats.shape[-2], feats.shape[-1])
        s = math.isqrt(pool.positional_embedding.shape[0] - 1)
        if grid == (s, s):
            return pool(feats)
        x = feats.reshape(feats.shape[0], feats.shape[1], -1).permute(2, 0, 1)  # (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self._attnpool_pos(grid)[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True, training=pool.training, need_weights=False,
        )
        return x[0]

    def _resnet_dense(self, feats: torch.Tensor, pos_embed: bool) -> torch.Tensor:
        """DualCoOp-style dense features: ``c_proj(v_proj(f_j + p_j))`` at every position j, [B, h*w, D]."""
        pool = self.clip.visual.attnpool
        grid = (feats.shape[-2], feats.shape[-1])
        x = feats.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major positions
        if pos_embed:
            x = x + self._attnpool_pos(grid)[1:].to(x.dtype)
        return pool.c_proj(pool.v_proj(x))

    def _vit_dense(self, tokens: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        if v.attn_pool is not None:
            raise MlrkitError(f"{self.spec}: dense features are not defined for ViTs with an attentional pooler")
        x = v.ln_post(tokens[:, 1:])
        return x @ v.proj if v.proj is not None else x

    def _vit_pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        pooled, _ = v._pool(tokens)
        return pooled @ v.proj if v.proj is not None else pooled

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Pooled, projected image embeddings [B, D] of a preprocessed batch [B, 3, H, W].

        At the native resolution this is exactly open_clip's ``encode_image``; at another resolution
        (ViT or ModifiedResNet towers) the positional embeddings are resized bicubically.
        """
        images = self._check_images(images)
        kind = self._visual_kind()
        if kind == "vit":
            out = self._vit_pooled(self._vit_tokens(images, dense=False))
        elif kind == "resnet":
            out = self._attnpool(self._resnet_features(images))
        else:
            out = self.clip.visual(images)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_dense(self, images: torch.Tensor, normalize: bool = False, pos_embed: bool = True) -> torch.Tensor:
        """Region/patch features in the joint space, [B, h*w, D] (row-major grid, see :meth:`dense_grid`).

        * ViT: every patch token after the last transformer block, through the same ``ln_post`` and
          ``proj`` as the class token (the class token itself is not included).
        * ModifiedResNet (RN50/RN101...), as in DualCoOp (Sun et al., NeurIPS 2022) after MaskCLIP:
          the attention pool's value projection and output projection applied to each position of
          the ``layer4`` map as a 1x1 projection, ``c_proj(v_proj(f_j + p_j))``, where ``p_j`` is the
          pool's spatial positional embedding (bicubically resized to the grid when the input is
          not at the native resolution; ``pos_embed=False`` leaves it out, MaskCLIP's variant).
          The attention weights are not used: each position keeps its own value.

        Args:
            pos_embed: ResNet towers only (ViT tokens always carry their positional embedding).
        """
        return self.encode_image_and_dense(images, normalize=normalize, pos_embed=pos_embed)[1]

    def encode_image_and_dense(
        self, images: torch.Tensor, normalize: bool = False, pos_embed: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode_image(images), encode_dense(images))`` from one pass through the image tower."""
        images = self._check_images(images)
        kind = self._visual_kind()
        if kind == "vit":
            tokens = self._vit_tokens(images, dense=True)
            pooled, dense = self._vit_pooled(tokens), self._vit_dense(tokens)
        elif kind == "resnet":
            feats = self._resnet_features(images)
            pooled, dense = self._attnpool(feats), self._resnet_dense(feats, pos_embed)
        else:
            raise MlrkitError(
                f"{self.spec}: dense features need an open_clip ViT or ModifiedResNet image tower, "
                f"not {type(self.clip.visual).__name__}"
            )
        if normalize:
            pooled, dense = F.normalize(pooled, dim=-1), F.normalize(dense, dim=-1)
        return pooled, dense

    # ------------------------------------------------------------------ text side
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids [N, context_length] (int64, on the CPU) with the model's own tokenizer."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise MlrkitError("tokenize needs a non-empty list of strings")
        if self._tokenizer is None:
            self._tokenizer = self._tokenizer_factory()
        return self._tokenizer(texts).long()

    def _text_parts(self) -> dict[str, Any]:
        """The text tower's pieces, wherever open_clip keeps them (CLIP: on the model; CustomTextCLIP: .text)."""
        clip = self.clip
        holder = clip if hasattr(clip, "token_embedding") else getattr(clip, "text", None)
        if holder is None or not hasattr(holder, "token_embedding") or not hasattr(holder, "transformer"):
            raise NoTextTower(f"{self.spec}: the text tower is not an open_clip text transformer "
                              "(Hugging Face text towers have no prompt-learning hooks)")
        return {
            "token_embedding": holder.token_embedding,
            "positional_embedding": holder.positional_embedding,
            "transformer": holder.transformer,
            "ln_final": holder.ln_final,
            "text_projection": holder.text_projection,
            "attn_mask": holder.attn_mask,
            "pool_type": getattr(holder, "text_pool_type", getattr(holder, "pool_type", "argmax")),
            "eos_id": getattr(holder, "text_eos_id", getattr(holder, "eos_id", None)),
            "cls_emb": getattr(holder, "cls_emb", None),
            "use_pad_mask": bool(getattr(holder, "use_pad_mask", False)),
            "holder": holder,
        }

    def _tokens(self, texts: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        if isinstance(texts, torch.Tensor):
            if texts.ndim != 2 or texts.dtype.is_floating_point:
                raise MlrkitError(f"token ids must be an integer tensor [N, L], got {texts.dtype} {tuple(texts.shape)}")
            tokens = texts
        else:
            tokens = self.tokenize(texts)
        return tokens.to(self.device)

    def encode_text(self, texts: str | Sequence[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings [N, D] of strings (tokenized here) or token ids [N, L] (open_clip's encode_text)."""
        tokens = self._tokens(texts)
        out = self.clip.encode_text(tokens)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text_from_embeddings(
        self, prompt_embeddings: torch.Tensor, tokens: torch.Tensor, normalize: bool = False
    ) -> torch.Tensor:
        """Text embeddings [N, D] from token *embeddings* [N, L, W] (CoOp's prompt-learning hook).

        Runs what ``encode_text`` runs after the token-embedding lookup: + positional embedding,
        the causal transformer (open_clip's ``attn_mask``, batch-first), ``ln_final``, pooling
        at the end-of-text token (``tokens.argmax(-1)`` for open_clip's default ``argmax`` pooling;
        the tokenizer's EOT id is the largest) and the text projection. ``tokens`` [N, L] are
        the ids the embeddings stand for; only their EOT position (and padding, where the tower
        masks it) is used, so learned context vectors can replace the placeholder tokens' rows.
        ``encode_text_from_embeddings(token_embedding(t), t) == encode_text(t)``.
        """
        parts = self._text_parts()
        if parts["cls_emb"] is not None:
            raise MlrkitError(f"{self.spec}: prompt embeddings are not supported for text towers with a CLS embedding")
        if prompt_embeddings.ndim != 3 or tokens.ndim != 2 or prompt_embeddings.shape[:2] != tokens.shape:
            raise MlrkitError(
                f"prompt_embeddings [N, L, W] and tokens [N, L] must agree, got "
                f"{tuple(prompt_embeddings.shape)} and {tuple(tokens.shape)}"
            )
        pos = parts["positional_embedding"]
        n_ctx = tokens.shape[1]
        if n_ctx > pos.shape[0] or prompt_embeddings.shape[2] != pos.shape[1]:
            raise MlrkitError(
                f"prompt embeddings {tuple(prompt_embeddings.shape)} do not fit the text tower "
                f"(context length {pos.shape[0]}, width {pos.shape[1]})"
            )
        require_open_clip()
        from open_clip.transformer import text_global_pool

        tokens = tokens.to(self.device)
        transformer = parts["transformer"]
        cast_dtype = transformer.get_cast_dtype()
        x = prompt_embeddings.to(device=self.device, dtype=cast_dtype) + pos[:n_ctx].to(cast_dtype)
        attn_mask = parts["attn_mask"]
        if attn_mask is not None and n_ctx != attn_mask.shape[0]:
            attn_mask = attn_mask[:n_ctx, :n_ctx]
        if parts["use_pad_mask"]:
            pad = parts["holder"]._build_additive_mask(tokens, n_ctx, x.dtype)
            attn_mask = pad if attn_mask is None else attn_mask.unsqueeze(0) + pad
        x = transformer(x, attn_mask=attn_mask)
        x = parts["ln_final"](x)
        x = text_global_pool(x, tokens, parts["pool_type"], eos_token_id=parts["eos_id"])
        proj = parts["text_projection"]
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if normalize else x

    @torch.no_grad()
    def class_text_embeddings(
        self,
        class_names: Sequence[str],
        templates: Sequence[str] = TEMPLATES["single"],
        batch_size: int = 256,
        normalize: bool = True,
    ) -> torch.Tensor:
        """One text embedding per class, [C, D]: the prompt-template ensemble of CLIP.

        For each class, every template is filled with the class name, encoded and L2-normalised;
        the class embedding is the mean over templates, renormalised when ``normalize``.
        ``batch_size`` bounds the number of prompts per forward pass (whole classes per batch).
        """
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise MlrkitError(f"class_names must be non-empty strings, got {names!r}")
        templates = (templates,) if isinstance(templates, str) else tuple(templates)
        bad = [t for t in templates if t.count("{}") != 1]
        if not templates or bad:
            raise MlrkitError(f"each template needs exactly one '{{}}' for the class name; bad: {bad or templates!r}")
        if batch_size < 1:
            raise MlrkitError(f"batch_size must be >= 1, got {batch_size}")
        per_batch = max(1, batch_size // len(templates))
        out = []
        for start in range(0, len(names), per_batch):
            chunk = names[start:start + per_batch]
            texts = [t.format(name) for name in chunk for t in templates]
            emb = self.encode_text(texts, normalize=True).float()
            out.append(emb.reshape(len(chunk), len(templates), -1).mean(dim=1))
        emb = torch.cat(out)
        return F.normalize(emb, dim=-1) if normalize else emb


def zeroshot_scores(model: VisionLanguageModel, images: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """Zero-shot logits [B, C] = ``logit_scale.exp() * cos(image, class)`` (CLIP's scaled cosine)."""
    if class_embeddings.ndim != 2 or class_embeddings.shape[1] != model.embed_dim:
        raise MlrkitError(
            f"class_embeddings must be [C, {model.embed_dim}], got {tuple(class_embeddings.shape)}"
        )
    img = model.encode_image(images, normalize=True)
    cls = F.normalize(class_embeddings.to(device=img.device, dtype=img.dtype), dim=-1)
    return model.logit_scale.exp() * img @ cls.t()
