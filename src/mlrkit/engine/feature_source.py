"""How a features file's rows were made from images, and making them again from new images.

``mlrkit extract-features --out FILE.npz`` stores, besides the arrays, ``feature_source``: a JSON
object (a 0-d string array, so the file still loads without pickles) that says how every row was
computed. A run on ``features:FILE`` carries it in its checkpoint (``task.extras["feature_source"]``),
so ``mlrkit predict RUN photo.jpg``, :meth:`mlrkit.load_run(RUN).predict <mlrkit.engine.inference.LoadedRun.predict>`
and ``mlrkit export`` can compute the features of new images exactly as the training rows were
computed, then apply the probe (whose standardisation with training statistics lives in the model).

Fields (``format`` 1)::

    kind          "vl" (a VL model's image tower) | "backbone" (an image backbone)
    vl_model      the mlrkit.vl.load spec (kind vl; a local weights file made absolute)
    model         {"name": ..., "weights": ..., "pretrained": ..., other backbone kwargs} (kind backbone)
    seed          seed of random-weight encoders
    image_size    the requested input size (null: the VL model's own)
    input_size    [H, W] of the image the encoder sees (its transform's last resize or crop)
    transform     the evaluation transform's text (resize, crop, ToTensor, Normalize)
    mean, std     the normalisation it applies
    embedding     which embedding: the VL model's pooled, projected image embedding (``encode_image``)
                  or the backbone's globally pooled last feature map
    l2_normalize  whether each row was divided by its L2 norm after encoding
    encoder_key   the encoder's identity (spec or name, kwargs, SHA-256 of a weights file, seed)
    dim           D, the number of features per row

When features are made again, the encoder's identity and transform must equal the recorded ones
(a changed weights file or library version is an error, never a silent difference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.data.datasets.features import FORMAT, IDENTITY, check_source  # noqa: F401 - check_source: part of this API
from mlrkit.data.transforms import transform_identity
from mlrkit.errors import DataError

EMBEDDING = {
    "vl": "encode_image: the VL model's pooled, projected image embedding (not normalised by the model)",
    "backbone": "the backbone's globally pooled last feature map (its num_classes=0 output)",
}


def vl_source(spec: str, *, seed: int = 0, image_size: int | None = None, l2_normalize: bool = False) -> dict[str, Any]:
    """The recipe of VL image features (identity fields are filled by :func:`extract`)."""
    from mlrkit.config import absolute_paths

    spec = absolute_paths({"vl": {"model": str(spec)}})["vl"]["model"]  # a relative weights file made absolute
    return {"format": FORMAT, "kind": "vl", "vl_model": spec, "seed": int(seed), "image_size": image_size,
            "embedding": EMBEDDING["vl"], "l2_normalize": bool(l2_normalize)}


def backbone_source(cfg, *, l2_normalize: bool = False) -> dict[str, Any]:
    """The recipe of frozen-backbone features of ``cfg.model`` at ``cfg.data.image_size``."""
    return {"format": FORMAT, "kind": "backbone", "model": {"name": cfg.model.name or "resnet50", **cfg.model.params},
            "seed": int(cfg.seed), "image_size": int(cfg.data.image_size), "embedding": EMBEDDING["backbone"],
            "l2_normalize": bool(l2_normalize)}


def source_of_frozen_run(cfg, encoder_kind: str) -> dict[str, Any]:
    """The source of a run that encodes images itself: ``zeroshot`` (the run's VL model), ``linear``/``mlp``
    with ``model.name: vl:<spec>`` or a backbone (features never L2-normalised)."""
    name = cfg.model.name or ""
    if encoder_kind == "vl":
        return vl_source(cfg.vl.model, seed=cfg.seed)
    if name.startswith("vl:"):
        return vl_source(name[3:], seed=cfg.seed)
    return backbone_source(cfg)


def describe_source(source: Mapping[str, Any]) -> str:
    """One line for messages: encoder, size, normalisation."""
    enc = source.get("vl_model") if source["kind"] == "vl" else source["model"].get("name")
    size = source.get("image_size") or "its own input size"
    return f"{source['kind']} {enc} at {size}{', L2-normalised' if source.get('l2_normalize') else ''}"


def extract(source: Mapping[str, Any], splits: dict, *, device: torch.device | str = "cpu", progress: bool = True,
            batch_size: int = 64, cache_dir: str | None = None, check: bool = True) -> dict[str, Any]:
    """Set ``split.features`` of every split (name -> Split with images) as ``source`` says; returns the
    identity fields (``encoder_key``, ``transform``, ``mean``, ``std``). ``check``: they must equal the
    recorded ones (else a DataError: the weights file or the preprocessing changed since)."""
    from mlrkit.errors import MlrkitError

    for name, split in splits.items():
        if split.images is None:
            raise MlrkitError(f"the {name} split has no images to encode")
    if source["kind"] == "vl":
        from mlrkit.features import FeatureStore
        from mlrkit.vl.features import vl_image_features

        seed = int(source["seed"])
        model, _, info = _vl_encoder(source, device=device)
        _check_identity(source, info, check)
        store = FeatureStore(cache_dir)
        for name, split in splits.items():
            split.features = np.array(vl_image_features(
                model, split.images, image_size=source["image_size"], store=store, batch_size=batch_size, seed=seed,
                device=device, progress=progress, desc=f"{source['vl_model']} features ({name})"), dtype=np.float32)
    else:
        from mlrkit.methods.image import frozen_features

        cfg = _backbone_config(source, batch_size, cache_dir)
        info = frozen_features(cfg, splits, device=device, progress=progress, check=lambda i: _check_identity(
            source, i, check))
    if source["l2_normalize"]:
        for split in splits.values():
            split.features = l2_normalize(split.features)
    return info


def _vl_encoder(source: Mapping[str, Any], device: torch.device | str):
    """``(model, transform, identity)`` of a ``vl`` source: the frozen VL model (cached per process), its
    evaluation transform at the recorded size, and its identity."""
    from mlrkit.vl import load_frozen
    from mlrkit.vl.features import vl_encoder_key

    seed = int(source["seed"])
    model = load_frozen(source["vl_model"], seed=seed, device=device)
    tf = model.transform(train=False, image_size=source["image_size"])
    return model, tf, {"encoder_key": vl_encoder_key(model, seed=seed), **transform_identity(tf)}


def _check_identity(source: Mapping[str, Any], info: Mapping[str, Any], check: bool) -> None:
    if not check:
        return
    for k in IDENTITY:
        if source.get(k) != info.get(k):
            raise DataError(
                f"the features were made by {describe_source(source)} with {k} {source.get(k)!r}, but that encoder "
                f"now gives {info.get(k)!r} (a changed weights file, or another open_clip/timm/torchvision "
                "version): features of new images would not match the training rows; restore the encoder, or "
                "re-make the features file with `mlrkit extract-features` and train again")


def _backbone_config(source: Mapping[str, Any], batch_size: int = 64, cache_dir: str | None = None):
    from mlrkit.config import build_config

    flags = {"seed": int(source["seed"]), "model": dict(source["model"]),
             "data": {"image_size": int(source["image_size"])}, "train": {"batch_size": int(batch_size)},
             "features": {"cache_dir": cache_dir}}
    return build_config(flags=flags)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (float32; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, np.float32(1e-12))


class _L2Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class _VLImageEncoder(nn.Module):
    def __init__(self, vl) -> None:
        super().__init__()
        self.vl = vl

    def forward(self, x: Tensor) -> Tensor:
        return self.vl.encode_image(x).float()


def encoder_module(source: Mapping[str, Any], device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """``(module, transform)``: the encoder of ``source`` as one module (preprocessed batch [B, 3, S, S] ->
    features [B, D], L2-normalised when recorded) and the evaluation transform that makes its input;
    for ``mlrkit export``. Its identity is checked against the recorded one."""
    if source["kind"] == "vl":
        v, tf, info = _vl_encoder(source, device="cpu")
        enc: nn.Module = _VLImageEncoder(v)
    else:
        from mlrkit.methods.image import frozen_backbone

        enc, tf, info = frozen_backbone(_backbone_config(source))
    if "encoder_key" in source:
        _check_identity(source, info, True)
    if source.get("l2_normalize"):
        enc = nn.Sequential(enc, _L2Normalize())
    return enc.to(device), tf
