"""Reports of a run's test scores that need more than the scores and the labels.

The grouped mAP (:func:`mlrkit.metrics_groups.grouped_map`, Kim et al.'s OpenImages report) is a
pure metric; this module decides its grouping for a run: the number of groups the method's config
asks for (:meth:`mlrkit.methods.Method.report_groups`, e.g. ``boostlu.groups``), else the one the
dataset declares (``MultiLabelDataset.report_groups``: 5 on OpenImages, 0 = off elsewhere); the
class counts are the training split's annotated entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlrkit.metrics_groups import grouped_map, train_annotation_counts


def report_groups(method, dataset) -> int:
    """How many groups the grouped report of a run uses (0: none)."""
    asked = method.report_groups()
    return int(asked) if asked is not None else int(dataset.report_groups)


def grouped_report(method, data, scores: np.ndarray | Callable[[], np.ndarray]) -> dict[str, Any] | None:
    """The grouped mAP of test ``scores`` of a run (None when off): counts from the training split's
    observed labels, evaluated on the test split's known entries. ``scores`` may be a function
    returning them, called only when the report is on."""
    n = report_groups(method, data.dataset)
    if n <= 0:
        return None
    counts = train_annotation_counts(data.observed_train)
    test_scores = scores() if callable(scores) else scores
    return grouped_map(test_scores, data.test.targets, data.test.known, counts, n)
