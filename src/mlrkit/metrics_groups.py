r"""mAP per group of classes sorted by how many training annotations they have (OpenImages report).

Kim et al. (CVPR 2022, "Large Loss Matters…"; CVPR 2023, BoostLU) report OpenImages V3 results as
the mAP of 5 groups of classes of equal size, sorted by their number of training annotations
(Group 1: the least annotated), next to the mAP over all classes.

:func:`grouped_map` does exactly that for any scores: classes are sorted by ascending count (ties
by class index, a stable sort), split into ``n_groups`` contiguous groups whose sizes differ by at
most one (``numpy.array_split``: the first ``C mod n`` groups get one more class), and each group's
mAP is the mean AP of its classes that have a positive among the evaluated (``mask``) entries.

In a run, the count of class :math:`c` is the number of *annotated* training entries of that
class: :math:`\#\{i \in \text{train} : y^{obs}_{ic} \neq 0\}` (known positives and known
negatives, the human-verified labels on OpenImages), see :func:`train_annotation_counts`.

This module is a pure metric: the caller gives the counts and the number of groups (a run's
grouping is chosen by :mod:`mlrkit.engine.reports` from the dataset and the config).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlrkit.errors import MlrkitError
from mlrkit.metrics import average_precision

DEFAULT_GROUPS = 5


def train_annotation_counts(observed_train: np.ndarray, kind: str = "known") -> np.ndarray:
    """Per-class training annotations [C]: ``known`` (observed != 0, default) or ``positives`` (== +1)."""
    obs = np.asarray(observed_train)
    if obs.ndim != 2:
        raise MlrkitError(f"observed labels must be [N, C], got shape {obs.shape}")
    if kind == "known":
        return (obs != 0).sum(axis=0).astype(np.int64)
    if kind == "positives":
        return (obs == 1).sum(axis=0).astype(np.int64)
    raise MlrkitError(f"annotation count kind must be 'known' or 'positives', got {kind!r}")


def class_groups(train_annotation_counts, n_groups: int = DEFAULT_GROUPS) -> list[np.ndarray]:
    """Class indices of each group, Group 1 (fewest annotations) first; sizes differ by at most one."""
    counts = np.asarray(train_annotation_counts)
    if counts.ndim != 1:
        raise MlrkitError(f"train_annotation_counts must be a vector [C], got shape {counts.shape}")
    if not isinstance(n_groups, (int, np.integer)) or isinstance(n_groups, bool) or n_groups < 1:
        raise MlrkitError(f"n_groups must be a positive integer, got {n_groups!r}")
    if n_groups > len(counts):
        raise MlrkitError(f"cannot split {len(counts)} classes into {n_groups} groups")
    order = np.argsort(counts, kind="stable")
    return [np.sort(g) for g in np.array_split(order, n_groups)]


def grouped_map(scores, targets, mask, train_annotation_counts, n_groups: int = DEFAULT_GROUPS,
                class_names: list[str] | None = None) -> dict[str, Any]:
    """Overall mAP and the mAP of each of ``n_groups`` class groups (see the module docstring).

    Args:
        scores: [N, C] test scores (logits or probabilities).
        targets: [N, C] ground truth, 0/1.
        mask: [N, C] bool, True where the ground truth is known (None: all entries).
        train_annotation_counts: [C] number of training annotations per class.
        n_groups: how many groups (5 in the papers).
        class_names: if given, each group lists its classes.

    Returns:
        ``{"map": overall, "n_groups": n, "groups": [{"group": 1, "map": ..., "n_classes": ...,
        "n_scored": ..., "annotations_min": ..., "annotations_max": ..., ["classes": [...]]}, ...]}``;
        a group with no scorable class has ``map`` None. mAPs are fractions in [0, 1].
    """
    ap = average_precision(scores, targets, mask)
    counts = np.asarray(train_annotation_counts)
    if counts.shape != ap.shape:
        raise MlrkitError(f"train_annotation_counts has {counts.shape[0] if counts.ndim else 0} entries, "
                          f"scores have {ap.shape[0]} classes")
    valid = ~np.isnan(ap)
    if not valid.any():
        raise MlrkitError("mAP is undefined: no class has a positive example")
    groups = []
    for k, idx in enumerate(class_groups(counts, n_groups), start=1):
        a = ap[idx]
        ok = ~np.isnan(a)
        row: dict[str, Any] = {
            "group": k,
            "map": float(a[ok].mean()) if ok.any() else None,
            "n_classes": int(len(idx)),
            "n_scored": int(ok.sum()),
            "annotations_min": int(counts[idx].min()),
            "annotations_max": int(counts[idx].max()),
        }
        if class_names is not None:
            row["classes"] = [class_names[i] for i in idx]
        groups.append(row)
    return {"map": float(ap[valid].mean()), "n_groups": int(n_groups), "groups": groups}


def format_grouped(report: dict[str, Any]) -> str:
    """A one-table text form: Group 1 … Group n, All classes (mAP in %)."""
    def pct(g: dict[str, Any]) -> str:
        return "-" if g["map"] is None else f"{100 * g['map']:.2f}"

    head = "".join(f"{'Group ' + str(g['group']):>10}" for g in report["groups"]) + f"{'All':>10}"
    vals = "".join(f"{pct(g):>10}" for g in report["groups"])
    ranges = "".join(f"{str(g['annotations_min']) + '-' + str(g['annotations_max']):>10}" for g in report["groups"])
    return (f"{'':<12}{head}\n{'test mAP':<12}{vals}{100 * report['map']:>10.2f}\n"
            f"{'annotations':<12}{ranges}")
