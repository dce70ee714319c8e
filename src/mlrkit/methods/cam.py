r"""Method ``cam``: CAM-as-classifier with BoostLU (Kim et al., CVPR 2023).

The model is :class:`~mlrkit.models.cam.CAMClassifier`: backbone map :math:`F` -> 1×1 conv
(CAM :math:`M_c = w_c^\top F + b_c`, eq. 2) -> optional BoostLU :math:`\max(x,\alpha x)` ->
spatial mean (the logit, eq. 3). Any loss combines with it; the paper pairs it with the
large-loss modifications ``ll_r`` / ``ll_ct`` / ``ll_cp`` (Kim et al., CVPR 2022).

Config::

    method: {name: cam, flip: true, randaugment: false, cutout: 0.0}
    model:  {name: resnet50}            # any timm / tv: / smallcnn backbone (model.* as for finetune)
    model:  {name: "clip:tiny:rn"}      # or the trunk of a CLIP ResNet: clip:<vl spec>
    boostlu:
      train: false   # BoostLU in training mode (model.train())
      infer: false   # BoostLU in evaluation mode (model.eval()): validation, test, predict
      alpha: 5.0     # alpha >= 1
      groups: null   # grouped mAP report: number of groups (null: 5 on openimages, else off; 0: off)

The ``boostlu`` section is validated when the method is built (an unknown key is a ConfigError).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from torch import nn

from mlrkit.errors import ConfigError
from mlrkit.methods.base import METHODS, TaskInfo
from mlrkit.methods.image import ImageMethod, backbone_from_config
from mlrkit.models.backbones import Backbone
from mlrkit.models.cam import DEFAULT_ALPHA, CAMClassifier, ClipResNetTrunk, check_alpha

BOOSTLU_KEYS: dict[str, str] = {
    "train": "apply BoostLU in training mode (bool, default false)",
    "infer": "apply BoostLU in evaluation mode: validation, test, predict (bool, default false)",
    "alpha": "BoostLU's alpha >= 1 (default 5)",
    "groups": "classes per training-annotation groups for the grouped mAP report (int; default: 5 on "
              "openimages, off elsewhere; 0 = off)",
}
CLIP_PREFIX = "clip:"


@dataclass(frozen=True)
class BoostLUSettings:
    """The validated ``boostlu`` config section."""

    train: bool = False
    infer: bool = False
    alpha: float = DEFAULT_ALPHA
    groups: int | None = None


def boostlu_settings(cfg_or_section: Any) -> BoostLUSettings:
    """Validate the ``boostlu`` section (of a RunConfig, or the section dict itself).

    Unknown keys, non-boolean switches, ``alpha`` < 1 and a negative ``groups`` are ConfigErrors.
    """
    if cfg_or_section is None:
        return BoostLUSettings()
    section = cfg_or_section
    if hasattr(cfg_or_section, "extra"):
        section = cfg_or_section.extra.get("boostlu")
    if section is None:
        return BoostLUSettings()
    if not isinstance(section, dict):
        raise ConfigError(f"config section boostlu must be a mapping (train, infer, alpha, groups), got {section!r}")
    unknown = [k for k in section if k not in BOOSTLU_KEYS]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(BOOSTLU_KEYS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key 'boostlu.{k}'{hint}; valid: {', '.join(BOOSTLU_KEYS)}")
    for key in ("train", "infer"):
        if key in section and not isinstance(section[key], bool):
            raise ConfigError(f"boostlu.{key} must be true or false, got {section[key]!r}")
    alpha = check_alpha(section.get("alpha", DEFAULT_ALPHA))
    groups = section.get("groups")
    if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 0):
        raise ConfigError(f"boostlu.groups must be a non-negative integer (or null), got {groups!r}")
    return BoostLUSettings(train=bool(section.get("train", False)), infer=bool(section.get("infer", False)),
                           alpha=alpha, groups=groups)


def cam_backbone(cfg) -> Backbone:
    """The backbone for a CAM head: ``model.name`` as for finetune, or ``clip:<vl spec>`` (a CLIP ResNet trunk)."""
    name = cfg.model.name or ""
    if name.startswith(CLIP_PREFIX):
        spec = name[len(CLIP_PREFIX):]
        if not spec:
            raise ConfigError("model.name 'clip:' needs a vision-language spec: clip:tiny:rn, clip:openclip:RN50")
        if cfg.model.params:
            raise ConfigError(f"model {name!r} takes no parameters (got {sorted(cfg.model.params)}); weights go in "
                              "the spec: clip:openclip:RN50@/path/to/weights.pt")
        return ClipResNetTrunk(spec, seed=cfg.seed)
    return backbone_from_config(cfg)


@METHODS.register("cam", "CAM classifier: 1x1 conv on the backbone map, logit = spatial mean; BoostLU "
                         "max(x, alpha*x) via the boostlu section (Kim et al. 2023)")
class CamMethod(ImageMethod):
    """CAM-as-classifier (Kim et al. 2023, eqs. 2-3) with BoostLU switched by the ``boostlu`` section."""

    def __init__(self, flip: bool = True, randaugment: bool = False, cutout: float = 0.0) -> None:
        super().__init__(flip=flip, randaugment=randaugment, cutout=cutout)

    @property
    def cfg(self):
        return self._cfg

    @cfg.setter
    def cfg(self, value) -> None:
        if value is not None:
            self.boostlu = boostlu_settings(value)  # validated as soon as build_method attaches the config
        self._cfg = value

    def report_groups(self) -> int | None:
        return boostlu_settings(self.cfg).groups

    def build_model(self, task: TaskInfo) -> nn.Module:
        bb = cam_backbone(self.cfg)
        self.mean, self.std = bb.mean, bb.std
        s = boostlu_settings(self.cfg)
        return CAMClassifier(bb, task.num_classes, alpha=s.alpha, boost_train=s.train, boost_infer=s.infer)
