"""Multi-label metrics: per-class AP, mAP, CF1/OF1, P@k/R@k and a streaming accumulator.

Every metric takes an optional ``mask`` (bool [N, C]): True where the ground truth is known.
Entries outside it are never scored - not as negatives, not as positives - so the metrics of a
partially annotated test set are those of its known entries (each function's docstring says
how). Besides the papers' metrics: macro/micro/weighted AP, macro/micro AUROC, expected
calibration error, Hamming loss and Jaccard index, each checked against scikit-learn on the
known entries (tests/test_metrics_partial.py), and :class:`MultiLabelMeter`, their stateful
``update``/``compute`` form.

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


def precision_recall_at_k(scores, targets, k: int = 3, mask=None) -> dict[str, float]:
    """P@k (mean over images of hits in the top k / k) and R@k (hits / positives, images with a positive).

    With ``mask``, each image ranks only its known entries: P@k = hits / min(k, n_known) over the
    images with a known entry, R@k = hits / known positives over the images with one.
    """
    s, t, m = _as_inputs(scores, targets, mask)
    if not 1 <= k <= s.shape[1]:
        raise MlrkitError(f"k must be in [1, {s.shape[1]}], got {k}")
    if m is not None:
        s = np.where(m, s, -np.inf)
        t = t & m
        denom = np.minimum(k, m.sum(axis=1))
    else:
        denom = np.full(len(s), k)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    hits = np.take_along_axis(t, top, axis=1).sum(axis=1)
    n_true = t.sum(axis=1)
    has = n_true > 0
    rows = denom > 0
    return {
        f"P@{k}": float((hits[rows] / denom[rows]).mean()) if rows.any() else 0.0,
        f"R@{k}": float((hits[has] / n_true[has]).mean()) if has.any() else 0.0,
    }


# --------------------------------------------------------------------------- partial-label metrics


def _known_flat(s: np.ndarray, t: np.ndarray, m: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if m is None:
        return s.ravel(), t.ravel()
    return s[m], t[m]


def average_precision_averaged(scores, targets, mask=None, average: str = "macro") -> float:
    r"""AP averaged as scikit-learn's ``average_precision_score(average=...)``, over known entries.

    ``macro``: mean of per-class AP over classes with a known positive (= :func:`mean_average_precision`);
    ``weighted``: per-class AP weighted by the class's known positives;
    ``micro``: AP of all known entries pooled into one ranking.
    """
    s, t, m = _as_inputs(scores, targets, mask)
    if average == "micro":
        fs, ft = _known_flat(s, t, m)
        if not ft.any():
            raise MlrkitError("micro AP is undefined: no known positive")
        return float(average_precision(fs, ft)[0])
    ap = average_precision(s, t, m)
    valid = ~np.isnan(ap)
    if not valid.any():
        raise MlrkitError("AP is undefined: no class has a known positive")
    if average == "macro":
        return float(ap[valid].mean())
    if average == "weighted":
        support = (t if m is None else t & m).sum(axis=0).astype(np.float64)
        return float((ap[valid] * support[valid]).sum() / support[valid].sum())
    raise MlrkitError(f"average must be 'macro', 'micro' or 'weighted', got {average!r}")


def _auroc_1d(s: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of one score vector (ties count 1/2): the Mann-Whitney U statistic."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks of tied runs (1-based)
    is_start = np.ones(len(ss), dtype=bool)
    is_start[1:] = ss[1:] != ss[:-1]
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], len(ss))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(scores, targets, mask=None, average: str = "macro") -> float:
    r"""Area under the ROC curve over known entries.

    ``macro``: mean over classes that have both a known positive and a known negative of
    :math:`\mathrm{AUC}_c = P(s^+ > s^-) + \tfrac12 P(s^+ = s^-)`; ``micro``: the AUC of all known
    entries pooled. Agrees with ``sklearn.metrics.roc_auc_score``.
    """
    s, t, m = _as_inputs(scores, targets, mask)
    if average == "micro":
        fs, ft = _known_flat(s, t, m)
        out = _auroc_1d(fs, ft)
    elif average == "macro":
        per = per_class_auroc(s, t, m)
        valid = ~np.isnan(per)
        out = float(per[valid].mean()) if valid.any() else float("nan")
    else:
        raise MlrkitError(f"average must be 'macro' or 'micro', got {average!r}")
    if np.isnan(out):
        raise MlrkitError("AUROC is undefined: no class has both a known positive and a known negative")
    return out


def per_class_auroc(scores, targets, mask=None) -> np.ndarray:
    """AUROC per class over its known entries [C]; NaN where a class lacks a known positive or negative."""
    s, t, m = _as_inputs(scores, targets, mask)
    out = np.full(s.shape[1], np.nan)
    for j in range(s.shape[1]):
        keep = slice(None) if m is None else m[:, j]
        out[j] = _auroc_1d(s[keep, j], t[keep, j])
    return out


def expected_calibration_error(probs, targets, mask=None, n_bins: int = 15) -> float:
    r"""Expected calibration error of the probabilities of all known entries, pooled.

    Equal-width bins :math:`B_b` of [0, 1] (as ``sklearn.calibration.calibration_curve``,
    strategy ``uniform``): :math:`\mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,|\bar y_b - \bar p_b|`, with
    :math:`\bar y_b` the fraction of positives and :math:`\bar p_b` the mean probability in bin b.
    """
    p, t, m = _as_inputs(probs, targets, mask)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise MlrkitError("expected_calibration_error needs probabilities in [0, 1], not logits")
    if n_bins < 1:
        raise MlrkitError(f"n_bins must be >= 1, got {n_bins}")
    fp, ft = _known_flat(p.astype(np.float64), t, m)
    if fp.size == 0:
        raise MlrkitError("ECE is undefined: no known entry")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], fp)  # sklearn's binning: an inner edge belongs to the lower bin
    count = np.bincount(ids, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(ids, weights=fp, minlength=n_bins)
    sum_y = np.bincount(ids, weights=ft.astype(np.float64), minlength=n_bins)
    nz = count > 0
    return float((np.abs(sum_y[nz] - sum_p[nz])).sum() / fp.size)


def hamming_loss(probs, targets, threshold: float = 0.5, mask=None) -> float:
    """Fraction of known entries where ``probs >= threshold`` disagrees with the ground truth."""
    p, t, m = _as_inputs(probs, targets, mask)
    pred = p >= threshold
    wrong, known = (pred != t), (np.ones_like(t) if m is None else m)
    n = int(known.sum())
    if n == 0:
        raise MlrkitError("Hamming loss is undefined: no known entry")
    return float((wrong & known).sum() / n)


def jaccard_index(probs, targets, threshold: float = 0.5, mask=None) -> float:
    r"""Mean over images of :math:`|\hat Y_i \cap Y_i| / |\hat Y_i \cup Y_i|` on each image's known
    entries (scikit-learn's ``jaccard_score(average='samples', zero_division=1)``: an image with an
    empty union scores 1); images without a known entry are left out."""
    p, t, m = _as_inputs(probs, targets, mask)
    pred = p >= threshold
    if m is not None:
        pred, t = pred & m, t & m
        rows = m.any(axis=1)
    else:
        rows = np.ones(len(p), dtype=bool)
    if not rows.any():
        raise MlrkitError("Jaccard index is undefined: no known entry")
    inter = (pred & t).sum(axis=1)[rows]
    union = (pred | t).sum(axis=1)[rows]
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())


def per_class_curves(scores, targets, mask=None, kind: str = "pr") -> list[dict[str, np.ndarray] | None]:
    """Per class, the precision-recall (``kind="pr"``: ``precision``, ``recall``, ``thresholds``) or
    ROC curve (``"roc"``: ``fpr``, ``tpr``, ``thresholds``) over that class's known entries, as
    ``sklearn.metrics.precision_recall_curve`` / ``roc_curve(drop_intermediate=False)`` compute
    them; None for a class without a known positive (PR) or without a known positive and negative (ROC)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    s, t, m = _as_inputs(scores, targets, mask)
    out: list[dict[str, np.ndarray] | None] = []
    for j in range(s.shape[1]):
        keep = np.ones(len(s), bool) if m is None else m[:, j]
        y, sc = t[keep, j], s[keep, j]
        if kind == "pr":
            if not y.any():
                out.append(None)
                continue
            prec, rec, thr = precision_recall_curve(y, sc)
            out.append({"precision": prec, "recall": rec, "thresholds": thr})
        elif kind == "roc":
            if y.all() or not y.any():
                out.append(None)
                continue
            fpr, tpr, thr = roc_curve(y, sc, drop_intermediate=False)
            out.append({"fpr": fpr, "tpr": tpr, "thresholds": thr})
        else:
            raise MlrkitError(f"curve kind must be 'pr' or 'roc', got {kind!r}")
    return out


