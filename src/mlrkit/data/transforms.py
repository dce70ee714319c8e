"""Image transforms, always built with the normalisation of the model that consumes them.

Train: Resize((S, S)) + horizontal flip [+ RandAugment] + ToTensor + Normalize [+ Cutout].
Eval:  Resize((S, S)) + ToTensor + Normalize.   (Cole et al. use S = 448.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torchvision (and with it its model zoo) is imported only when a transform is built
    from torchvision import transforms as T


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


def describe(transform) -> str:
    """A stable text form of a transform (part of FeatureStore cache keys)."""
    return repr(transform).replace("\n", " ")
