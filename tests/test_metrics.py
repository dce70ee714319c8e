"""AP/mAP against scikit-learn (ties included), F1, P@k/R@k and the streaming MAPMeter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from mlrkit.errors import MlrkitError
from mlrkit.metrics import (
    MAPMeter,
    average_precision,
    f1_scores,
    map_report,
    mean_average_precision,
    precision_recall_at_k,
)


def _sk_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class sklearn AP, NaN for a class without a positive."""
    out = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        if targets[:, j].any():
            out[j] = average_precision_score(targets[:, j], scores[:, j])
    return out


def _random_case(rng: np.random.Generator, kind: str):
    n = int(rng.integers(1, 80))
    c = int(rng.integers(1, 7))
    p = float(rng.uniform(0.05, 0.7))
    t = (rng.random((n, c)) < p).astype(np.uint8)
    if kind == "ties-int":
        s = rng.integers(0, 4, size=(n, c))
    elif kind == "ties-float32":
        s = rng.integers(0, 4, size=(n, c)).astype(np.float32) / 3
    elif kind == "ties-float64":
        s = rng.integers(0, 4, size=(n, c)).astype(np.float64) - 1.5
    elif kind == "float32":
        s = rng.standard_normal((n, c)).astype(np.float32)
    else:
        s = rng.standard_normal((n, c))
    return s, t


KINDS = ["ties-int", "ties-float32", "ties-float64", "float32", "float64"]


@pytest.mark.parametrize("kind", KINDS)
def test_average_precision_matches_sklearn(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    checked = 0
    for _ in range(60):
        s, t = _random_case(rng, kind)
        ours = average_precision(s, t)
        ref = _sk_ap(s, t)
        assert ours.shape == (t.shape[1],)
        assert np.array_equal(np.isnan(ours), np.isnan(ref))
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(ours[ok], ref[ok], atol=1e-6, rtol=0)
        checked += int(ok.sum())
    assert checked > 100


def test_average_precision_hand_computed_with_ties():
    # scores 3,2,2,1 with labels 1,0,1,0: thresholds {3}: P=1 R=.5, {2,2}: P=2/3 R=1 -> AP = .5 + .5*2/3
    s = np.array([3.0, 2.0, 2.0, 1.0])
    t = np.array([1, 0, 1, 0])
    assert average_precision(s, t)[0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    # ordering inside a tie must not matter
    assert average_precision(s[[0, 2, 1, 3]], t[[0, 2, 1, 3]])[0] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    # all tied: AP = prevalence
    assert average_precision(np.zeros(5), np.array([1, 0, 0, 1, 0]))[0] == pytest.approx(0.4)


def test_one_column_and_one_dimensional_input():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, size=50).astype(np.float64)
    t = (rng.random(50) < 0.4).astype(np.uint8)
    ref = average_precision_score(t, s)
    assert average_precision(s, t)[0] == pytest.approx(ref, abs=1e-6)
    assert average_precision(s[:, None], t[:, None])[0] == pytest.approx(ref, abs=1e-6)
    assert mean_average_precision(s[:, None], t[:, None]) == pytest.approx(ref, abs=1e-6)


def test_class_without_positive_is_nan_and_skipped():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((30, 4))
    t = (rng.random((30, 4)) < 0.4).astype(np.uint8)
    t[:, 1] = 0
    ap = average_precision(s, t)
    assert np.isnan(ap[1]) and not np.isnan(ap[[0, 2, 3]]).any()
    ref = _sk_ap(s, t)
    assert mean_average_precision(s, t) == pytest.approx(np.nanmean(ref), abs=1e-6)
    rep = map_report(s, t)
    assert rep.per_class_ap[1] is None
    assert (rep.n_classes_scored, rep.n_classes_skipped) == (3, 1)
    assert rep.map == pytest.approx(np.nanmean(ref), abs=1e-6)


def test_map_undefined_without_any_positive():
    s = np.random.default_rng(0).standard_normal((10, 3))
    t = np.zeros((10, 3), np.uint8)
    assert np.isnan(average_precision(s, t)).all()
    with pytest.raises(MlrkitError, match="no class has a positive"):
        mean_average_precision(s, t)
    with pytest.raises(MlrkitError, match="no class has a positive"):
        map_report(s, t)


def test_map_is_in_unit_interval():
    rng = np.random.default_rng(2)
    for _ in range(50):
        s, t = _random_case(rng, "float64")
        if not t.any():
            continue
        m = mean_average_precision(s, t)
        assert 0.0 < m <= 1.0
    t = (rng.random((40, 5)) < 0.3).astype(np.uint8)
    t[0] = 1
    assert mean_average_precision(t.astype(float), t) == pytest.approx(1.0)  # perfect ranking
    assert mean_average_precision(-t.astype(float), t) < 0.6  # worst ranking
    assert mean_average_precision(100 * t.astype(float) + 5, t) == pytest.approx(1.0)  # not a percentage


@pytest.mark.parametrize("seed", range(8))
def test_mask_equals_sklearn_on_kept_rows(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 5
    s = rng.integers(0, 5, size=(n, c)).astype(np.float64) if seed % 2 else rng.standard_normal((n, c))
    t = (rng.random((n, c)) < 0.35).astype(np.uint8)
    mask = rng.random((n, c)) < 0.7
    mask[:, 4] &= t[:, 4] == 0  # class 4 keeps no positive -> NaN
    ours = average_precision(s, t, mask=mask)
    for j in range(c):
        keep = mask[:, j]
        if t[keep, j].any():
            assert ours[j] == pytest.approx(average_precision_score(t[keep, j], s[keep, j]), abs=1e-6)
        else:
            assert np.isnan(ours[j])
    # the excluded entries' scores and labels must not matter
    s2 = np.where(mask, s, 1e6)
    t2 = np.where(mask, t, 1).astype(np.uint8)
    np.testing.assert_allclose(average_precision(s2, t2, mask=mask), ours, atol=1e-12)


def test_mask_shape_checked():
    with pytest.raises(MlrkitError, match="mask"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 2)), mask=np.ones((3, 3), bool))


