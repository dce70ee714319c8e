"""Vision-language pseudo-labels (VLPL, Xing et al., CVPR-W 2024), computed once per image.

For image i and class c, with unit-norm CLIP image embedding f_i and class text embedding t_c:

    s_ic = softmax_c( <f_i, t_c> / τ )                      (temperature softmax over classes)
    pseudo-positive  if s_ic > θ
    pseudo-negative  for the ⌊δ·C⌋ lowest s_ic of the image (only when δ > 0)

The result is an int8 matrix in the observed-label convention (+1 / 0 / −1) saved as an artifact
(`mlrkit pseudo-label`) with its parameters, its SHA-256 and, where ground truth exists, the
precision/recall of the pseudo-positives and pseudo-negatives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlrkit.errors import DataError, MlrkitError
from mlrkit.labels import array_sha256, check_observed


def vl_pseudo_labels(similarity: np.ndarray, tau: float, theta: float, delta: float = 0.0) -> np.ndarray:
    """Pseudo-labels from cosine similarities [N, C] (see module docstring). Returns int8 [N, C]."""
    if tau <= 0:
        raise MlrkitError(f"tau must be > 0, got {tau}")
    if not 0 <= delta < 1:
        raise MlrkitError(f"delta must be in [0, 1), got {delta}")
    s = np.asarray(similarity, dtype=np.float64) / tau
    s = np.exp(s - s.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    out = np.where(s > theta, 1, 0).astype(np.int8)
    k = int(delta * s.shape[1])
    if k > 0:
        lowest = np.argpartition(s, k - 1, axis=1)[:, :k]
        np.put_along_axis(out, lowest, -1, axis=1)
    return out


def compute_vl_pseudo_labels(model, images, class_names: list[str], *, templates: tuple[str, ...], tau: float,
                             theta: float, delta: float = 0.0, store=None, seed: int = 0, device="cpu",
                             batch_size: int = 64, progress: bool = False, desc: str = "VL features") -> np.ndarray:
    """VLPL pseudo-labels of ``images`` from a frozen VL ``model`` (the one path used by ``mlrkit
    pseudo-label`` and the ``vlpl`` method).

    Image embeddings f_i come from the FeatureStore (computed once per image), class embeddings t_c
    from the prompt ``templates``; :func:`vl_pseudo_labels` is applied to the cosine similarities
    <f_i / |f_i|, t_c>. Returns int8 [N, C] (+1 / 0 / -1).
    """
    import torch

    from mlrkit.vl.features import vl_image_features

    if images is None:
        raise MlrkitError("VL pseudo-labels need images: the split has none")
    feats = np.asarray(vl_image_features(model, images, store=store, seed=seed, device=device, progress=progress,
                                         batch_size=batch_size, desc=desc), dtype=np.float32)
    with torch.no_grad():
        text = model.class_text_embeddings(class_names, templates).cpu().numpy()
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    return vl_pseudo_labels(f @ text.T, tau, theta, delta)


def pseudo_label_quality(pseudo: np.ndarray, targets: np.ndarray, observed: np.ndarray | None = None) -> dict:
    """Precision/recall of pseudo-positives and pseudo-negatives against the ground truth.

    When ``observed`` is given, only entries unknown in it are counted (what the pseudo-labels add).
    """
    p = np.asarray(pseudo)
    t = np.asarray(targets).astype(bool)
    scope = np.ones_like(t) if observed is None else (np.asarray(observed) == 0)
    pos, neg = (p == 1) & scope, (p == -1) & scope
    n_pos_true = int((t & scope).sum())
    n_neg_true = int((~t & scope).sum())
    return {
        "pseudo_positives": int(pos.sum()),
        "pseudo_negatives": int(neg.sum()),
        "positive_precision": float((pos & t).sum() / pos.sum()) if pos.sum() else None,
        "positive_recall": float((pos & t).sum() / n_pos_true) if n_pos_true else None,
        "negative_precision": float((neg & ~t).sum() / neg.sum()) if neg.sum() else None,
        "negative_recall": float((neg & ~t).sum() / n_neg_true) if n_neg_true else None,
        "pseudo_positives_per_image": float(pos.sum() / max(1, len(p))),
        "scope": "entries unknown in the observed labels" if observed is not None else "all entries",
    }


@dataclass
class PseudoLabels:
    """A pseudo-label matrix with the parameters that made it (one ``.npz``)."""

    labels: np.ndarray
    vl_model: str
    tau: float
    theta: float
    delta: float
    templates: str
    dataset: str
    split: str
    ids_sha256: str
    quality: dict = field(default_factory=dict)
    sha256: str = ""

    def __post_init__(self) -> None:
        self.labels = check_observed(self.labels, "pseudo-labels")
        actual = array_sha256(self.labels)
        if self.sha256 and self.sha256 != actual:
            raise DataError("pseudo-labels are corrupt: stored sha256 differs from the array's")
        self.sha256 = actual

    def save(self, path: str | Path) -> Path:
        from mlrkit.utils import save_array_with_meta

        meta = asdict(self)
        meta.pop("labels")
        return save_array_with_meta(path, "labels", self.labels, meta)

    @classmethod
    def load(cls, path: str | Path) -> PseudoLabels:
        from mlrkit.utils import load_array_with_meta

        labels, meta = load_array_with_meta(path, "labels", "pseudo-label")
        try:
            return cls(labels=labels, **meta)
        except TypeError as e:
            raise DataError(f"{path}: not an mlrkit pseudo-label file ({e})") from None


def ids_sha256(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()
