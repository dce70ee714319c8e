"""Partial-label metrics against scikit-learn on the known entries (real yeast scores, random masks)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, jaccard_score, roc_auc_score

from mlrkit.errors import MlrkitError
from mlrkit.metrics import (
    MultiLabelMeter,
    auroc,
    average_precision,
    average_precision_averaged,
    class_counts,
    expected_calibration_error,
    hamming_loss,
    jaccard_index,
    per_class_curves,
    per_class_report,
    precision_recall_at_k,
    reliability_curve,
    summary,
)


@pytest.fixture(scope="module")
def case():
    """Real yeast labels, scores of a noisy linear model on real features, a 60 % known mask."""
    from mlrkit.data import load_dataset

    ds = load_dataset("yeast")
    t = ds.test.targets
    rng = np.random.default_rng(0)
    x = ds.test.features
    w = rng.normal(size=(x.shape[1], t.shape[1]))
    logits = (x - x.mean(0)) / (x.std(0) + 1e-6) @ w / 10 + 2.0 * (t - 0.5) * rng.random(t.shape)
    probs = 1 / (1 + np.exp(-logits))
    probs = np.round(probs, 2)  # ties on purpose
    mask = rng.random(t.shape) < 0.6
    return probs, t, mask


def test_ap_averages_match_sklearn_on_known_entries(case):
    p, t, m = case
    per = [average_precision_score(t[m[:, j], j], p[m[:, j], j]) for j in range(t.shape[1])]
    assert average_precision_averaged(p, t, m, "macro") == pytest.approx(np.mean(per), abs=1e-9)
    support = (t & m).sum(0)
    assert average_precision_averaged(p, t, m, "weighted") == pytest.approx(np.average(per, weights=support),
                                                                          abs=1e-9)
    assert average_precision_averaged(p, t, m, "micro") == pytest.approx(
        average_precision_score(t[m], p[m]), abs=1e-9)
    # without a mask: sklearn's own averages
    for avg in ("macro", "weighted", "micro"):
        assert average_precision_averaged(p, t, None, avg) == pytest.approx(
            average_precision_score(t, p, average=avg), abs=1e-9)


def test_auroc_matches_sklearn_on_known_entries(case):
    p, t, m = case
    per = [roc_auc_score(t[m[:, j], j], p[m[:, j], j]) for j in range(t.shape[1])]
    assert auroc(p, t, m, "macro") == pytest.approx(np.mean(per), abs=1e-9)
    assert auroc(p, t, m, "micro") == pytest.approx(roc_auc_score(t[m], p[m]), abs=1e-9)
    assert auroc(p, t, None, "macro") == pytest.approx(roc_auc_score(t, p, average="macro"), abs=1e-9)
    with pytest.raises(MlrkitError, match="undefined"):
        auroc(p[:, :1], np.ones_like(t[:, :1]))


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_sklearn_calibration_curve(case, n_bins):
    p, t, m = case
    prob_true, prob_pred = calibration_curve(t[m], p[m], n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p[m]), minlength=n_bins)
    weights = counts[counts > 0] / m.sum()
    expected = float((weights * np.abs(prob_true - prob_pred)).sum())
    assert expected_calibration_error(p, t, m, n_bins) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(t.astype(float), t) == 0.0
    with pytest.raises(MlrkitError, match="probabilities"):
        expected_calibration_error(p * 3 - 1, t)


def test_hamming_and_jaccard_on_known_entries(case):
    p, t, m = case
    pred = p >= 0.5
    assert hamming_loss(p, t, 0.5, m) == pytest.approx(float((pred != t)[m].mean()))
    rows = slice(0, 60)  # sklearn per row is slow; 60 rows of real labels are enough
    p, t, m, pred = p[rows], t[rows], m[rows], pred[rows]
    per_row = [jaccard_score(t[i, m[i]], pred[i, m[i]], zero_division=1.0) for i in range(len(t)) if m[i].any()]
    assert jaccard_index(p, t, 0.5, m) == pytest.approx(float(np.mean(per_row)), abs=1e-12)
    assert jaccard_index(p, t, 0.5) == pytest.approx(
        jaccard_score(t, pred, average="samples", zero_division=1.0), abs=1e-12)


def test_precision_at_k_ranks_only_known_entries(case):
    p, t, m = case
    got = precision_recall_at_k(p + 1e-9 * np.arange(p.shape[1]), t, 3, m)  # break ties for the brute force
    s = p + 1e-9 * np.arange(p.shape[1])
    precs, recs = [], []
    for i in range(len(t)):
        known = np.flatnonzero(m[i])
        if not len(known):
            continue
        top = known[np.argsort(-s[i, known])[:3]]
        hits = t[i, top].sum()
        precs.append(hits / min(3, len(known)))
        if t[i, known].sum():
            recs.append(hits / t[i, known].sum())
    assert got["P@3"] == pytest.approx(np.mean(precs)) and got["R@3"] == pytest.approx(np.mean(recs))
    # an unknown entry with the highest score never takes a top-k slot
    scores = np.array([[0.9, 0.1, 0.2]])
    assert precision_recall_at_k(scores, np.array([[0, 1, 0]]), 1, np.array([[False, True, True]]))["P@1"] == 0.0
    assert precision_recall_at_k(scores, np.array([[0, 0, 1]]), 1, np.array([[False, True, True]]))["P@1"] == 1.0


def test_unknown_entries_never_count_as_negatives():
    """The same scores scored with full vs partial truth: a hidden positive ranked low does not hurt."""
    scores = np.array([[0.9], [0.8], [0.1]])
    truth = np.array([[1], [0], [1]])
    assert average_precision(scores, truth)[0] < 1.0
    mask = np.array([[True], [True], [False]])
    assert average_precision(scores, truth, mask)[0] == 1.0
    assert class_counts(truth, mask)[0].tolist() == [1] and class_counts(truth, mask)[1].tolist() == [1]


def test_meter_equals_functions_and_counts_each_row_once(case):
    p, t, m = case
    meter = MultiLabelMeter([f"c{j}" for j in range(t.shape[1])])
    half = len(p) // 2
    meter.update(p[:half], t[:half], m[:half], index=np.arange(half))
    other = MultiLabelMeter()
    other.update(p[half - 10:], t[half - 10:], m[half - 10:], index=np.arange(half - 10, len(p)))  # 10 overlap
    meter.merge([other.state()])
    got = meter.compute()
    want = summary(p, t, m)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    rep = per_class_report(p, t, m, [f"c{j}" for j in range(t.shape[1])])
    assert got["per_class"] == rep["per_class"]
    assert got["per_class"]["c0"]["known_positives"] == int((t[:, 0] & m[:, 0]).sum())


def test_unscored_classes_are_listed_by_name():
    scores = np.array([[0.9, 0.2], [0.1, 0.3]])
    truth = np.array([[1, 1], [0, 0]])
    mask = np.array([[True, False], [True, True]])
    rep = per_class_report(scores, truth, mask, ["cat", "dog"])
    assert rep["unscored_classes"] == ["dog"]
    assert rep["per_class"]["dog"] == {"ap": None, "auroc": None, "known_positives": 0, "known_negatives": 1}


def test_curves_use_only_known_entries(case):
    from sklearn.metrics import precision_recall_curve, roc_curve

    p, t, m = case
    pr = per_class_curves(p, t, m, "pr")
    roc = per_class_curves(p, t, m, "roc")
    for j in (0, 5, 13):
        prec, rec, _ = precision_recall_curve(t[m[:, j], j], p[m[:, j], j])
        assert np.allclose(pr[j]["precision"], prec) and np.allclose(pr[j]["recall"], rec)
        fpr, tpr, _ = roc_curve(t[m[:, j], j], p[m[:, j], j], drop_intermediate=False)
        assert np.allclose(roc[j]["fpr"], fpr) and np.allclose(roc[j]["tpr"], tpr)
    rel = reliability_curve(p, t, m, 10)
    prob_true, prob_pred = calibration_curve(t[m], p[m], n_bins=10)
    assert np.allclose(rel["prob_true"], prob_true) and np.allclose(rel["prob_pred"], prob_pred)
    assert rel["count"].sum() == m.sum()
    no_pos = per_class_curves(np.array([[0.2, 0.9]]), np.array([[0, 1]]), np.array([[True, True]]), "pr")
    assert no_pos[0] is None and no_pos[1] is not None
