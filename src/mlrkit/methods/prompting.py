r"""Prompt learning for partial labels: ``dualcoop``, ``positivecoop``, ``negativecoop`` and ``baseline``.

* DualCoOp (Sun, Hu, Saenko, NeurIPS 2022): a learned positive and a learned negative prompt per
  class through the frozen CLIP text encoder, class-specific region aggregation over CLIP's dense
  image features, ASL on the (negative, positive) softmax pair.
* PositiveCoOp / NegativeCoOp / Baseline (Rawlekar, Bhatnagar, Ahuja, WACV 2025): one of the two
  prompts replaced by a learned embedding per class in the joint space (PositiveCoOp keeps the
  positive prompt, NegativeCoOp the negative one); the Baseline has no text encoder at all (a
  linear map :math:`D\to 2C` of the region features).

Every model returns :math:`s^+_c - s^-_c` [B, C] (see :mod:`mlrkit.models.region`): the sigmoid of
it *is* DualCoOp's 2-way softmax probability, so the loss is the zoo's ``asl`` (with
``unknown: ignore`` on partial labels, as the reference ignores unannotated entries).

**Frozen encoder, cached features.** The image encoder is frozen, so its dense features
[N, HW, D] are computed once per image through the :class:`~mlrkit.features.FeatureStore` (key:
VL spec + weights hash + transform + view) and training reads them; the CLIP image tower never
runs during training. Augmentation is kept by caching ``features.cache_views`` = K views per
training image: view 0 is the evaluation transform (``features.resize``: ``squash``, the whole
image stretched to S x S as the reference code, or ``crop``, open_clip's shorter-side resize + centre
crop), views 1..K-1 the training augmentation (``features.augment``: ``crop``, open_clip's random
resized crop with scale ``features.aug_scale`` plus a horizontal flip ``features.hflip``; or
``reference``, DualCoOp's Resize((S, S)) + Cutout(0.5) + RandAugment(), see
:func:`mlrkit.data.transforms.dualcoop_train_transform`), each drawn from a generator seeded by
(``features.view_seed``, view, row), so the cache is reproducible and shared by runs with different
seeds. Each epoch every training row uses view :math:`v = f(\text{seed}, \text{epoch}, \text{row})`,
uniform over the K views. Validation and test use view 0 only. ``features.online: true`` is the
reference's set-up instead: a fresh augmented view of every training image at every step, through
the frozen image tower (slow; nothing is cached for training). The text encoder still runs at every
step for the learned prompts (that is the method), on prompts cut after their EOT token.

Config: ``vl.model`` (``--vl-model``, default ``mosaic-clip``); ``features.cache_views``
(``--cache-views``, default 1), ``features.view_seed`` (0), ``features.resize`` (squash | crop,
default squash), ``features.interpolation`` (model | bilinear | bicubic; ``model`` = the VL model's
own, bicubic for open_clip; the reference code's Resize is bilinear), ``features.augment`` (crop |
reference), ``features.online`` (false), ``features.aug_scale`` ([0.9, 1.0], the scale range of
open_clip's training crop), ``features.hflip`` (true), ``features.dtype`` (float32 | float16),
``features.batch_size`` (64), ``features.max_memory_gb`` (4: larger caches are read from the memory
map batch by batch), ``features.cache_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.data.base import Split
from mlrkit.data.sampler import GlobalBatchSampler
from mlrkit.engine.host_memory import use_for_chunked_text
from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.features.options import FeaturesSection
from mlrkit.methods.base import METHODS, Method, StepOutput, TaskInfo
from mlrkit.models.prompt_learner import (
    TEXT_CHUNK,
    EmbeddingBranch,
    PromptBranch,
    PromptLearner,
    RegionLinearModel,
    RegionPromptModel,
    count_parameters,
    transfer_state,
)
from mlrkit.models.region import OUTPUT_SCALE, REGION_SCALE
from mlrkit.utils import derive_seed

log = logging.getLogger("mlrkit")

# ---------------------------------------------------------------------------- cached dense views
class _Prepared:
    """Stands in for the transform in FeatureStore keys: images arrive already transformed."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def __repr__(self) -> str:
        return self.description