def reliability_curve(probs, targets, mask=None, n_bins: int = 15) -> dict[str, np.ndarray]:
    """The reliability diagram behind :func:`expected_calibration_error`: per non-empty bin the fraction
    of positives (``prob_true``), the mean probability (``prob_pred``) and the entry count, pooled over
    known entries (``sklearn.calibration.calibration_curve(strategy="uniform")`` plus counts)."""
    p, t, m = _as_inputs(probs, targets, mask)
    fp, ft = _known_flat(p.astype(np.float64), t, m)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], fp)
    count = np.bincount(ids, minlength=n_bins)
    nz = count > 0
    sum_p = np.bincount(ids, weights=fp, minlength=n_bins)[nz]
    sum_y = np.bincount(ids, weights=ft.astype(np.float64), minlength=n_bins)[nz]
    return {"prob_true": sum_y / count[nz], "prob_pred": sum_p / count[nz], "count": count[nz]}


def class_counts(targets, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Known positives and known negatives per class ([C] each) - what a class's test metrics rest on."""
    t = np.asarray(_to_numpy(targets)).astype(bool)
    m = np.ones_like(t) if mask is None else np.asarray(_to_numpy(mask), dtype=bool)
    return (t & m).sum(axis=0), (~t & m).sum(axis=0)


def summary(scores, targets, mask=None, threshold: float = 0.5, k: int = 3) -> dict:
    """All metrics at once, over the known entries; ``scores`` are logits or probabilities
    (thresholded and calibration metrics use probabilities: logits go through a sigmoid)."""
    s = np.asarray(_to_numpy(scores), dtype=np.float64)
    probs = s if (s.min() >= 0 and s.max() <= 1) else 1.0 / (1.0 + np.exp(-s))
    rep = map_report(s, targets, mask)
    out = {"map": rep.map, "n_classes_scored": rep.n_classes_scored, "n_classes_skipped": rep.n_classes_skipped}
    out.update(f1_scores(probs, targets, threshold, mask))
    if s.shape[1] >= k:
        out.update(precision_recall_at_k(s, targets, k, mask))
    out["micro_ap"] = average_precision_averaged(s, targets, mask, "micro")
    out["weighted_ap"] = average_precision_averaged(s, targets, mask, "weighted")
    for avg in ("macro", "micro"):
        try:
            out[f"{avg}_auroc"] = auroc(s, targets, mask, avg)
        except MlrkitError:
            out[f"{avg}_auroc"] = None  # no class with both a known positive and a known negative
    out["ece"] = expected_calibration_error(probs, targets, mask)
    out["hamming_loss"] = hamming_loss(probs, targets, threshold, mask)
    out["jaccard"] = jaccard_index(probs, targets, threshold, mask)
    return out


def per_class_report(scores, targets, mask=None, class_names: list[str] | None = None) -> dict:
    """Per class: AP, AUROC and the known positives/negatives it was scored on; and the classes
    that could not be scored (no known positive), by name."""
    s, t, m = _as_inputs(scores, targets, mask)
    names = list(class_names) if class_names else [str(j) for j in range(s.shape[1])]
    ap = average_precision(s, t, m)
    auc = per_class_auroc(s, t, m)
    npos, nneg = class_counts(t, m)
    per = {
        n: {"ap": None if np.isnan(a) else float(a), "auroc": None if np.isnan(u) else float(u),
            "known_positives": int(p), "known_negatives": int(q)}
        for n, a, u, p, q in zip(names, ap, auc, npos, nneg)
    }
    return {"per_class": per, "unscored_classes": [n for n, a in zip(names, ap) if np.isnan(a)]}


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

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """This process's rows (index, scores, targets, mask): what another rank gathers."""
        return self.rows() if self._scores else (np.zeros(0, np.int64), *(np.zeros((0, 0)),) * 3)

    def merge(self, states) -> None:
        """Add other ranks' :meth:`state` tuples (rows with an index already held are kept once)."""
        for idx, s, t, m in states:
            if len(idx):
                self.update(s, t, m, index=idx)

    def sync(self) -> None:
        """Gather every rank's rows (torch.distributed all_gather_object) so each rank can compute;
        a no-op outside a distributed run."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.state())
        self.reset()
        self.merge(parts)


class MultiLabelMeter(MAPMeter):
    """Stateful form of :func:`summary` and :func:`per_class_report` (torchmetrics-style).

    ``update(scores, targets, mask=None, index=None)`` per batch (or once with a whole split),
    :meth:`sync` under torchrun, then :meth:`compute` returns the summary metrics plus
    ``per_class`` and ``unscored_classes``. Rows are keyed by dataset index, so a row scored by two
    ranks counts once.
    """

    def __init__(self, class_names: list[str] | None = None, threshold: float = 0.5, k: int = 3) -> None:
        super().__init__()
        self.class_names = class_names
        self.threshold = threshold
        self.k = k

    def compute(self) -> dict:  # type: ignore[override]
        _, s, t, m = self.rows()
        mask = None if m.all() else m
        out = summary(s, t, mask, self.threshold, min(self.k, s.shape[1]))
        out.update(per_class_report(s, t, mask, self.class_names))
        return out
