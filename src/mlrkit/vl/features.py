"""Frozen vision-language image features through the FeatureStore (computed once per image).

The cache key holds the VL spec, a hash of its weights file (or the seed of random weights), the
transform and the images' identities, so a changed checkpoint or resolution never reuses stale
features.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from mlrkit.data.base import ImageSource
from mlrkit.features import FeatureStore
from mlrkit.vl.model import VisionLanguageModel


def vl_encoder_key(model: VisionLanguageModel, *, dense: bool = False, seed: int = 0) -> str:
    """Identity of a frozen VL image encoder for cache keys."""
    spec = model.spec
    _, at, source = spec.partition("@")
    from mlrkit.vl.backends import BUILTIN_VL_WEIGHTS, builtin_dir

    if spec in BUILTIN_VL_WEIGHTS:
        source, at = str(builtin_dir() / BUILTIN_VL_WEIGHTS[spec]), "@"
    ident = f"seed:{seed}"
    if at and Path(source).expanduser().is_file():
        h = hashlib.sha256(Path(source).expanduser().read_bytes()).hexdigest()[:16]
        ident = f"weights:{h}"
    elif at:
        ident = f"tag:{source}"
    return f"vl:{spec}|{ident}|{'dense' if dense else 'pooled'}"


def vl_image_features(
    model: VisionLanguageModel,
    images: ImageSource,
    *,
    image_size: int | None = None,
    dense: bool = False,
    store: FeatureStore | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "CLIP features",
    seed: int = 0,
) -> np.ndarray:
    """Image embeddings [N, D] (or dense [N, HW, D]) of a frozen VL model, cached; not normalised."""
    store = store or FeatureStore()
    tf = model.transform(train=False, image_size=image_size)
    model = model.to(device).eval()
    encode = model.encode_dense if dense else model.encode_image
    key = vl_encoder_key(model, dense=dense, seed=seed)
    return store.get(key, encode, images, tf, batch_size=batch_size, device=device, progress=progress, desc=desc)


def attach_vl_features(model: VisionLanguageModel, splits: dict, *, cache_dir: str | None = None,
                       device: torch.device | str = "cpu", progress: bool = True, seed: int = 0,
                       batch_size: int = 64) -> None:
    """Set ``split.features`` of every split (name -> Split with images) to the model's pooled embeddings (cached)."""
    from mlrkit.errors import MlrkitError

    store = FeatureStore(cache_dir)
    for name, split in splits.items():
        if split.images is None:
            raise MlrkitError(f"method needs images, the {name} split has none")
        feats = vl_image_features(model, split.images, store=store, device=device, progress=progress,
                                  desc=f"{model.spec} features ({name})", seed=seed, batch_size=batch_size)
        split.features = np.array(feats, dtype=np.float32)