class ViewImages:
    """View ``view`` of a split's images, transformed, as an ImageSource for the FeatureStore.

    View 0 is ``eval_tf(image)``; view v >= 1 is ``train_tf(image)`` with torch's RNG seeded from
    (``seed``, v, official-train row), so the same view of the same image is always the same.
    ``key(i)`` adds the split's id of the image to the source's key.
    """

    def __init__(self, split: Split, view: int, eval_tf, train_tf, seed: int) -> None:
        self.split, self.view, self.eval_tf, self.train_tf, self.seed = split, int(view), eval_tf, train_tf, int(seed)

    def __len__(self) -> int:
        return len(self.split)

    def load(self, i: int) -> Tensor:
        img = self.split.images.load(i)
        if self.view == 0:
            return self.eval_tf(img)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.view, int(self.split.index[i])))
            return self.train_tf(img)

    def key(self, i: int) -> str:
        return f"{self.split.ids[i]}|{self.split.images.key(i)}"


def _interp(vl, name: str):
    from mlrkit.data.transforms import model_interpolation

    return model_interpolation(vl.preprocess_cfg, name, "features.interpolation")


def _image_size(vl, image_size: int | None) -> int:
    if image_size is not None:
        return int(image_size)
    size = vl.preprocess_cfg["size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def eval_view_transform(vl, image_size: int | None, resize: str = "squash", interpolation: str = "model"):
    """View 0 (evaluation and caching): ``squash`` Resize((S, S)) or ``crop`` Resize(S) + CenterCrop(S), then
    the VL model's normalisation."""
    from torchvision import transforms as T

    from mlrkit.data.transforms import normalize_ops, resize_ops

    pp = vl.preprocess_cfg
    return T.Compose([*resize_ops(_image_size(vl, image_size), resize, _interp(vl, interpolation), "features.resize"),
                      *normalize_ops(pp["mean"], pp["std"])])


def train_view_transform(vl, image_size: int | None, aug_scale: Sequence[float], hflip: bool,
                         augment: str = "crop", interpolation: str = "model"):
    """The augmentation of views >= 1 (and of ``online`` training views).

    ``crop``: optional horizontal flip, then the VL model's training transform (random resized crop,
    scale ``aug_scale``); ``reference``: DualCoOp's Resize((S, S)) + CutoutPIL(0.5) + RandAugment()
    (no flip, as the reference code).
    """
    from torchvision import transforms as T

    from mlrkit.data.transforms import dualcoop_train_transform

    if augment == "reference":
        pp = vl.preprocess_cfg
        return dualcoop_train_transform(_image_size(vl, image_size), pp["mean"], pp["std"], _interp(vl, interpolation))
    if augment != "crop":
        raise ConfigError(f"features.augment must be crop or reference, got {augment!r}")
    if len(aug_scale) != 2 or not 0 < float(aug_scale[0]) <= float(aug_scale[1]) <= 1:
        raise ConfigError(f"features.aug_scale must be [low, high] with 0 < low <= high <= 1, got {aug_scale!r}")
    tf = vl.transform(train=True, image_size=image_size,
                      aug_cfg={"scale": (float(aug_scale[0]), float(aug_scale[1]))})
    return T.Compose([T.RandomHorizontalFlip(0.5), tf]) if hflip else tf


def feature_options(cfg) -> dict[str, Any]:
    """The ``features`` section with defaults (:class:`~mlrkit.features.options.FeaturesSection`)."""
    return cfg.section("features").as_dict()


def view_transforms(vl, image_size: int | None, opts: dict[str, Any]):
    """``(eval, train)``: view 0 and the augmentation of the other (or online) views, from ``features``."""
    return (eval_view_transform(vl, image_size, opts["resize"], opts["interpolation"]),
            train_view_transform(vl, image_size, opts["aug_scale"], opts["hflip"], opts["augment"],
                                 opts["interpolation"]))


def dense_views(vl, split: Split, *, views: int, image_size: int | None, encoder_key: str, opts: dict[str, Any],
                device, pos_embed: bool = True, num_workers: int = 0, progress: bool = True,
                desc: str = "dense features") -> list[np.ndarray]:
    """K cached dense-feature views [N, HW, D] of a split (computed once, FeatureStore)."""
    from mlrkit.data.transforms import describe
    from mlrkit.features import FeatureStore

    if split.images is None:
        raise MlrkitError(f"{desc}: the split has no images (prompt methods need images)")
    store = FeatureStore(opts["cache_dir"])
    eval_tf, train_tf = view_transforms(vl, image_size, opts)
    out = []
    for v in range(views):
        tf_text = describe(eval_tf) if v == 0 else f"view {v} seed {opts['view_seed']}: {describe(train_tf)}"
        images = ViewImages(split, v, eval_tf, train_tf, opts["view_seed"])
        arr = store.get(f"{encoder_key}|pos_embed:{pos_embed}", lambda x: vl.encode_dense(x, pos_embed=pos_embed),
                        images, _Prepared(tf_text), batch_size=opts["batch_size"], device=device,
                        num_workers=num_workers, dtype=np.dtype(opts["dtype"]), progress=progress,
                        desc=f"{desc} view {v + 1}/{views}")
        out.append(arr)
    if sum(a.nbytes for a in out) <= opts["max_memory_gb"] * 2**30:
        out = [np.array(a) for a in out]  # read into memory (else batches are read from the memory map)
    return out


class DenseBatches:
    """Batches of cached region features: each row's view per epoch is ``f(seed, epoch, row)``.

    ``inputs`` are [B, HW, D] float32 tensors; ``index`` is the row in the split (as FeatureBatches).
    """

    def __init__(self, views: list[np.ndarray], split: Split, observed: np.ndarray | None, batch_size: int, *,
                 shuffle: bool, seed: int = 0, sample_views: bool = True, drop_last: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> None:
        if not views:
            raise MlrkitError("no cached dense features")
        n = len(split)
        if any(len(v) != n for v in views):
            raise MlrkitError(f"cached views have {[len(v) for v in views]} rows, the split {n}")
        self.views = views
        self.targets = torch.from_numpy(split.targets.astype(np.int8))
        obs = observed if observed is not None else np.zeros_like(split.targets, dtype=np.int8)
        self.observed = torch.from_numpy(np.ascontiguousarray(obs.astype(np.int8)))
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.sample_views, self.drop_last = sample_views and len(views) > 1, drop_last
        self.sampler = GlobalBatchSampler(n, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, shard=shard)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def view_of(self, epoch: int) -> np.ndarray:
        """The view every row uses in ``epoch`` (int [N]): uniform over the K views, seeded by (seed, epoch)."""
        n = len(self.targets)
        if not self.sample_views:
            return np.zeros(n, dtype=np.int64)
        return np.random.default_rng(derive_seed(self.seed, epoch, 41)).integers(len(self.views), size=n)

    def gather(self, rows: np.ndarray, views: np.ndarray) -> Tensor:
        out = None
        for v in np.unique(views):
            sel = np.flatnonzero(views == v)
            r = rows[sel]
            order = np.argsort(r)  # sorted reads from memory maps
            block = np.empty((len(r), *self.views[v].shape[1:]), dtype=np.float32)
            block[order] = self.views[v][r[order]]
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), dtype=np.float32)
            out[sel] = block
        return torch.from_numpy(out)

    def __iter__(self):
        view = self.view_of(self.epoch)  # drawn for every row: the same on every rank
        for idx, n_global in self.sampler.shards():
            rows = idx.numpy()
            yield {"inputs": self.gather(rows, view[rows]), "observed": self.observed[idx],
                   "targets": self.targets[idx], "index": idx, "n_global": n_global}


