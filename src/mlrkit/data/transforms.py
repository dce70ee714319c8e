r"""Image transforms, always built with the normalisation of the model that consumes them.

Train: Resize((S, S)) + horizontal flip [+ RandAugment] + ToTensor + Normalize [+ Cutout].
Eval:  Resize((S, S)) + ToTensor + Normalize.   (Cole et al. use S = 448.)

Also the building blocks of the papers' reference pipelines (``docs/*.md``, "Deviations"):

* :func:`resize_ops`: ``squash`` (the whole image stretched to S x S, as DualCoOp/PositiveCoOp/VLPL's
  code) or ``crop`` (shorter side to S, then the central S x S: open_clip's and SCPNet's evaluation).
  On a W x H image with W > H, ``crop`` drops :math:`1 - H/W` of it (a quarter of a 4:3 photo).
* :class:`FixMatchRandAugment`: SCPNet's strong view (FixMatch's RandAugment): ``n`` ops drawn
  with replacement from 14, each with a magnitude drawn uniformly over its **whole** range, then a
  Cutout square of side :math:`v\,W`, :math:`v\sim U[0, 0.5]`, always.
* :class:`PolicyRandAugment` + :class:`CutoutPIL`: DualCoOp/PositiveCoOp's training view (the
  ``randaugment`` PyPI package's policy: two ops drawn from 15, each applied with probability 0.5
  at a magnitude bin drawn from 1..9 of 10; before it, a Cutout of half the image side, always).

Every random draw uses torch's RNG, so the loaders' per-(seed, epoch, worker) seeding covers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from mlrkit.errors import ConfigError

if TYPE_CHECKING:  # torchvision (and with it its model zoo, ~4 s) is imported only when a transform is built
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

RESIZE_MODES = ("squash", "crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    flip: bool = True,
    randaugment: bool = False,
    cutout: float = 0.0,
) -> T.Compose:
    """A torchvision pipeline; ``cutout`` is the erased area fraction (RandomErasing), 0 = off."""
    from torchvision import transforms as T

    ops: list = [T.Resize((image_size, image_size))]
    if train and flip:
        ops.append(T.RandomHorizontalFlip(0.5))
    if train and randaugment:
        ops.append(T.RandAugment())
    ops += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if train and cutout > 0:
        ops.append(T.RandomErasing(p=1.0, scale=(cutout, cutout), ratio=(1.0, 1.0), value=0))
    return T.Compose(ops)


def interpolation_mode(name: str, where: str = "interpolation") -> InterpolationMode:
    """``bilinear`` | ``bicubic`` | ``nearest`` -> torchvision's mode; anything else is a ConfigError."""
    from torchvision.transforms import InterpolationMode

    key = str(name).lower()
    if key not in INTERPOLATIONS:
        raise ConfigError(f"{where} must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return InterpolationMode(key)


def model_interpolation(preprocess_cfg: dict, name: str, where: str = "interpolation") -> InterpolationMode:
    """``name``, or for ``"model"`` the VL model's own interpolation (``preprocess_cfg``; bicubic if unset)."""
    if name == "model":
        name = str(preprocess_cfg.get("interpolation") or "bicubic")
    return interpolation_mode(name, where)


def resize_ops(size: int, mode: str, interpolation: InterpolationMode, where: str = "resize") -> list:
    """``squash``: Resize((S, S)), the whole image; ``crop``: Resize(S) (shorter side) + CenterCrop(S)."""
    from torchvision import transforms as T

    if mode == "squash":
        return [T.Resize((int(size), int(size)), interpolation=interpolation)]
    if mode == "crop":
        return [T.Resize(int(size), interpolation=interpolation), T.CenterCrop(int(size))]
    raise ConfigError(f"{where} must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")


def normalize_ops(mean: Sequence[float], std: Sequence[float]) -> list:
    from torchvision import transforms as T

    return [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _randint(n: int) -> int:
    return int(torch.randint(n, ()))


def _sign() -> int:
    return 1 if _randint(2) else -1


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _affine(img: Image.Image, coeffs: tuple, resample=None, fill=None) -> Image.Image:
    kw = {} if fill is None else {"fillcolor": fill}
    return img.transform(img.size, Image.AFFINE, coeffs, resample or Image.NEAREST, **kw)


def _cutout_box(img: Image.Image, side: float, fill: tuple[int, int, int]) -> Image.Image:
    """A ``side`` x ``side`` box of colour ``fill`` at a uniformly drawn centre (clipped to the image)."""
    w, h = img.size
    x0 = max(0, int(_uniform(0, w) - side / 2.0))
    y0 = max(0, int(_uniform(0, h) - side / 2.0))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + side), min(h, y0 + side)), fill)
    return out


