"""The ``features`` config section: where frozen-encoder features are cached and how views are made.

Read by every method that computes frozen features through the :class:`~mlrkit.features.FeatureStore`
(``cache_dir``) and, for the prompt/region methods, by their cached dense views (the other keys;
``docs/prompting.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlrkit.errors import ConfigError
from mlrkit.schema import Section, setting


@dataclass
class FeaturesSection(Section):
    """``features``: the feature cache and the cached/online views of the VL prompt methods."""

    section_name: ClassVar[str] = "features"
    cache_dir: str | None = setting(None, help="FeatureStore directory (default: $MLRKIT_CACHE or ~/.cache/mlrkit)")
    cache_views: int = setting(1, min=1, help="cached augmented dense views per image (view 0: no augmentation)")
    view_seed: int = 0
    resize: str = setting("squash", choices=("squash", "crop"))
    interpolation: str = setting("model", choices=("model", "bilinear", "bicubic", "nearest"))
    augment: str = setting("crop", choices=("crop", "reference"))
    online: bool = setting(False, help="augment every step instead of caching views")
    aug_scale: list[float] = setting(default_factory=lambda: [0.9, 1.0], help="[low, high] crop scale")
    hflip: bool = True
    dtype: str = setting("float32", choices=("float32", "float16"))
    batch_size: int = setting(64, min=1)
    max_memory_gb: float = setting(4.0, min=0.0, min_open=True)

    def check(self, where: str) -> None:
        a = self.aug_scale
        if len(a) != 2 or not 0 < a[0] <= a[1] <= 1:
            raise ConfigError(f"{where}.aug_scale must be [low, high] with 0 < low <= high <= 1, got {a!r}")