# ---------------------------------------------------------------------------- methods
class RegionMethod(Method):
    """Shared machinery: the frozen VL model, cached dense views, loaders, loss weight, ``init_from``.

    ``input_kind`` is ``"images"``: the loaders feed cached region features, and the models also
    accept image batches (they then run ``encode_dense`` themselves, e.g. for ``predict``).
    """

    uses_vl = True
    config_sections = {"features": FeaturesSection}

    input_kind = "images"
    #: DualCoOp's ASL (configs/prompting/*: gamma+ 1, gamma- 2, clip 0.05, unknown entries ignored)
    default_loss = {"name": "asl", "gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.05, "unknown": "ignore",
                    "detach_focusing": True}
    image_size_from_vl = True

    def __init__(self, *, loss_weight: float = 1.0, init_from: str | None = None) -> None:
        super().__init__()
        if not loss_weight > 0:
            raise ConfigError(f"loss_weight must be > 0, got {loss_weight}")
        self.loss_weight = float(loss_weight)
        self.init_from = init_from
        self.pos_embed = True
        self._device: torch.device | str = "cpu"
        self._key: str | None = None

    # -------------------------------------------------------------- VL model and features
    def vl_model(self, device=None):
        from mlrkit.vl import load_frozen

        return load_frozen(self.cfg.vl.model, seed=self.cfg.seed, device=device)

    def encoder_key(self) -> str:
        if self._key is None:
            from mlrkit.vl.features import vl_encoder_key

            self._key = vl_encoder_key(self.vl_model(), dense=True, seed=self.cfg.seed)
        return self._key

    def attach_dense(self, split: Split, *, views: int, device, progress: bool, desc: str) -> list[np.ndarray]:
        opts = feature_options(self.cfg)
        arrs = dense_views(self.vl_model(device), split, views=views, image_size=self.cfg.data.image_size,
                           encoder_key=self.encoder_key(), opts=opts, device=device, pos_embed=self.pos_embed,
                           num_workers=self.cfg.train.num_workers, progress=progress, desc=desc)
        split.extras["dense_views"] = arrs
        return arrs

    def prepare_data(self, data, *, device, progress: bool = True) -> None:
        """Cache K views of the training split and one of validation/test (no CLIP forward afterwards);
        with ``features.online`` the training split is not cached (a fresh view every step)."""
        self._device = device
        opts = feature_options(self.cfg)
        k = opts["cache_views"]
        for name, split, views in (("train", data.train, k), ("val", data.val, 1), ("test", data.test, 1)):
            if name == "train" and opts["online"]:
                continue
            self.attach_dense(split, views=views, device=device, progress=progress,
                              desc=f"{self.cfg.vl.model} dense ({name})")

    def eval_transform(self):
        """View 0: what evaluation and prediction images go through before ``encode_dense``."""
        return view_transforms(self.vl_model(), self.cfg.data.image_size, feature_options(self.cfg))[0]

    def transform_summary(self) -> dict[str, str]:
        """The resolved image transforms: what training and evaluation images go through."""
        from mlrkit.data.transforms import describe

        opts = feature_options(self.cfg)
        eval_tf, train_tf = view_transforms(self.vl_model(), self.cfg.data.image_size, opts)
        k = opts["cache_views"]
        if opts["online"]:
            train = f"online (a fresh view every step): {describe(train_tf)}"
        elif k == 1:
            train = f"cached, 1 view (no augmentation): {describe(eval_tf)}"
        else:
            train = f"cached, {k} views: view 0 = eval; views 1..{k - 1} = {describe(train_tf)}"
        return {"train": train, "eval": describe(eval_tf)}

    # The engine slices each global batch for the rank: with online views (features.online) every rank then
    # draws the whole batch's augmentations in one process's order, so N processes == 1 process exactly.
    loader_shards = False

    def make_loader(self, split: Split, observed, batch_size: int, *, train: bool, seed: int,
                    shard: tuple[int, int] = (0, 1)):
        opts = feature_options(self.cfg)
        if train and opts["online"]:
            from mlrkit.engine.image_data import ImageBatches

            _, train_tf = view_transforms(self.vl_model(), self.cfg.data.image_size, opts)
            return ImageBatches(split, observed, train_tf, batch_size, shuffle=True, seed=seed,
                                num_workers=self.cfg.train.num_workers, pin_memory=torch.cuda.is_available())
        views = split.extras.get("dense_views")
        if views is None:  # evaluate / predict: the cached clean view (computed now if new)
            views = self.attach_dense(split, views=1, device=self._device, progress=False, desc="dense features")
        return DenseBatches(views if train else views[:1], split, observed, batch_size, shuffle=train, seed=seed,
                            sample_views=train)

    # -------------------------------------------------------------- training
    def training_step(self, model: nn.Module, batch: dict, loss_fn, epoch: int):
        """``loss_weight`` x the run's loss on :math:`s^+ - s^-` (the reference's ``loss_w``, see docs)."""
        out = super().training_step(model, batch, loss_fn, epoch)
        return StepOutput(self.loss_weight * out.loss, out.terms)

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        if self.init_from and not resuming:
            how = load_prompts(model, self.init_from)
            log.info("initialised from %s: %s", self.init_from, how)

    def classifier_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Learned embeddings (everything but prompt contexts): they get ``train.classifier_lr_mult``."""
        ctx = {id(m.ctx) for m in model.modules() if isinstance(m, PromptLearner)}
        return [p for p in model.parameters() if p.requires_grad and id(p) not in ctx]

    @contextmanager
    def seeded_init(self) -> Iterator[None]:
        """Parameter initialisation from a forked RNG seeded by the run seed (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed if self.cfg is not None else 0, 5))
            yield


