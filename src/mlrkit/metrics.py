"""Multi-label metrics: per-class AP, mAP, CF1/OF1, P@k/R@k, ECE and a streaming accumulator.

``average_precision`` matches ``sklearn.metrics.average_precision_score`` per class (to 1e-6,
ties included): AP = sum over distinct score thresholds t of (R_t - R_{t-1}) * P_t, i.e. tied
scores enter the precision-recall curve together. It is vectorised over classes: one argsort
of the whole [N, C] matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlrkit.errors import MlrkitError


def _as_inputs(scores, targets, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    s = np.asarray(_to_numpy(scores))
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)  # float32 is kept as is: the same ties, a faster sort
    t = np.asarray(_to_numpy(targets))
    if s.ndim == 1:
        s, t = s[:, None], t[:, None]
        mask = None if mask is None else np.asarray(_to_numpy(mask))[:, None]
    if s.shape != t.shape or s.ndim != 2:
        raise MlrkitError(f"scores {s.shape} and targets {t.shape} must both be [N, C]")
    if not np.isfinite(s).all():
        raise MlrkitError("scores contain NaN or inf")
    if t.size and not np.isin(t, (0, 1)).all():
        raise MlrkitError("targets must be 0/1")
    m = None
    if mask is not None:
        m = np.asarray(_to_numpy(mask), dtype=bool)
        if m.shape != s.shape:
            raise MlrkitError(f"mask {m.shape} != scores {s.shape}")
    return s, t.astype(bool), m


def _to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()  # float16 / bfloat16 have no numpy equivalent; float32/64 keep their precision
        return x.cpu().numpy()
    return x


def average_precision(scores, targets, mask=None) -> np.ndarray:
    """Per-class average precision [C]; NaN for a class with no positive (among ``mask`` entries).

    ``mask`` (bool [N, C], optional) excludes entries whose ground truth is unknown
    (e.g. OpenImages' unverified labels) from the ranking of that class.
    """
    s, t, m = _as_inputs(scores, targets, mask)
    n, c = s.shape
    if m is not None:
        # Excluded entries go to the bottom with label 0: they precede no valid entry, add nothing.
        s = np.where(m, s, -np.inf)
        t = t & m
    ap = np.full(c, np.nan)
    if n == 0:
        return ap
    # Work class-major ([C, N], contiguous rows): sorting along the last axis is much faster.
    sc = np.ascontiguousarray(s.T)
    yc = np.ascontiguousarray(t.T)
    n_pos = yc.sum(axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")
    s_sorted = np.take_along_axis(sc, order, axis=1)
    y_sorted = np.take_along_axis(yc, order, axis=1)
    tp = np.cumsum(y_sorted, axis=1, dtype=np.float64)
    # The last position of each run of tied scores is where the PR curve has a point; every
    # entry of a run gets the precision at the run's end.
    is_end = np.ones_like(s_sorted, dtype=bool)
    is_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    end_idx = np.where(is_end, np.arange(n), n - 1)
    end_of = np.minimum.accumulate(end_idx[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(tp, end_of, axis=1) / (end_of + 1)
    contrib = np.where(y_sorted, precision_at_end, 0.0).sum(axis=1)
    has = n_pos > 0
    ap[has] = contrib[has] / n_pos[has]
    return ap


def mean_average_precision(scores, targets, mask=None) -> float:
    """mAP in [0, 1]: mean of :func:`average_precision` over the classes that have a positive."""
    ap = average_precision(scores, targets, mask)
    valid = ~np.isnan(ap)
    if not valid.any():
        raise MlrkitError("mAP is undefined: no class has a positive example")
    return float(ap[valid].mean())


@dataclass
class MAPReport:
    map: float
    per_class_ap: list[float | None]
    n_classes_scored: int
    n_classes_skipped: int

    def as_dict(self) -> dict:
        return {
            "map": self.map,
            "per_class_ap": self.per_class_ap,
            "n_classes_scored": self.n_classes_scored,
            "n_classes_skipped": self.n_classes_skipped,
        }


def map_report(scores, targets, mask=None) -> MAPReport:
    """mAP with per-class AP (None where undefined) and how many classes were skipped."""
    ap = average_precision(scores, targets, mask)
    valid = ~np.isnan(ap)
    if not valid.any():
        raise MlrkitError("mAP is undefined: no class has a positive example")
    return MAPReport(
        map=float(ap[valid].mean()),
        per_class_ap=[None if np.isnan(a) else float(a) for a in ap],
        n_classes_scored=int(valid.sum()),
        n_classes_skipped=int((~valid).sum()),
    )


def f1_scores(probs, targets, threshold: float = 0.5, mask=None) -> dict[str, float]:
    """Per-class (C*) and overall (O*) precision, recall and F1 of ``probs >= threshold``.

    As in ML-GCN and its successors: CP = mean_c TP_c / (TP_c + FP_c) (0 for a class with no
    predicted positive), CR = mean_c TP_c / (TP_c + FN_c) over classes with a positive,
    CF1 = 2 CP CR / (CP + CR); OP, OR, OF1 pool all entries. ``mask`` excludes unknown entries.
    """
    p, t, m = _as_inputs(probs, targets, mask)
    pred = p >= threshold
    if m is not None:
        pred &= m
        t = t & m
    tp = (pred & t).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0)
    n_true = t.sum(axis=0)
    cp = float(np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)))
    has = n_true > 0
    cr = float(np.mean(tp[has] / n_true[has])) if has.any() else 0.0
    op = float(tp.sum() / n_pred.sum()) if n_pred.sum() else 0.0
    orr = float(tp.sum() / n_true.sum()) if n_true.sum() else 0.0

    def f1(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr, "OF1": f1(op, orr)}


def precision_recall_at_k(scores, targets, k: int = 3) -> dict[str, float]:
    """P@k (mean over images of hits in the top k / k) and R@k (hits / positives, images with a positive)."""
    s, t, _ = _as_inputs(scores, targets)
    if not 1 <= k <= s.shape[1]:
        raise MlrkitError(f"k must be in [1, {s.shape[1]}], got {k}")
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    hits = np.take_along_axis(t, top, axis=1).sum(axis=1)
    n_true = t.sum(axis=1)
    has = n_true > 0
    return {
        f"P@{k}": float((hits / k).mean()),
        f"R@{k}": float((hits[has] / n_true[has]).mean()) if has.any() else 0.0,
    }


def summary(scores, targets, mask=None, threshold: float = 0.5, k: int = 3) -> dict:
    """All metrics at once; ``scores`` are logits or probabilities (F1 thresholds probabilities)."""
    s = np.asarray(_to_numpy(scores), dtype=np.float64)
    probs = s if (s.min() >= 0 and s.max() <= 1) else 1.0 / (1.0 + np.exp(-s))
    rep = map_report(s, targets, mask)
    out = {"map": rep.map, "n_classes_scored": rep.n_classes_scored, "n_classes_skipped": rep.n_classes_skipped}
    out.update(f1_scores(probs, targets, threshold, mask))
    if s.shape[1] >= k:
        out.update(precision_recall_at_k(s, targets, k))
    return out



def expected_calibration_error(scores, targets, mask=None, n_bins: int = 15) -> float:
    r"""ECE of probabilities over the known (image, class) entries, each entry a binary prediction.

    .. math:: \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{N} \,\Big| \frac{1}{|S_b|}\sum_{(i,c)\in S_b} y_{ic}
              - \frac{1}{|S_b|}\sum_{(i,c)\in S_b} p_{ic} \Big|

    with :math:`B` equal-width bins of :math:`[0, 1]` (Naeini et al. 2015; Guo et al. 2017), :math:`N` the
    number of known entries. ``scores`` must be probabilities in [0, 1] (apply the sigmoid first).
    """
    p, t, m = _as_inputs(scores, targets, mask)
    if n_bins < 1:
        raise MlrkitError(f"n_bins must be >= 1, got {n_bins}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise MlrkitError("expected_calibration_error takes probabilities in [0, 1] (apply the sigmoid to logits)")
    p = p.astype(np.float64).ravel()
    t = t.ravel().astype(np.float64)
    if m is not None:
        keep = m.ravel()
        p, t = p[keep], t[keep]
    if p.size == 0:
        return float("nan")
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    conf = np.bincount(b, weights=p, minlength=n_bins)
    acc = np.bincount(b, weights=t, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / p.size)

class MAPMeter:
    """Streaming accumulator: ``update(scores, targets[, mask])`` per batch, ``compute()`` at the end.

    Rows are kept in arrival order; :meth:`state` / :meth:`load_rows` let a distributed run
    gather every rank's rows (keyed by dataset index) before computing.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._index: list[np.ndarray] = []

    def update(self, scores, targets, mask=None, index=None) -> None:
        s = np.asarray(_to_numpy(scores), dtype=np.float32)
        t = np.asarray(_to_numpy(targets)).astype(np.uint8)
        if s.shape != t.shape:
            raise MlrkitError(f"scores {s.shape} != targets {t.shape}")
        self._scores.append(s)
        self._targets.append(t)
        self._masks.append(np.ones_like(t, bool) if mask is None else np.asarray(_to_numpy(mask), bool))
        start = sum(len(x) for x in self._index)
        self._index.append(
            np.arange(start, start + len(s)) if index is None else np.asarray(_to_numpy(index)).astype(np.int64)
        )

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(index, scores, targets, mask) concatenated, sorted by index, duplicates removed."""
        if not self._scores:
            raise MlrkitError("MAPMeter.compute() called before any update()")
        idx = np.concatenate(self._index)
        s = np.concatenate(self._scores)
        t = np.concatenate(self._targets)
        m = np.concatenate(self._masks)
        idx, first = np.unique(idx, return_index=True)
        return idx, s[first], t[first], m[first]

    def compute(self) -> MAPReport:
        _, s, t, m = self.rows()
        return map_report(s, t, None if m.all() else m)
