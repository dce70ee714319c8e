"""Per-class PR and ROC curves and the reliability diagram of a run's test scores, on known entries.

``mlrkit evaluate RUN --plots DIR`` writes ``DIR/test_pr.png``, ``DIR/test_roc.png`` and
``DIR/test_reliability.png`` (plus the curves' points as ``DIR/test_curves.json``), from
:func:`mlrkit.metrics.per_class_curves` and :func:`mlrkit.metrics.reliability_curve`: unknown
entries never enter a curve.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mlrkit.metrics import average_precision, per_class_auroc, per_class_curves, reliability_curve
from mlrkit.utils import write_json

MAX_PANELS = 20  # classes drawn per figure (the rarest-AP ones first would be arbitrary: the first 20)


def write_curve_plots(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None, class_names: list[str],
                      out_dir: str | Path, prefix: str = "test") -> list[Path]:
    """Draw PR and ROC curves per class (up to :data:`MAX_PANELS` classes) and the reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pr = per_class_curves(probs, targets, mask, "pr")
    roc = per_class_curves(probs, targets, mask, "roc")
    ap = average_precision(probs, targets, mask)
    auc = per_class_auroc(probs, targets, mask)
    rel = reliability_curve(probs, targets, mask)
    written = []
    for kind, curves, xy, score, label in (("pr", pr, ("recall", "precision"), ap, "AP"),
                                           ("roc", roc, ("fpr", "tpr"), auc, "AUROC")):
        shown = [j for j in range(len(class_names)) if curves[j] is not None][:MAX_PANELS]
        cols = min(5, max(1, len(shown)))
        rows = max(1, math.ceil(len(shown) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, j in zip(axes.ravel(), shown):
            ax.axis("on")
            ax.plot(curves[j][xy[0]], curves[j][xy[1]], lw=1.2)
            ax.set_title(f"{class_names[j][:18]}\n{label} {100 * score[j]:.1f}", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=6)
        fig.suptitle(f"{prefix}: {'precision-recall' if kind == 'pr' else 'ROC'} per class (known entries)",
                     fontsize=9)
        fig.tight_layout()
        path = out / f"{prefix}_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.plot(rel["prob_pred"], rel["prob_true"], marker="o", lw=1.2)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_title(f"{prefix}: reliability (known entries)", fontsize=9)
    fig.tight_layout()
    path = out / f"{prefix}_reliability.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    points = {
        "classes": class_names,
        "pr": [None if c is None else {k: v.tolist() for k, v in c.items()} for c in pr],
        "roc": [None if c is None else {k: v.tolist() for k, v in c.items()} for c in roc],
        "reliability": {k: np.asarray(v).tolist() for k, v in rel.items()},
    }
    write_json(out / f"{prefix}_curves.json", points)
    written.append(out / f"{prefix}_curves.json")
    return written
