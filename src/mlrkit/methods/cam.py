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

The ``boostlu`` section is :class:`BoostLUSection`, checked when the configuration is loaded (an
unknown key, a bad value, or the section with another method is a ConfigError).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from mlrkit.errors import ConfigError
from mlrkit.methods.base import METHODS, TaskInfo
from mlrkit.methods.image import ImageMethod, backbone_from_config
from mlrkit.models.backbones import Backbone
from mlrkit.models.cam import DEFAULT_ALPHA, CAMClassifier, ClipResNetTrunk, check_alpha
from mlrkit.schema import Section, setting

CLIP_PREFIX = "clip:"


@dataclass
class BoostLUSection(Section):
    """The ``boostlu`` config section (read by method ``cam``)."""

    section_name: ClassVar[str] = "boostlu"
    train: bool = setting(False, help="apply BoostLU in training mode")
    infer: bool = setting(False, help="apply BoostLU in evaluation mode: validation, test, predict")
    alpha: float = setting(DEFAULT_ALPHA, help="BoostLU's alpha >= 1")
    groups: int | None = setting(None, help="groups of classes by training annotations for the grouped mAP "
                                             "report (default: the dataset's, 5 on openimages; 0 = off)")

    def check(self, where: str) -> None:
        self.alpha = check_alpha(self.alpha, f"{where}.alpha")
        if self.groups is not None and self.groups < 0:
            raise ConfigError(f"{where}.groups must be a non-negative integer (or null), got {self.groups!r}")


def boostlu_settings(cfg_or_section: Any) -> BoostLUSection:
    """The checked ``boostlu`` section of a RunConfig whose method is ``cam`` (or of the section dict)."""
    if hasattr(cfg_or_section, "section"):
        return cfg_or_section.section("boostlu")
    return BoostLUSection.parse(cfg_or_section, "boostlu")


def cam_backbone(cfg, warn=None) -> Backbone:
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
    return backbone_from_config(cfg, warn)


@METHODS.register("cam", "CAM classifier: 1x1 conv on the backbone map, logit = spatial mean; BoostLU "
                         "max(x, alpha*x) via the boostlu section (Kim et al. 2023)")
class CamMethod(ImageMethod):
    """CAM-as-classifier (Kim et al. 2023, eqs. 2-3) with BoostLU switched by the ``boostlu`` section."""

    default_loss = {"name": "ll_r"}  # the paper pairs the CAM head with large-loss rejection
    config_sections = {"boostlu": BoostLUSection}

    def __init__(self, flip: bool = True, randaugment: bool = False, cutout: float = 0.0) -> None:
        super().__init__(flip=flip, randaugment=randaugment, cutout=cutout)

    def report_groups(self) -> int | None:
        return boostlu_settings(self.cfg).groups

    def build_model(self, task: TaskInfo) -> nn.Module:
        bb = cam_backbone(self.cfg, self.warn)
        self.mean, self.std = bb.mean, bb.std
        s = boostlu_settings(self.cfg)
        return CAMClassifier(bb, task.num_classes, alpha=s.alpha, boost_train=s.train, boost_infer=s.infer)