# ---------------------------------------------------------------------------- FixMatch RandAugment (SCPNet)
# (name, low, high): the magnitude is drawn uniformly in [low, high] for every application.
FIXMATCH_OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0), ("Brightness", 0.05, 0.95), ("Color", 0.05, 0.95), ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0), ("Identity", 0.0, 1.0), ("Posterize", 4.0, 8.0), ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3), ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3),
)
FIXMATCH_CUTOUT_FILL = (125, 123, 114)


def _fixmatch_apply(img: Image.Image, name: str, v: float) -> Image.Image:
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Identity":
        return img
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(v)
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name == "Rotate":
        return img.rotate(v)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    w, h = img.size
    return _affine(img, {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
                         "TranslateX": (1, 0, v * w, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v * h)}[name])


@dataclass
class FixMatchDraw:
    ops: list[tuple[str, float]]
    cutout: float  # side of the Cutout square as a fraction of the image width


class FixMatchRandAugment:
    r"""SCPNet's strong augmentation (FixMatch-style RandAugment), on a PIL image.

    ``n`` ops drawn with replacement from :data:`FIXMATCH_OPS`; op :math:`k` with range
    :math:`[a_k, b_k]` is applied at :math:`v = a_k + (b_k - a_k)u`, :math:`u \sim U[0,1]` drawn anew
    each time (no fixed magnitude); then, always, a Cutout square of side :math:`v_c W`,
    :math:`v_c \sim U[0, \text{cutout\_max}]`, filled with (125, 123, 114).
    """

    def __init__(self, n: int = 3, cutout_max: float = 0.5) -> None:
        if int(n) < 0 or not 0.0 <= float(cutout_max) < 1.0:
            raise ConfigError(f"FixMatch RandAugment needs n >= 0 and 0 <= cutout_max < 1, got {n}, {cutout_max}")
        self.n, self.cutout_max = int(n), float(cutout_max)

    def draw(self) -> FixMatchDraw:
        ops = []
        for _ in range(self.n):
            name, low, high = FIXMATCH_OPS[_randint(len(FIXMATCH_OPS))]
            ops.append((name, _uniform(low, high)))
        return FixMatchDraw(ops, _uniform(0.0, self.cutout_max))

    def apply(self, img: Image.Image, d: FixMatchDraw) -> Image.Image:
        img = _rgb(img)
        for name, v in d.ops:
            img = _fixmatch_apply(img, name, v)
        if d.cutout > 0:
            img = _cutout_box(img, d.cutout * img.size[0], FIXMATCH_CUTOUT_FILL)
        return img

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img, self.draw())

    def __repr__(self) -> str:
        return f"FixMatchRandAugment(n={self.n}, magnitudes=uniform over each op's range, " \
               f"cutout=always, side U[0, {self.cutout_max}] x W)"


# ---------------------------------------------------------------------------- policy RandAugment (DualCoOp)
POLICY_BINS = 10
POLICY_OPS = ("Invert", "Cutout", "Sharpness", "AutoContrast", "Posterize", "ShearX", "TranslateX", "TranslateY",
              "ShearY", "Rotate", "Equalize", "Contrast", "Color", "Solarize", "Brightness")


def policy_magnitude(name: str, index: int) -> float:
    """Magnitude of bin ``index`` (0..9) of op ``name`` in the ``randaugment`` package's tables."""
    def lin(a: float, b: float) -> float:
        return a + (b - a) * index / (POLICY_BINS - 1)

    table = {"ShearX": lin(0, 0.3), "ShearY": lin(0, 0.3), "TranslateX": lin(0, 150 / 331),
             "TranslateY": lin(0, 150 / 331), "Rotate": lin(0, 30), "Color": lin(0, 0.9),
             "Posterize": float(round(lin(8, 4))), "Solarize": lin(256, 0), "Contrast": lin(0, 0.9),
             "Sharpness": lin(0, 0.9), "Brightness": lin(0, 0.9), "Cutout": float(round(lin(0, 20))),
             "AutoContrast": 0.0, "Equalize": 0.0, "Invert": 0.0}
    return table[name]


