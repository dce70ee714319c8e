r"""CAM-as-classifier head and BoostLU (Kim et al., CVPR 2023).

Kim, Kim, Jeong, Schmid, Akata, Lee, "Bridging the Gap between Model Explanations in Partially
Annotated Multi-label Classification", CVPR 2023 (reference code
``youngwk/BridgeGapExplanationPAMC``).

With :math:`F \in \mathbb{R}^{D\times h\times w}` the backbone's last feature map, a 1×1
convolution gives one class activation map per class (paper eq. 2)

.. math::
    M_c = w_c^\top F + b_c \in \mathbb{R}^{h\times w},

and the logit of class :math:`c` is its spatial mean (eq. 3)

.. math::
    s_c = \frac{1}{hw}\sum_{i,j} M_c(i,j).

Without BoostLU this is exactly a linear classifier on globally average-pooled features (the
mean commutes with the 1×1 convolution). BoostLU boosts the positive attributions before the
pooling,

.. math::
    \mathrm{BoostLU}(x) = \max(x, \alpha x) = \begin{cases}\alpha x & x \ge 0\\ x & x < 0\end{cases},
    \qquad s_c = \frac{1}{hw}\sum_{i,j} \mathrm{BoostLU}(M_c(i,j)),

with :math:`\alpha \ge 1` (5 in the paper). Negative attributions are kept as they are. It can be
switched on at training time and at inference time independently: the module's ``training``
flag (``model.train()`` / ``model.eval()``) picks which switch applies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.models.backbones import Backbone

DEFAULT_ALPHA = 5.0


def boostlu(x: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    r"""BoostLU, element-wise: :math:`\max(x, \alpha x)` (``alpha`` ≥ 1 scales the positive entries)."""
    if alpha < 1:
        raise ValueError(f"BoostLU needs alpha >= 1 (max(x, alpha*x) would boost negatives), got {alpha}")
    return torch.maximum(x, x * alpha)


def check_alpha(alpha: float, where: str = "boostlu.alpha") -> float:
    """``alpha`` as a float, ≥ 1 (a ConfigError otherwise)."""
    if isinstance(alpha, bool):
        raise ConfigError(f"{where} must be a number >= 1, got {alpha!r}")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number >= 1, got {alpha!r}") from None
    if not a >= 1.0 or a == float("inf"):
        raise ConfigError(f"{where} must be a finite number >= 1 (BoostLU = max(x, alpha*x)), got {alpha!r}")
    return a


class CAMClassifier(nn.Module):
    r"""Backbone map -> 1×1 conv (CAM, eq. 2) -> [BoostLU] -> spatial mean (eq. 3) = logits [B, C].

    Args:
        backbone: a :class:`~mlrkit.models.backbones.Backbone` with ``forward_map`` ([B, D, h, w]).
        num_classes: C.
        alpha: BoostLU's :math:`\alpha` (≥ 1).
        boost_train: apply BoostLU in training mode (``model.train()``).
        boost_infer: apply BoostLU in evaluation mode (``model.eval()``).
    """

    def __init__(self, backbone: Backbone, num_classes: int, *, alpha: float = DEFAULT_ALPHA,
                 boost_train: bool = False, boost_infer: bool = False) -> None:
        super().__init__()
        if not getattr(backbone, "has_map", True):
            raise MlrkitError("a CAM classifier needs a backbone with a spatial feature map (a CNN), not a ViT")
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.feature_dim, num_classes, kernel_size=1)
        self.alpha = check_alpha(alpha)
        self.boost_train = bool(boost_train)
        self.boost_infer = bool(boost_infer)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, boost_train={self.boost_train}, boost_infer={self.boost_infer}"

    @property
    def boost_active(self) -> bool:
        """Whether :meth:`forward` applies BoostLU now (the train switch in train mode, else the infer one)."""
        return self.boost_train if self.training else self.boost_infer

    def cam(self, x: Tensor) -> Tensor:
        """The raw class activation maps :math:`M_c` [B, C, h, w] (before BoostLU)."""
        return self.classifier(self.backbone.forward_map(x))

    def pool(self, cam: Tensor, boost: bool | None = None) -> Tensor:
        """Logits [B, C]: spatial mean of the CAM, after BoostLU when ``boost`` (default: :attr:`boost_active`)."""
        if boost is None:
            boost = self.boost_active
        if boost:
            cam = boostlu(cam, self.alpha)
        return cam.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.cam(x))


class ClipResNetTrunk(Backbone):
    """The image tower of a CLIP ModifiedResNet (RN50, ``tiny:rn``…) up to ``layer4``, without the attention pool.

    ``forward_map`` is the ``layer4`` map [B, D, h, w] (total stride 32); ``mean``/``std`` are the
    CLIP model's own normalisation. Built from any :func:`mlrkit.vl.load` spec whose image tower is
    a ModifiedResNet (``tiny:rn``, ``openclip:RN50``, ``openclip:RN50@/path/weights.pt``…); the text
    tower is dropped.
    """

    def __init__(self, spec: str, seed: int = 0) -> None:
        super().__init__()
        from mlrkit import vl

        model = vl.load(spec, seed=seed)
        if model._visual_kind() != "resnet":
            raise MlrkitError(f"clip:{spec}: a CAM head needs a CLIP ResNet image tower (ModifiedResNet), "
                              f"not {type(model.clip.visual).__name__}; try clip:tiny:rn or clip:openclip:RN50")
        visual = model.clip.visual
        visual.attnpool = nn.Identity()  # not used: the CAM replaces the attention pool
        self.visual = visual
        self.spec = spec
        self.feature_dim = int(visual.layer4[-1].bn3.num_features)  # Bottleneck: planes * 4
        self.mean = tuple(float(v) for v in model.preprocess_cfg["mean"])
        self.std = tuple(float(v) for v in model.preprocess_cfg["std"])
        self.has_map = True

    def forward_map(self, x: Tensor) -> Tensor:
        v = self.visual
        x = x.to(v.conv1.weight.dtype)
        x = v.stem(x)
        x = v.layer1(x)
        x = v.layer2(x)
        x = v.layer3(x)
        return v.layer4(x)
