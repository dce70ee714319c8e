"""Image methods: a backbone + linear classifier trained end to end (``finetune``), and frozen-backbone
features for the fixed-feature methods (Cole et al.'s three training modes).

* ``linear_fixed_features``: method ``linear``/``mlp`` on an image dataset; the frozen backbone
  ``model.name`` is run once over every split (FeatureStore cache), then the head trains on features.
* ``end_to_end``: method ``finetune``; backbone and classifier trained together
  (Cole: classifier lr x10 via ``train.classifier_lr_mult``).
* ``linear_init``: method ``finetune`` with ``linear_init_epochs > 0``: the classifier is first
  trained on frozen features with the run's loss, then everything is fine-tuned.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.data.transforms import build_transform, transform_identity
from mlrkit.engine.image_data import ImageBatches
from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.methods.base import METHODS, Method, TaskInfo
from mlrkit.models.backbones import Backbone, build_backbone
from mlrkit.utils import derive_seed

log = logging.getLogger("mlrkit")
#: ``model.name: vl:<spec>`` makes a VL model's (frozen) image encoder the feature extractor of linear/mlp
VL_PREFIX = "vl:"


def backbone_from_config(cfg, warn=None, *, frozen: bool = False) -> Backbone:
    """The backbone of ``cfg.model`` (name, weights, pretrained, and backbone kwargs).

    Pretrained weights are the default (``model.pretrained: true``); random weights only on
    explicit request (``model.pretrained: false``) or for ``smallcnn`` (which has none), and then
    ``warn`` (e.g. :meth:`Method.warn`, recorded in ``run.json``) is told; louder when ``frozen``.
    """
    m = dict(cfg.model.params)
    name = cfg.model.name or "resnet50"
    weights = m.pop("weights", None)
    pretrained = m.pop("pretrained", True)
    if not isinstance(pretrained, bool):
        raise ConfigError(f"model.pretrained must be true or false, got {pretrained!r} (weights files and tags go in "
                          "model.weights)")
    if not weights and (not pretrained or name == "smallcnn") and warn is not None:
        why = "model.pretrained is false" if name != "smallcnn" else "smallcnn has no pretrained weights"
        warn(f"backbone {name} has RANDOM weights ({why})" + (
            ": frozen random features carry little information about the images" if frozen else
            ": it is trained from scratch"))
    return build_backbone(name, weights=weights, pretrained=pretrained, image_size=cfg.data.image_size, **m)


def encoder_key(cfg) -> str:
    """Identity of a frozen backbone for the FeatureStore: name, kwargs and a hash of the weights file."""
    from mlrkit.models.backbones import is_weights_file

    m = dict(cfg.model.params)
    weights = m.pop("weights", None)
    pretrained = m.pop("pretrained", True)
    wh = "random-init"
    if is_weights_file(weights):
        wh = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    elif weights:
        wh = f"pretrained:{weights}"
    elif pretrained and (cfg.model.name or "resnet50") != "smallcnn":
        wh = "pretrained"
    seed = cfg.seed if wh == "random-init" else "-"
    return f"backbone:{cfg.model.name or 'resnet50'}|{sorted(m.items())}|weights:{wh}|seed:{seed}"


def frozen_backbone(cfg, warn=None) -> tuple[Backbone, Any, dict[str, Any]]:
    """``(backbone, transform, identity)`` of the frozen encoder of ``cfg.model``: the backbone in eval mode
    (random-init ones seeded from ``cfg.seed``, so they are reproducible), its evaluation transform at
    ``cfg.data.image_size``, and its identity (``encoder_key``, the transform's text, ``mean``/``std``)."""
    torch.manual_seed(derive_seed(cfg.seed, 99))
    bb = backbone_from_config(cfg, warn, frozen=True).eval()
    tf = build_transform(cfg.data.image_size, bb.mean, bb.std, train=False)
    return bb, tf, {"encoder_key": encoder_key(cfg), **transform_identity(tf)}


def frozen_features(cfg, splits: dict, *, device, progress: bool = True, warn=None,
                    check=None) -> dict[str, Any] | None:
    """Attach frozen-backbone features to every split in ``splits`` (name -> Split; computed once, cached).

    Returns the backbone's identity (``encoder_key``, the evaluation ``transform``'s text, its ``mean``/``std``;
    what ``extract-features`` records in a features file), after ``check(identity)`` (if given) accepted it
    before any image is encoded; None for ``vl:`` encoders.
    """
    from mlrkit.features import FeatureStore

    name = cfg.model.name or ""
    if name.startswith(VL_PREFIX):  # a VL model's image encoder: a linear probe on CLIP features
        from mlrkit.vl import load
        from mlrkit.vl.features import attach_vl_features

        spec = name[len(VL_PREFIX):]
        if not spec or cfg.model.params:
            raise ConfigError(f"model.name {name!r}: give a VL spec (vl:mosaic-clip, vl:openclip:ViT-B-16@FILE) and no "
                              f"other model keys (got {sorted(cfg.model.params)})")
        attach_vl_features(load(spec, seed=cfg.seed).freeze(), splits, cache_dir=cfg.section("features").cache_dir,
                           device=device, progress=progress, seed=cfg.seed, batch_size=max(64, cfg.train.batch_size))
        return None
    bb, tf, identity = frozen_backbone(cfg, warn)
    bb = bb.to(device)
    store = FeatureStore(cfg.section("features").cache_dir)
    key = identity["encoder_key"]
    if check is not None:
        check(identity)
    for name, split in splits.items():
        if split.images is None:
            raise MlrkitError(f"the {name} split has neither features nor images")
        feats = store.get(key, bb, split.images, tf, batch_size=max(cfg.train.batch_size, 64), device=device,
                          num_workers=cfg.train.num_workers, progress=progress, desc=f"features ({name})")
        split.features = np.array(feats, dtype=np.float32)  # in memory: heads index it every step
    return identity


class BackboneClassifier(nn.Module):
    """logits = W · pool(backbone(x)) + b."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.backbone(x)))


class ImageMethod(Method):
    """Base of methods that read images: transforms built from the model's own normalisation."""

    input_kind = "images"
    uses_model = True

    def __init__(self, flip: bool = True, randaugment: bool = False, cutout: float = 0.0) -> None:
        super().__init__()
        self.flip, self.randaugment, self.cutout = bool(flip), bool(randaugment), float(cutout)
        self.mean = self.std = None

    def transform(self, train: bool):
        if self.mean is None:
            raise RuntimeError("build_model() first: transforms follow the model's normalisation")
        size = self.cfg.data.image_size
        return build_transform(size, self.mean, self.std, train=train, flip=self.flip,
                               randaugment=self.randaugment, cutout=self.cutout)

    def transform_summary(self) -> dict[str, str]:
        from mlrkit.data.transforms import describe

        return {"train": describe(self.transform(True)), "eval": describe(self.transform(False))}

    def eval_transform(self):
        return self.transform(False)

    def make_loader(self, split, observed, batch_size: int, *, train: bool, seed: int,
                    shard: tuple[int, int] = (0, 1)):
        tc = self.cfg.train
        return ImageBatches(split, observed, self.transform(train), batch_size, shuffle=train, seed=seed,
                            num_workers=tc.num_workers, pin_memory=torch.cuda.is_available(), shard=shard)


@METHODS.register("finetune", "backbone (model.name) + linear classifier trained end to end on images")
class FinetuneMethod(ImageMethod):
    """Cole et al.'s ``end_to_end`` (and ``linear_init`` with ``linear_init_epochs`` > 0)."""

    def __init__(self, flip: bool = True, randaugment: bool = False, cutout: float = 0.0, dropout: float = 0.0,
                 freeze_backbone: bool = False, linear_init_epochs: int = 0, linear_init_lr: float = 1e-3,
                 linear_init_batch_size: int = 16) -> None:
        super().__init__(flip=flip, randaugment=randaugment, cutout=cutout)
        self.dropout, self.freeze_backbone = float(dropout), bool(freeze_backbone)
        self.linear_init_epochs, self.linear_init_lr = int(linear_init_epochs), float(linear_init_lr)
        self.linear_init_batch_size = int(linear_init_batch_size)

    def build_model(self, task: TaskInfo) -> nn.Module:
        bb = backbone_from_config(self.cfg, self.warn, frozen=self.freeze_backbone)
        self.mean, self.std = bb.mean, bb.std
        if self.freeze_backbone:
            for p in bb.parameters():
                p.requires_grad_(False)
        return BackboneClassifier(bb, task.num_classes, self.dropout)

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        if self.linear_init_epochs <= 0 or resuming:
            return
        linear_init(model, data, loss, self, device=device)


def linear_init(model: BackboneClassifier, data, loss, method: FinetuneMethod, *, device) -> None:
    """Cole et al.'s linear_init: train the classifier alone on frozen features, with the run's loss.

    The features are computed once; the classifier's steps run on the shared loop
    (:class:`mlrkit.engine.loop.TrainLoop`: AMP as ``train.amp``, NaN checks, progress). Every rank
    takes the same seeded batches of the whole training split, so the phase ends with the same
    classifier on every process (nothing to average).
    """
    from mlrkit.engine.loop import StepResult, TrainLoop

    cfg = method.cfg
    model.eval()
    loader = method.make_loader(data.train, None, max(64, cfg.train.batch_size), train=False, seed=cfg.seed)
    feats = []
    with torch.no_grad():
        for b in loader:
            feats.append(model.backbone(b["inputs"].to(device)).float())
    x = torch.cat(feats)
    obs = torch.from_numpy(data.observed_train).to(device)
    opt = torch.optim.Adam(model.classifier.parameters(), lr=method.linear_init_lr)
    loop = TrainLoop(model.classifier, opt, device=device, amp=cfg.train.amp, env=_single_process())
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, 7))
    bs = method.linear_init_batch_size
    for epoch in range(method.linear_init_epochs):
        order = torch.randperm(len(x), generator=g)

        def compute(i: int, order=order, epoch=epoch) -> StepResult:
            idx = order[i : i + bs].to(device)
            return StepResult(loss(model.classifier(x[idx]), obs[idx], index=idx, epoch=epoch), n=len(idx))

        loop.run_epoch(range(0, len(x), bs), compute, where=f"in linear_init epoch {epoch + 1}")
    log.info("linear_init: classifier trained %d epochs on frozen features", method.linear_init_epochs)


def _single_process():
    from mlrkit.engine.distributed import DistEnv

    return DistEnv()  # every rank runs the same full-batch phase: no gradient averaging
