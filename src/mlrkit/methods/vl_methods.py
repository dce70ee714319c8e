"""Methods on a vision-language model: ``zeroshot`` (no training) and ``vlpl`` (Xing et al. 2024).

Both take the VL model from ``vl.model`` (``--vl-model``, default ``mosaic-clip``) with its own
preprocessing; frozen image embeddings are computed once per image (FeatureStore).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.features.options import FeaturesSection
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
    from mlrkit.vl.features import attach_vl_features

    attach_vl_features(model, splits, cache_dir=cfg.section("features").cache_dir, device=device, progress=progress,
                       seed=cfg.seed, batch_size=max(64, cfg.train.batch_size))


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
    uses_vl_text = True
    default_loss = {"name": "bce"}  # never optimised (nothing is trained); recorded for completeness
    config_defaults = {"train": {"epochs": 0}}
    image_size_from_vl = True
    uses_vl = True
    config_sections = {"features": FeaturesSection}
    trains = False

    def __init__(self) -> None:
        super().__init__()
        self._vl = None

    def vl_model(self, device=None):
        if self._vl is None:
            self._vl = load_vl(self.cfg, device)
        return self._vl

    def prepare_data(self, data, *, device, progress: bool = True) -> None:
        if self.cfg.train.epochs != 0:
            raise ConfigError(f"method zeroshot trains nothing, but train.epochs is {self.cfg.train.epochs}: drop "
                              "--epochs (zeroshot defaults to 0)")
        self.attach_features({"train": data.train, "val": data.val, "test": data.test}, device=device,
                             progress=progress)

    def attach_features(self, splits: dict, *, device, progress: bool = True) -> None:
        vl_features_for(self.cfg, self.vl_model(device), splits, device=device, progress=progress)

    def build_model(self, task: TaskInfo) -> nn.Module:
        m = self.vl_model()
        with torch.no_grad():
            text = m.class_text_embeddings(task.class_names, templates_of(self.cfg)).cpu()
            scale = float(m.logit_scale.exp())
        task.extras["feature_encoder"] = "vl"  # the features are the run's VL model's (not a backbone's)
        return ZeroShotHead(text, scale)


@METHODS.register("vlpl", "VLPL: backbone trained with EM + VL pseudo-labels computed once (Xing et al. 2024)")
class VLPLMethod(FinetuneMethod):
    """Finetune a backbone with loss ``vlpl``; pseudo-labels of the training split come from the VL model.

    ``pseudo_labels``: ``once`` (mlrkit's default: each training image's pseudo-labels come from the VL
    model's own evaluation view, computed once and cached) or ``every_step`` (the reference code: at every
    step, the VL model sees the backbone's training view of the batch, i.e. Resize((S, S)) + flip with the
    backbone's (ImageNet) normalisation, resized bilinearly to the VL model's input size, and the batch's
    pseudo-labels are recomputed from it; slower, a VL forward per step).
    """

    default_loss = {"name": "vlpl"}
    uses_vl_text = True
    uses_vl = True
    config_sections = {"features": FeaturesSection}
    makes_pseudo_labels = True

    def __init__(self, tau: float = 0.03, theta: float = 0.3, delta: float = 0.0, flip: bool = True,
                 randaugment: bool = False, cutout: float = 0.0, dropout: float = 0.0,
                 freeze_backbone: bool = False, linear_init_epochs: int = 0, linear_init_lr: float = 1e-3,
                 linear_init_batch_size: int = 16, pseudo_labels: str = "once") -> None:
        super().__init__(flip=flip, randaugment=randaugment, cutout=cutout, dropout=dropout,
                         freeze_backbone=freeze_backbone, linear_init_epochs=linear_init_epochs,
                         linear_init_lr=linear_init_lr, linear_init_batch_size=linear_init_batch_size)
        if pseudo_labels not in ("once", "every_step"):
            raise ConfigError(f"method.pseudo_labels must be once or every_step, got {pseudo_labels!r}")
        self.tau, self.theta, self.delta = float(tau), float(theta), float(delta)
        self.pseudo_mode = pseudo_labels
        self.quality: dict = {}
        self._step_vl: tuple | None = None

    def step_pseudo_labels(self, images: Tensor) -> Tensor:
        """The reference's per-step pseudo-labels [B, C] (int8) of a batch of training views."""
        if self._step_vl is None:
            raise MlrkitError("vlpl: every_step pseudo-labels need init_from_train first")
        vl_model, text = self._step_vl
        size = vl_model.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        with torch.no_grad():
            x = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            f = F.normalize(vl_model.encode_image(x.to(text.device)).float(), dim=-1)
            s = torch.softmax((f @ text.t()) / self.tau, dim=1)
            out = (s > self.theta).to(torch.int8)
            k = int(self.delta * s.shape[1])
            if k > 0:
                out.scatter_(1, s.topk(k, dim=1, largest=False).indices, -1)
        return out

    def training_step(self, model: nn.Module, batch: dict, loss_fn, epoch: int):
        if self.pseudo_mode == "every_step":
            loss_fn.pseudo[batch["index"].to(loss_fn.pseudo.device)] = \
                self.step_pseudo_labels(batch["inputs"]).to(loss_fn.pseudo.device)
        return super().training_step(model, batch, loss_fn, epoch)

    def transform_summary(self) -> dict[str, str]:
        out = super().transform_summary()
        if self.pseudo_mode == "every_step":
            out["pseudo_labels"] = "every step, from the training view resized (bilinear) to the VL input size"
        else:
            out["pseudo_labels"] = f"once, from the VL model's evaluation view ({self.cfg.vl.model})"
        return out

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        if not hasattr(loss, "set_pseudo_labels"):
            raise ConfigError(f"method vlpl needs loss vlpl (got {self.cfg.loss.name!r})")
        pl = self.compute_pseudo_labels(data, device=device)
        loss.set_pseudo_labels(torch.from_numpy(pl.labels).to(device))
        if self.pseudo_mode == "every_step":
            vl_model = load_vl(self.cfg, device)
            with torch.no_grad():
                text = vl_model.class_text_embeddings(data.class_names, templates_of(self.cfg)).float().to(device)
            self._step_vl = (vl_model, F.normalize(text, dim=-1))
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
            store=FeatureStore(self.cfg.section("features").cache_dir), seed=self.cfg.seed,
            device=device, batch_size=max(64, self.cfg.train.batch_size), progress=progress,
            desc=f"{self.cfg.vl.model} features (train)")
        quality = pseudo_label_quality(labels, train.targets, data.observed_train)
        return PseudoLabels(labels=labels, vl_model=self.cfg.vl.model, tau=self.tau, theta=self.theta,
                            delta=self.delta, templates=self.cfg.vl.templates, dataset=data.dataset.name,
                            split="train", ids_sha256=ids_sha256(train.ids), quality=quality)

    def run_info(self) -> dict:
        return {"pseudo_label_quality": self.quality, "tau": self.tau, "theta": self.theta, "delta": self.delta}