def _policy_apply(img: Image.Image, name: str, m: float, sign: int) -> Image.Image:
    grey = (128, 128, 128)
    w, h = img.size
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        coeffs = {"ShearX": (1, m * sign, 0, 0, 1, 0), "ShearY": (1, 0, 0, m * sign, 1, 0),
                  "TranslateX": (1, 0, m * w * sign, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, m * h * sign)}[name]
        return _affine(img, coeffs, Image.BICUBIC if name.startswith("Shear") else None, grey)
    if name == "Rotate":  # counter-clockwise only, grey corners (as the package)
        rot = img.convert("RGBA").rotate(m)
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)
    if name in ("Color", "Contrast", "Sharpness", "Brightness"):
        return getattr(ImageEnhance, name)(img).enhance(1 + m * sign)
    if name == "Posterize":
        return ImageOps.posterize(img, int(m))
    if name == "Solarize":
        return ImageOps.solarize(img, m)
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Cutout":
        return _cutout_box(img, int(m) // 2 * 2, (125, 122, 113)) if int(m) >= 2 else img
    raise ValueError(name)


@dataclass
class PolicyDraw:
    ops: list[tuple[str, int, bool, int]]  # (op, magnitude bin 1..9, applied, sign)


class PolicyRandAugment:
    """DualCoOp/PositiveCoOp's ``RandAugment()`` (the ``randaugment`` 1.0.2 package), on a PIL image.

    A policy of two ops, each drawn uniformly from :data:`POLICY_OPS` with a magnitude bin drawn
    uniformly from 1..9 (of 10, see :func:`policy_magnitude`), each applied with probability 0.5;
    enhancement/shear/translation ops take a random sign.
    """

    def draw(self) -> PolicyDraw:
        ops = []
        for _ in range(2):
            name = POLICY_OPS[_randint(len(POLICY_OPS))]
            index = 1 + _randint(POLICY_BINS - 1)
            ops.append((name, index, float(torch.rand(())) < 0.5, _sign()))
        return PolicyDraw(ops)

    def apply(self, img: Image.Image, d: PolicyDraw) -> Image.Image:
        img = _rgb(img)
        for name, index, applied, sign in d.ops:
            if applied:
                img = _policy_apply(img, name, policy_magnitude(name, index), sign)
        return img

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img, self.draw())

    def __repr__(self) -> str:
        return "PolicyRandAugment(2 of 15 ops, p=0.5 each, magnitude bin U{1..9} of 10)"


class CutoutPIL:
    """DualCoOp's Cutout, always applied: a box of ``factor`` x the image's width and height around a
    uniformly drawn centre (clipped at the borders), filled with a uniformly drawn colour."""

    def __init__(self, factor: float = 0.5) -> None:
        if not 0.0 < float(factor) <= 1.0:
            raise ConfigError(f"cutout factor must be in (0, 1], got {factor}")
        self.factor = float(factor)

    def __call__(self, img: Image.Image) -> Image.Image:
        img = _rgb(img).copy()
        w, h = img.size
        hw, hh = int(self.factor * w + 0.5) // 2, int(self.factor * h + 0.5) // 2
        cx, cy = _randint(w), _randint(h)
        fill = tuple(_randint(256) for _ in range(3))
        ImageDraw.Draw(img).rectangle((max(0, cx - hw), max(0, cy - hh), min(w, cx + hw), min(h, cy + hh)), fill)
        return img

    def __repr__(self) -> str:
        return f"CutoutPIL(factor={self.factor}, always, random colour)"


def dualcoop_train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                             interpolation: InterpolationMode | None = None) -> T.Compose:
    """DualCoOp/PositiveCoOp's training view: Resize((S, S)), CutoutPIL(0.5), RandAugment(), normalise (no flip).
    ``interpolation`` defaults to bilinear."""
    from torchvision import transforms as T

    if interpolation is None:
        interpolation = interpolation_mode("bilinear")
    return T.Compose([*resize_ops(size, "squash", interpolation), CutoutPIL(0.5), PolicyRandAugment(),
                      *normalize_ops(mean, std)])


def describe(transform) -> str:
    """A stable text form of a transform (part of FeatureStore cache keys)."""
    return repr(transform).replace("\n", " ")


def transform_identity(transform) -> dict:
    """What a frozen encoder's input pipeline is: its text (:func:`describe`), the [H, W] it crops or
    resizes to last (``input_size``; [S, S] for an int size, whose Resize keeps the aspect ratio; None
    when it has none) and its Normalize mean/std (None when it has none); recorded in features files
    (:mod:`mlrkit.engine.feature_source`)."""
    ops = getattr(transform, "transforms", [])
    norm = [t for t in ops if type(t).__name__ == "Normalize"]
    mean = [float(v) for v in norm[0].mean] if norm else None
    std = [float(v) for v in norm[0].std] if norm else None
    sizes = [t.size for t in ops if type(t).__name__ in ("Resize", "CenterCrop") and getattr(t, "size", None)]
    size = sizes[-1] if sizes else None
    input_size = [int(size), int(size)] if isinstance(size, int) else (list(map(int, size)) if size else None)
    return {"transform": describe(transform), "input_size": input_size, "mean": mean, "std": std}
