"""Methods on a vision-language model: ``zeroshot`` (no training) and ``vlpl`` (Xing et al. 2024).

Both take the VL model from ``vl.model`` (``--vl-model``, default ``mosaic-clip``) with its own
preprocessing; frozen image embeddings are computed once per image (FeatureStore).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.methods.base import METHODS, Method, TaskInfo
from mlrkit.methods.image import FinetuneMethod

log = logging.getLogger("mlrkit")


def load_vl(cfg, device=None):
    """The configured VL model, frozen and shared (:func:`mlrkit.vl.load_frozen`; checkpoints leave it out)."""
    from mlrkit.vl import load_frozen

    return load_frozen(cfg.vl.model, seed=cfg.seed, device=device)


def templates_of(cfg) -> tuple[str, ...]:
    from mlrkit.vl.model import prompt_templates

    return prompt_templates(cfg.vl.templates)


def vl_features_for(cfg, model, splits: dict, *, device, progress: bool) -> None:
    """Attach the VL model's pooled image embeddings to every split (cached)."""
    from mlrkit.features import FeatureStore
    from mlrkit.vl.features import vl_image_features

    store = FeatureStore(cfg.extra.get("features", {}).get("cache_dir"))
    for name, split in splits.items():
        if split.images is None:
            raise MlrkitError(f"method needs images, the {name} split has none")
        feats = vl_image_features(model, split.images, store=store, device=device, progress=progress,
                                  desc=f"{cfg.vl.model} features ({name})", seed=cfg.seed,
                                  batch_size=max(64, cfg.train.batch_size))
        split.features = np.array(feats, dtype=np.float32)


class ZeroShotHead(nn.Module):
    """logits_ic = s · cos(f_i, t_c), s = exp(logit_scale) of the VL model (CLIP eq.)."""

    def __init__(self, text: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("text", F.normalize(text.float(), dim=-1))
        self.register_buffer("scale", torch.tensor(float(logit_scale)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1) @ self.text.t()


@METHODS.register("zeroshot", "CLIP zero-shot baseline: cos(image, class-name prompt), no training")
class ZeroShotMethod(Method):
    input_kind = "features"

    def __init__(self) -> None:
        super().__init__()
        self._vl = None

    def vl_model(self, device=None):
        if self._vl is None:
            self._vl = load_vl(self.cfg, device)
        return self._vl

    def prepare_data(self, data, *, device, progress: bool = True) -> None:
        if self.cfg.train.epochs != 0:
            raise ConfigError("method zeroshot trains nothing: set --epochs 0")
        self.attach_features({"train": data.train, "val": data.val, "test": data.test}, device=device,
                             progress=progress)

    def attach_features(self, splits: dict, *, device, progress: bool = True) -> None:
        vl_features_for(self.cfg, self.vl_model(device), splits, device=device, progress=progress)

    def build_model(self, task: TaskInfo) -> nn.Module:
        m = self.vl_model()
        with torch.no_grad():
            text = m.class_text_embeddings(task.class_names, templates_of(self.cfg)).cpu()
            scale = float(m.logit_scale.exp())
        task.extras.setdefault("feature_encoder", "vl")
        return ZeroShotHead(text, scale)


@METHODS.register("vlpl", "VLPL: backbone trained with EM + VL pseudo-labels computed once (Xing et al. 2024)")
class VLPLMethod(FinetuneMethod):
    """Finetune a backbone with loss ``vlpl``; pseudo-labels of the training split come from the VL model."""

    def __init__(self, tau: float = 0.03, theta: float = 0.3, delta: float = 0.0, flip: bool = True,
                 randaugment: bool = False, cutout: float = 0.0, dropout: float = 0.0,
                 freeze_backbone: bool = False, linear_init_epochs: int = 0, linear_init_lr: float = 1e-3,
                 linear_init_batch_size: int = 16) -> None:
        super().__init__(flip=flip, randaugment=randaugment, cutout=cutout, dropout=dropout,
                         freeze_backbone=freeze_backbone, linear_init_epochs=linear_init_epochs,
                         linear_init_lr=linear_init_lr, linear_init_batch_size=linear_init_batch_size)
        self.params.update(tau=tau, theta=theta, delta=delta)
        self.tau, self.theta, self.delta = float(tau), float(theta), float(delta)
        self.quality: dict = {}

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        if not hasattr(loss, "set_pseudo_labels"):
            raise ConfigError(f"method vlpl needs loss vlpl (got {self.cfg.loss.name!r})")
        pl = self.compute_pseudo_labels(data, device=device)
        loss.set_pseudo_labels(torch.from_numpy(pl.labels).to(device))
        self.quality = pl.quality
        out = self.cfg.out
        if out:
            pl.save(f"{out}/pseudo_labels.npz")
        super().init_from_train(model, data, loss, device=device, resuming=resuming)

    def compute_pseudo_labels(self, data, *, device, progress: bool = False):
        from mlrkit.features import FeatureStore
        from mlrkit.vl.pseudo_labels import PseudoLabels, compute_vl_pseudo_labels, ids_sha256, pseudo_label_quality

        train = data.train
        labels = compute_vl_pseudo_labels(
            load_vl(self.cfg, device), train.images, data.class_names, templates=templates_of(self.cfg),
            tau=self.tau, theta=self.theta, delta=self.delta,
            store=FeatureStore(self.cfg.extra.get("features", {}).get("cache_dir")), seed=self.cfg.seed,
            device=device, batch_size=max(64, self.cfg.train.batch_size), progress=progress,
            desc=f"{self.cfg.vl.model} features (train)")
        quality = pseudo_label_quality(labels, train.targets, data.observed_train)
        return PseudoLabels(labels=labels, vl_model=self.cfg.vl.model, tau=self.tau, theta=self.theta,
                            delta=self.delta, templates=self.cfg.vl.templates, dataset=data.dataset.name,
                            split="train", ids_sha256=ids_sha256(train.ids), quality=quality)

    def run_info(self) -> dict:
        return {"pseudo_label_quality": self.quality, "tau": self.tau, "theta": self.theta, "delta": self.delta}