class PromptMethod(RegionMethod):
    r"""Positive / negative class features from learned prompts or learned embeddings.

    Hyper-parameters (``method:`` section):
        n_ctx: context length :math:`M` (16); csc: class-specific contexts (true);
        ctx_init / neg_ctx_init: words initialising the positive / negative context (empty: random);
        init_std: std of random contexts (0.02); embed_init_std: std of learned embeddings (1.0, as
        ``torch.randn`` in the PositiveCoOp reference; only their direction matters);
        embed_init: ``random`` (the reference) or ``text``: a learned positive (negative) embedding
        starts at the frozen text embedding of ``"a photo of a {}."`` (``"a photo without a {}."``),
        at the same norm (an mlrkit option: it removes the initial offset between a prompt branch
        and a random embedding, see docs/prompting.md);
        prompt_residual: add a learned per-class vector to the prompt's text feature (the
        PositiveCoOp/NegativeCoOp reference code does, always; off = the papers' description);
        residual_init: ``randn`` (the reference's ``torch.randn``: N(0, 1) per entry) or ``zeros``
        (the prompt's text feature unchanged at the start);
        region_scale :math:`\tau_r` (20), output_scale :math:`\tau_o` (5): DualCoOp's temperatures;
        pos_embed: add the attention pool's positional embedding to ResNet dense features (true);
        text_chunk: class prompts per text-encoder pass, activation-checkpointed in training (256; 0 =
        one pass): bounds the text side's memory for thousands of classes (see
        :func:`~mlrkit.models.prompt_learner.encode_prompts`);
        loss_weight: multiplies the loss (1.0); init_from: a run directory or checkpoint whose
        prompts/embeddings initialise this run (loaded by class name, see ``transfer_state``).
    """

    uses_vl_text = True  # prompts are initialised from / compared with class-name text

    positive = "prompt"
    negative = "prompt"

    def __init__(self, n_ctx: int = 16, csc: bool = True, ctx_init: str = "", neg_ctx_init: str = "",
                 init_std: float = 0.02, embed_init_std: float = 1.0, embed_init: str = "random",
                 prompt_residual: bool = False, residual_init: str = "randn",
                 region_scale: float = REGION_SCALE, output_scale: float = OUTPUT_SCALE, pos_embed: bool = True,
                 text_chunk: int = TEXT_CHUNK, loss_weight: float = 1.0, init_from: str | None = None) -> None:
        super().__init__(loss_weight=loss_weight, init_from=init_from)
        if isinstance(text_chunk, bool) or not isinstance(text_chunk, int) or text_chunk < 0:
            raise ConfigError(f"method.text_chunk must be an integer >= 0 (0 = one pass), got {text_chunk!r}")
        self.text_chunk = int(text_chunk)
        self.n_ctx, self.csc = int(n_ctx), bool(csc)
        self.ctx_init, self.neg_ctx_init = str(ctx_init or ""), str(neg_ctx_init or "")
        self.init_std, self.embed_init_std = float(init_std), float(embed_init_std)
        self.prompt_residual = bool(prompt_residual)
        if residual_init not in ("randn", "zeros"):
            raise ConfigError(f"method.residual_init must be 'randn' or 'zeros', got {residual_init!r}")
        self.residual_init = residual_init
        if embed_init not in ("random", "text"):
            raise ConfigError(f"embed_init must be 'random' or 'text', got {embed_init!r}")
        self.embed_init = embed_init
        self.region_scale, self.output_scale = float(region_scale), float(output_scale)
        self.pos_embed = bool(pos_embed)

    def _branch(self, kind: str, vl, names: list[str], init: str, template: str) -> nn.Module:
        if kind == "prompt":
            return PromptBranch(vl, names, n_ctx=self.n_ctx, csc=self.csc, init=init, init_std=self.init_std,
                                residual=self.prompt_residual, text_chunk=self.text_chunk,
                                residual_std=1.0 if self.residual_init == "randn" else 0.0)
        text = vl.class_text_embeddings(names, (template,)).cpu() if self.embed_init == "text" else None
        return EmbeddingBranch(names, vl.embed_dim, init_std=self.embed_init_std, init=text)

    def build_model(self, task: TaskInfo) -> nn.Module:
        names = list(task.class_names)
        # many classes: chunked text encoding, where glibc's heap fragments (mlrkit.engine.host_memory)
        use_for_chunked_text(len(names), self.text_chunk)
        vl = self.vl_model()
        with self.seeded_init():
            pos = self._branch(self.positive, vl, names, self.ctx_init, "a photo of a {}.")
            neg = self._branch(self.negative, vl, names, self.neg_ctx_init, "a photo without a {}.")
        return RegionPromptModel(vl, names, pos, neg, region_scale=self.region_scale, output_scale=self.output_scale,
                                 weights="positive", pos_embed=self.pos_embed)


