"""Images -> model inputs for the negation tools (the VL model's own preprocessing, never un-normalised)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mlrkit.data.base import ArrayImageSource, ImageSource


def _native_size(model: Any) -> tuple[int, int]:
    size = model.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def image_batch(model: Any, source: ImageSource, indices: Sequence[int]) -> torch.Tensor:
    """Preprocessed images [B, 3, H, W] for ``indices`` of ``source``.

    In-memory arrays already at the model's resolution are normalised on tensors
    (:func:`mlrkit.vl.pretraining.images_to_tensor`: ToTensor + Normalize with the model's mean/std,
    what ``preprocess_val`` does to them); anything else goes through ``model.preprocess_val``.
    """
    idx = [int(i) for i in indices]
    if isinstance(source, ArrayImageSource) and source.array.shape[1:3] == _native_size(model):
        from mlrkit.vl.pretraining import images_to_tensor

        cfg = model.preprocess_cfg
        return images_to_tensor(source.array[np.asarray(idx)], cfg["mean"], cfg["std"])
    return torch.stack([model.preprocess_val(source.load(i)) for i in idx])


@torch.no_grad()
def encode_images(model: Any, source: ImageSource, indices: Sequence[int], *, batch_size: int = 256,
                  normalize: bool = True) -> torch.Tensor:
    """Image embeddings [len(indices), D] (float32, CPU), in batches, without gradients."""
    out = []
    for s in range(0, len(indices), batch_size):
        x = image_batch(model, source, indices[s:s + batch_size])
        out.append(model.encode_image(x, normalize=normalize).float().cpu())
    if not out:
        return torch.zeros(0, model.embed_dim)
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model: Any, texts: Sequence[str], *, batch_size: int = 512, normalize: bool = True) -> torch.Tensor:
    """Text embeddings [len(texts), D] (float32, CPU), in batches, without gradients."""
    out = [model.encode_text(list(texts[s:s + batch_size]), normalize=normalize).float().cpu()
           for s in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)