def test_bad_inputs():
    with pytest.raises(MlrkitError, match="NaN or inf"):
        average_precision(np.array([[np.nan], [1.0]]), np.array([[1], [0]]))
    with pytest.raises(MlrkitError, match="0/1"):
        average_precision(np.zeros((2, 2)), np.array([[1, 2], [0, 0]]))
    with pytest.raises(MlrkitError, match=r"\[N, C\]"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


# --------------------------------------------------------------------------- F1 and P@k / R@k

PROBS = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.6, 0.3], [0.1, 0.3, 0.2]])
TRUTH = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.uint8)


def test_f1_scores_hand_computed():
    # class 0: TP 1, pred 2, true 2; class 1: TP 2, pred 2, true 2; class 2: TP 0, pred 1, no positive
    r = f1_scores(PROBS, TRUTH)
    assert r["CP"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert r["CR"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["CF1"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert r["OP"] == pytest.approx(3 / 5)
    assert r["OR"] == pytest.approx(3 / 4)
    assert r["OF1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    # a higher threshold: class 0 TP 1/2 pred, class 1 TP 1/1 pred, class 2 nothing predicted
    r = f1_scores(PROBS, TRUTH, threshold=0.65)
    assert r["CP"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert r["CR"] == pytest.approx((0.5 + 0.5) / 2)
    assert r["OP"] == pytest.approx(2 / 3)
    assert r["OR"] == pytest.approx(2 / 4)


def test_f1_threshold_is_inclusive_and_mask_excludes():
    probs = np.array([[0.5, 0.49], [0.5, 0.9]])
    truth = np.array([[1, 1], [0, 1]], dtype=np.uint8)
    r = f1_scores(probs, truth)  # pred [[1,0],[1,1]]: TP 2, pred 3, true 3
    assert (r["OP"], r["OR"]) == pytest.approx((2 / 3, 2 / 3))
    mask = np.array([[True, False], [False, True]])  # keeps the (0,0) and (1,1) entries only
    r = f1_scores(probs, truth, mask=mask)
    assert (r["OP"], r["OR"], r["CP"], r["CR"]) == pytest.approx((1.0, 1.0, 1.0, 1.0))


@pytest.mark.parametrize("seed", range(5))
def test_f1_scores_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((100, 8))
    truth = (rng.random((100, 8)) < 0.3).astype(np.uint8)
    truth[:, 7] = 0
    pred = (probs >= 0.4).astype(np.uint8)
    r = f1_scores(probs, truth, threshold=0.4)
    assert r["OP"] == pytest.approx(precision_score(truth, pred, average="micro", zero_division=0))
    assert r["OR"] == pytest.approx(recall_score(truth, pred, average="micro", zero_division=0))
    assert r["OF1"] == pytest.approx(f1_score(truth, pred, average="micro", zero_division=0))
    assert r["CP"] == pytest.approx(precision_score(truth, pred, average="macro", zero_division=0))
    per_class_recall = recall_score(truth, pred, average=None, zero_division=0)
    assert r["CR"] == pytest.approx(per_class_recall[:7].mean())  # classes with a positive only
    assert r["CF1"] == pytest.approx(2 * r["CP"] * r["CR"] / (r["CP"] + r["CR"]))


def test_precision_recall_at_k_hand_computed():
    s = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    t = np.array([[1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
    r2 = precision_recall_at_k(s, t, k=2)  # hits 1, 2, 0
    assert r2["P@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert r2["R@2"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # the image without positives is skipped
    r1 = precision_recall_at_k(s, t, k=1)  # hits 1, 1, 0
    assert r1["P@1"] == pytest.approx(2 / 3)
    assert r1["R@1"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    r4 = precision_recall_at_k(s, t, k=4)
    assert r4["R@4"] == pytest.approx(1.0)
    assert r4["P@4"] == pytest.approx((2 / 4 + 3 / 4 + 0) / 3)
    for k in (0, 5):
        with pytest.raises(MlrkitError, match="k must be in"):
            precision_recall_at_k(s, t, k=k)


# --------------------------------------------------------------------------- MAPMeter and torch


@pytest.mark.parametrize("seed", range(5))
def test_meter_streaming_equals_one_shot(seed):
    rng = np.random.default_rng(seed)
    n, c = 257, 6
    s = rng.standard_normal((n, c)).astype(np.float32)
    if seed % 2:
        s = np.round(s * 2).astype(np.float32)  # ties
    t = (rng.random((n, c)) < 0.3).astype(np.uint8)
    t[:, 2] = 0  # a class without a positive
    cuts = np.sort(rng.choice(np.arange(1, n), size=int(rng.integers(1, 12)), replace=False))
    meter = MAPMeter()
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, n]):
        meter.update(s[a:b], t[a:b])
    rep = meter.compute()
    assert rep.map == pytest.approx(mean_average_precision(s, t), abs=1e-7)
    assert rep.map == pytest.approx(np.nanmean(_sk_ap(s, t)), abs=1e-6)
    assert rep.n_classes_skipped == 1


def test_meter_deduplicates_and_orders_by_index():
    rng = np.random.default_rng(3)
    n, c = 50, 4
    s = rng.standard_normal((n, c)).astype(np.float32)
    t = (rng.random((n, c)) < 0.4).astype(np.uint8)
    idx = rng.permutation(n)
    meter = MAPMeter()
    # rows arrive shuffled, and (as with a padded distributed sampler) some arrive twice
    meter.update(s[idx[:30]], t[idx[:30]], index=idx[:30])
    meter.update(s[idx[25:]], t[idx[25:]], index=idx[25:])
    meter.update(s[idx[:3]], t[idx[:3]], index=idx[:3])
    index, rs, rt, _ = meter.rows()
    assert index.tolist() == list(range(n))
    assert np.array_equal(rs, s) and np.array_equal(rt, t)
    assert meter.compute().map == pytest.approx(mean_average_precision(s, t), abs=1e-7)
    # without de-duplication the repeated rows would change the result
    dup = np.r_[np.arange(n), idx[:3], idx[25:]]
    assert mean_average_precision(s[dup], t[dup]) != pytest.approx(meter.compute().map, abs=1e-9)


def test_meter_mask_and_reset():
    rng = np.random.default_rng(4)
    s = rng.standard_normal((40, 3)).astype(np.float32)
    t = (rng.random((40, 3)) < 0.4).astype(np.uint8)
    mask = rng.random((40, 3)) < 0.6
    meter = MAPMeter()
    meter.update(s[:15], t[:15], mask=mask[:15])
    meter.update(s[15:], t[15:], mask=mask[15:])
    assert meter.compute().map == pytest.approx(mean_average_precision(s, t, mask=mask), abs=1e-7)
    meter.reset()
    with pytest.raises(MlrkitError, match="before any update"):
        meter.compute()


def test_meter_raises_before_any_update():
    with pytest.raises(MlrkitError, match="before any update"):
        MAPMeter().compute()
    with pytest.raises(MlrkitError, match="scores"):
        MAPMeter().update(np.zeros((3, 2)), np.zeros((3, 3)))


def test_torch_tensors_accepted():
    rng = np.random.default_rng(5)
    s = rng.standard_normal((64, 5)).astype(np.float32)
    t = (rng.random((64, 5)) < 0.3).astype(np.uint8)
    ts, tt = torch.from_numpy(s), torch.from_numpy(t)
    np.testing.assert_allclose(average_precision(ts, tt), average_precision(s, t), atol=0)
    assert mean_average_precision(ts, tt.long()) == pytest.approx(mean_average_precision(s, t))
    assert mean_average_precision(ts.requires_grad_(), tt.bool()) == pytest.approx(mean_average_precision(s, t))
    assert f1_scores(torch.sigmoid(ts.detach()), tt) == pytest.approx(f1_scores(1 / (1 + np.exp(-s)), t))
    meter = MAPMeter()
    meter.update(ts[:30], tt[:30], index=torch.arange(30))
    meter.update(ts[30:], tt[30:], index=torch.arange(30, 64))
    assert meter.compute().map == pytest.approx(mean_average_precision(s, t), abs=1e-7)


def test_torch_float64_scores_keep_their_precision():
    # two scores that differ only beyond float32 precision are not a tie
    s = torch.tensor([[1.0], [1.0 + 1e-12]], dtype=torch.float64)
    t = torch.tensor([[0], [1]])
    expected = average_precision_score(t.numpy()[:, 0], s.numpy()[:, 0])
    assert expected == pytest.approx(1.0)
    assert average_precision(s, t)[0] == pytest.approx(expected, abs=1e-6)


def test_coco_sized_matrix_matches_sklearn_on_a_few_columns():
    # correctness only at COCO-val size (40,504 x 80); speed is a benchmark, not a test
    rng = np.random.default_rng(6)
    n, c = 40_504, 80
    s = rng.random((n, c), dtype=np.float32)  # float32 at this size has natural ties
    t = (rng.random((n, c), dtype=np.float32) < 0.03).astype(np.uint8)
    ap = average_precision(s, t)
    assert ap.shape == (c,) and not np.isnan(ap).any()
    for j in (0, 17, 79):
        assert ap[j] == pytest.approx(average_precision_score(t[:, j], s[:, j]), abs=1e-6)
    assert 0.0 < mean_average_precision(s, t) < 1.0