@METHODS.register("dualcoop", "DualCoOp: learned positive + negative prompts over CLIP region features "
                              "(Sun et al. 2022)")
class DualCoOpMethod(PromptMethod):
    positive, negative = "prompt", "prompt"


@METHODS.register("positivecoop", "PositiveCoOp: learned positive prompt + learned negative embedding "
                                  "(Rawlekar et al. 2025)")
class PositiveCoOpMethod(PromptMethod):
    positive, negative = "prompt", "embedding"


@METHODS.register("negativecoop", "NegativeCoOp: learned positive embedding + learned negative prompt "
                                  "(Rawlekar et al. 2025)")
class NegativeCoOpMethod(PromptMethod):
    positive, negative = "embedding", "prompt"


@METHODS.register("baseline", "vision-only baseline: CLIP region features + learned pos/neg embeddings, "
                              "no text encoder (Rawlekar et al. 2025)")
class BaselineMethod(RegionMethod):
    r"""Linear :math:`D\to 2C` on CLIP region features, per-branch spatial softmax pooling, x ``output_scale``."""

    def __init__(self, output_scale: float = OUTPUT_SCALE, pos_embed: bool = True, loss_weight: float = 1.0,
                 init_from: str | None = None) -> None:
        super().__init__(loss_weight=loss_weight, init_from=init_from)
        self.output_scale, self.pos_embed = float(output_scale), bool(pos_embed)

    def build_model(self, task: TaskInfo) -> nn.Module:
        vl = self.vl_model()
        with self.seeded_init():
            return RegionLinearModel(vl, list(task.class_names), output_scale=self.output_scale,
                                     pos_embed=self.pos_embed)


PROMPT_METHODS = ("dualcoop", "positivecoop", "negativecoop", "baseline")


# ---------------------------------------------------------------------------- transfer, dry run
def load_prompts(model: nn.Module, source: str | Path) -> dict[str, str]:
    """Initialise ``model``'s learned prompts/embeddings from a run directory (``best.pt``) or checkpoint."""
    from mlrkit.engine.checkpoint import load_checkpoint

    path = Path(source)
    if path.is_dir():
        path = path / "best.pt"
    ck = load_checkpoint(path)
    names = ck.get("task", {}).get("class_names")
    if not names:
        raise MlrkitError(f"{path}: the checkpoint does not record its class names")
    return transfer_state(model, ck["model"], names)


COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""The 80 COCO 2014 category names in category-id order (for dry runs without the dataset)."""


def builtin_class_names(dataset: str) -> list[str] | None:
    """Class names of well-known datasets without their files (VOC, COCO), else None."""
    if dataset in ("voc2007", "voc2012"):
        from mlrkit.data.datasets.voc import VOC_CLASSES

        return list(VOC_CLASSES)
    if dataset == "coco2014":
        return list(COCO_CLASSES)
    return None


def _transforms_without_classes(cfg, method) -> dict[str, str]:
    """The method's transforms when the dataset (and so its classes) is unavailable. Methods whose transforms
    follow the built model's normalisation (image backbones) build it for one stand-in class, only to read them."""
    try:
        return method.transform_summary()
    except RuntimeError:  # "build_model() first"
        method.build_model(TaskInfo(class_names=["(stand-in class)"], input_kind=method.input_kind,
                                    image_size=cfg.data.image_size))
        return method.transform_summary()


def dry_run(cfg) -> dict[str, Any]:
    """Build the run's method and model without training or extracting anything; parameter counts and
    the resolved train/eval image transforms (``transforms``).

    Class names come from the dataset; when its files are absent, VOC and COCO fall back to their
    known class lists (``class_names_from`` says which). For any other dataset whose files are absent,
    the transforms (which do not depend on the classes) are still printed, with ``classes: null`` and
    no parameter counts (they do depend on the classes).
    """
    from mlrkit.engine.checkpoint import trainable_state_dict
    from mlrkit.engine.run_data import prepare_run_data, task_info
    from mlrkit.engine.trainer import build_for_task, build_run_loss
    from mlrkit.errors import DataError
    from mlrkit.methods.base import build_method

    method = build_method(cfg)
    build_run_loss(cfg)
    try:
        data = prepare_run_data(cfg)
        task = task_info(cfg, data, method.input_kind)
        source = "dataset"
    except (DataError, MlrkitError) as e:
        names = builtin_class_names(cfg.data.name)
        reason = str(e).splitlines()[0][:160]
        if names is None:
            return {"method": cfg.method.name, "dataset": cfg.data.name, "classes": None,
                    "class_names_from": f"unavailable (dataset not loaded: {reason})",
                    "parameters": "not counted: they depend on the dataset's classes",
                    "transforms": _transforms_without_classes(cfg, method)}
        task = TaskInfo(class_names=names, input_kind=method.input_kind, image_size=cfg.data.image_size)
        source = f"built-in {cfg.data.name} class list (dataset not loaded: {reason})"
    built = build_for_task(cfg, task, method)
    counts = count_parameters(built.model)
    out: dict[str, Any] = {"method": cfg.method.name, "dataset": cfg.data.name, "classes": task.num_classes,
                           "class_names_from": source, **counts,
                           "checkpoint_values": int(sum(v.numel() for v in trainable_state_dict(built.model).values())),
                           "transforms": method.transform_summary()}
    vl = getattr(built.model, "vl", None)
    if vl is not None:
        out.update(vl_model=vl.spec, embed_dim=vl.embed_dim, image_size=cfg.data.image_size,
                   dense_grid=list(vl.dense_grid(cfg.data.image_size)),
                   cache_views=feature_options(cfg)["cache_views"])
    return out
