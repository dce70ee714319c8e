"""Observation protocols, the observed-label artifact and label statistics (mlrkit.labels)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mlrkit.data import load_dataset
from mlrkit.errors import DataError, MlrkitError
from mlrkit.labels import (
    PROTOCOLS,
    ObservedLabels,
    array_sha256,
    label_stats,
    make_observed,
    observe,
    parse_protocol,
)

ALL_PROTOCOLS = ["full", "single-positive", "partial:0.1", "partial:0.5", "drop-positives:0.3", "drop-positives:1"]


@pytest.fixture(scope="module")
def real_targets() -> dict[str, np.ndarray]:
    return {name: load_dataset(name).trainval.targets for name in ("yeast", "scene")}


def _random_targets(seed: int, n: int = 40, c: int = 7, p: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, c)) < p).astype(np.uint8)
    t[0] = 0  # an image without any positive
    t[1] = 1  # an image with every class positive
    return t


def _check_consistent(obs: np.ndarray, targets: np.ndarray) -> None:
    assert obs.dtype == np.int8
    assert obs.shape == targets.shape
    assert set(np.unique(obs).tolist()) <= {-1, 0, 1}
    assert not np.any((obs == 1) & (targets == 0)), "a +1 where the ground truth is 0"
    assert not np.any((obs == -1) & (targets == 1)), "a -1 where the ground truth is 1"


# --------------------------------------------------------------------------- every protocol


@pytest.mark.parametrize("dataset", ["yeast", "scene"])
@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_protocols_on_real_ground_truth_are_consistent(real_targets, dataset, protocol):
    t = real_targets[dataset]
    obs = make_observed(t, protocol, seed=3)
    _check_consistent(obs, t)
    assert (obs != 0).any()


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_protocols_on_hand_made_matrices_are_consistent(protocol, seed):
    t = _random_targets(seed)
    _check_consistent(make_observed(t, protocol, seed=seed), t)
    # other integer/bool dtypes of the same ground truth give the same result
    for dtype in (np.int64, bool, np.float32):
        assert np.array_equal(make_observed(t.astype(dtype), protocol, seed=seed), make_observed(t, protocol, seed))


def test_registry_lists_the_protocols_with_descriptions():
    assert set(PROTOCOLS.names()) >= {"full", "single-positive", "partial", "drop-positives", "observed", "fpc"}
    assert all(e.description for e in PROTOCOLS.list())


def test_full_is_exactly_the_ground_truth(real_targets):
    t = real_targets["yeast"]
    obs = make_observed(t, "full", seed=0)
    assert np.array_equal(obs, np.where(t == 1, 1, -1).astype(np.int8))
    hand = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=np.uint8)
    assert make_observed(hand, "full", 5).tolist() == [[1, -1, -1], [-1, -1, -1], [1, 1, 1]]


@pytest.mark.parametrize("dataset", ["yeast", "scene"])
def test_single_positive_one_per_image_with_a_positive(real_targets, dataset):
    t = real_targets[dataset]
    obs = make_observed(t, "single-positive", seed=11)
    has_pos = t.sum(axis=1) > 0
    per_row = (obs == 1).sum(axis=1)
    assert np.all(per_row[has_pos] == 1)
    assert np.all(per_row[~has_pos] == 0)
    assert not (obs == -1).any()  # nothing but +1 and 0


def test_single_positive_hand_made():
    t = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)
    for seed in range(20):
        obs = make_observed(t, "single-positive", seed)
        assert obs[0].tolist() == [0, 0, 0, 0]
        assert obs[1].tolist() == [0, 1, 0, 0]
        assert (obs[2] == 1).sum() == 1 and (obs[2] >= 0).all()
        assert (obs[3] == 1).sum() == 1 and obs[3, :2].tolist() == [0, 0]


def test_single_positive_choice_is_uniform_over_seeds():
    t = np.array([[1, 0, 1, 0, 1]], dtype=np.uint8)
    n = 3000
    counts = np.zeros(5, int)
    for seed in range(n):
        obs = make_observed(t, "single-positive", seed)
        assert (obs == 1).sum() == 1
        counts += obs[0] == 1
    assert counts[[1, 3]].sum() == 0
    freq = counts[[0, 2, 4]] / n
    assert np.all(np.abs(freq - 1 / 3) < 0.03), freq
    expected = n / 3
    chi2 = float(((counts[[0, 2, 4]] - expected) ** 2 / expected).sum())
    assert chi2 < 13.8, chi2  # 2 degrees of freedom, p = 0.001


def test_single_positive_choice_is_uniform_across_rows():
    # the same row repeated: each image draws independently
    t = np.tile(np.array([[0, 1, 1, 0, 1, 0]], dtype=np.uint8), (6000, 1))
    obs = make_observed(t, "single-positive", seed=7)
    freq = (obs == 1).sum(axis=0) / len(t)
    assert freq[[0, 3, 5]].sum() == 0
    assert np.all(np.abs(freq[[1, 2, 4]] - 1 / 3) < 0.025), freq


@pytest.mark.parametrize("frac", [0.05, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dataset", ["yeast", "scene"])
def test_partial_known_count_and_values(real_targets, dataset, frac):
    t = real_targets[dataset]
    n, c = t.shape
    obs = make_observed(t, f"partial:{frac}", seed=2)
    known = obs != 0
    assert known.sum() == int(round(frac * n * c))
    # every known entry carries the ground truth
    assert np.array_equal(obs[known], np.where(t[known] == 1, 1, -1))
    # uniform: the known fraction of every class is close to frac
    per_class = known.mean(axis=0)
    assert np.all(np.abs(per_class - frac) < 0.06), per_class


def test_partial_hand_made_rounding():
    t = _random_targets(0, n=9, c=7)  # 63 entries
    for frac, expected in [(0.1, 6), (0.5, 32), (1 / 63, 1), (1.0, 63)]:
        obs = make_observed(t, f"partial:{frac}", seed=1)
        assert int((obs != 0).sum()) == expected == int(round(frac * 63))


def test_partial_mask_is_uniform_over_entries():
    # every entry should be known with probability f: chi-square over 2000 seeds
    t = _random_targets(1, n=8, c=5)
    frac, n_seeds = 0.25, 2000
    counts = np.zeros(t.shape, int)
    for seed in range(n_seeds):
        counts += make_observed(t, f"partial:{frac}", seed) != 0
    expected = n_seeds * int(round(frac * t.size)) / t.size
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80, chi2  # 39 degrees of freedom; p < 1e-4 above ~80
    assert np.all(np.abs(counts / n_seeds - frac) < 0.06)


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("dataset", ["yeast", "scene"])
def test_drop_positives_keeps_round_f_p(real_targets, dataset, frac):
    t = real_targets[dataset]
    p = int(t.sum())
    obs = make_observed(t, f"drop-positives:{frac}", seed=4)
    assert int((obs == 1).sum()) == int(round(frac * p))
    assert not (obs == -1).any()
    assert not ((obs == 1) & (t == 0)).any()
    # uniform over the positives: per-class kept fraction near frac (classes with enough positives)
    ppc = t.sum(axis=0)
    kept = (obs == 1).sum(axis=0)
    big = ppc >= 100
    assert np.all(np.abs(kept[big] / ppc[big] - frac) < 0.1)


def test_drop_positives_hand_made():
    t = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=np.uint8)  # P = 6
    for frac, expected in [(0.5, 3), (1 / 6, 1), (1.0, 6), (0.9, 5)]:
        for seed in range(5):
            obs = make_observed(t, f"drop-positives:{frac}", seed)
            assert int((obs == 1).sum()) == expected
            assert int((obs != 0).sum()) == expected
            assert not ((obs == 1) & (t == 0)).any()
    assert np.array_equal(make_observed(t, "drop-positives:1", 0), t.astype(np.int8))


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_deterministic_in_seed(real_targets, protocol):
    t = real_targets["yeast"]
    a = make_observed(t, protocol, seed=123)
    b = make_observed(t, protocol, seed=123)
    assert np.array_equal(a, b)
    c = make_observed(t, protocol, seed=124)
    if protocol in ("full", "drop-positives:1"):
        assert np.array_equal(a, c)  # nothing random in these
    else:
        assert not np.array_equal(a, c)


def test_protocol_string_whitespace_is_tolerated():
    t = _random_targets(0)
    assert np.array_equal(make_observed(t, " partial:0.5 ", 1), make_observed(t, "partial:0.5", 1))
    assert parse_protocol("partial:0.25") == ("partial", 0.25)
    assert parse_protocol("full") == ("full", None)
    assert parse_protocol("drop-positives:1") == ("drop-positives", 1.0)


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_known_mask_keeps_unknown_ground_truth_at_zero(real_targets, protocol):
    t = real_targets["scene"]
    rng = np.random.default_rng(0)
    known = rng.random(t.shape) < 0.6
    obs = make_observed(t, protocol, seed=9, known=known)
    _check_consistent(obs, t)
    assert not (obs[~known] != 0).any()
    if protocol == "full":
        assert np.all(obs[known] != 0)
    if protocol.startswith("partial:"):
        f = float(protocol.split(":")[1])
        assert int((obs != 0).sum()) == int(round(f * known.sum()))
    if protocol.startswith("drop-positives:"):
        f = float(protocol.split(":")[1])
        assert int((obs == 1).sum()) == int(round(f * ((t == 1) & known).sum()))
    if protocol == "single-positive":
        eligible = ((t == 1) & known).any(axis=1)
        assert np.all((obs == 1).sum(axis=1) == eligible.astype(int))


def test_known_mask_hand_made_single_positive():
    t = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.uint8)
    known = np.array([[False, True, True], [False, True, True]])
    for seed in range(10):
        obs = make_observed(t, "single-positive", seed, known=known)
        assert obs.tolist() == [[0, 1, 0], [0, 0, 0]]  # row 1's only positive is unverified
    assert make_observed(t, "full", 0, known=known).tolist() == [[0, 1, -1], [0, -1, -1]]


def test_known_mask_shape_mismatch_is_refused():
    t = _random_targets(0)
    with pytest.raises(DataError, match="known mask shape"):
        make_observed(t, "full", 0, known=np.ones((3, 3), bool))


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ("partial", r"needs a fraction.*partial:0\.5"),
        ("drop-positives", "needs a fraction"),
        ("partial:abc", r"'abc' is not a number"),
        ("partial:", "not a number"),
        ("partial:1.5", r"\(0, 1\]"),
        ("partial:0", r"\(0, 1\]"),
        ("partial:-0.2", r"\(0, 1\]"),
        ("partial:nan", r"\(0, 1\]"),
        ("drop-positives:2", r"\(0, 1\]"),
        ("full:0.3", "takes no argument"),
        ("single-positive:1", "takes no argument"),
        ("nope", "unknown protocol 'nope'"),
        ("", "non-empty"),
        ("   ", "non-empty"),
    ],
)
def test_bad_protocol_strings(bad, pattern):
    t = _random_targets(0)
    with pytest.raises(MlrkitError, match=pattern):
        make_observed(t, bad, 0)


@pytest.mark.parametrize(
    "typo, suggestion", [("partal:0.5", "partial"), ("single_positive", "single-positive"), ("ful", "full"),
                         ("drop-positive:0.5", "drop-positives")]
)
def test_unknown_protocol_suggests_close_names(typo, suggestion):
    with pytest.raises(MlrkitError, match=rf"did you mean .*{re.escape(suggestion)}"):
        parse_protocol(typo)


def test_non_string_protocol_is_refused():
    with pytest.raises(MlrkitError, match="non-empty string"):
        parse_protocol(None)  # type: ignore[arg-type]


def test_bad_targets_are_refused():
    with pytest.raises(DataError, match="only 0/1"):
        make_observed(np.array([[0, 2], [1, 0]]), "full", 0)
    with pytest.raises(DataError, match="2-D"):
        make_observed(np.array([0, 1, 1]), "full", 0)


# --------------------------------------------------------------------------- artifact


def test_observed_labels_round_trip(tmp_path, real_targets):
    t = real_targets["yeast"]
    names = [f"c{i}" for i in range(t.shape[1])]
    ol = observe(t, "partial:0.3", seed=5, dataset="yeast", class_names=names)
    assert ol.sha256 == array_sha256(ol.observed)
    assert ol.targets_sha256 == array_sha256(t)
    path = ol.save(tmp_path / "obs")  # suffix added
    assert path == tmp_path / "obs.npz" and path.is_file()
    back = ObservedLabels.load(path)
    assert np.array_equal(back.observed, ol.observed) and back.observed.dtype == np.int8
    assert back.sha256 == ol.sha256
    assert back.targets_sha256 == ol.targets_sha256
    assert (back.protocol, back.seed, back.dataset, back.class_names) == ("partial:0.3", 5, "yeast", names)
    assert back.meta() == ol.meta()
    back.check_matches(t, "yeast")  # accepted


def _tamper(path, fn) -> None:
    with np.load(path, allow_pickle=False) as z:
        observed = z["observed"].copy()
        meta = z["meta"].copy()
    fn(observed)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, observed=observed, meta=meta)


def test_tampered_file_is_refused(tmp_path):
    t = _random_targets(0)
    path = observe(t, "full", seed=0, dataset="toy").save(tmp_path / "obs.npz")

    def flip(o):
        o[3, 2] = -o[3, 2]

    _tamper(path, flip)
    with pytest.raises(DataError, match="corrupt") as ei:
        ObservedLabels.load(path)
    assert str(path) in str(ei.value)


def test_tampered_shape_is_refused(tmp_path):
    t = _random_targets(0)
    path = observe(t, "full", seed=0, dataset="toy").save(tmp_path / "obs.npz")
    with np.load(path) as z:
        meta = z["meta"].copy()
    with open(path, "wb") as fh:
        np.savez_compressed(fh, observed=np.ones((2, 2), np.int8), meta=meta)
    with pytest.raises(DataError, match=re.escape(str(path))):
        ObservedLabels.load(path)


def test_load_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ObservedLabels.load(tmp_path / "nothing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(DataError, match="not an mlrkit observed-label file"):
        ObservedLabels.load(other)


def test_constructor_checks_hash_and_values():
    obs = make_observed(_random_targets(0), "full", 0)
    with pytest.raises(DataError, match="corrupt"):
        ObservedLabels(obs, "full", 0, "toy", "x", sha256="0" * 64)
    with pytest.raises(DataError, match="-1/0/\\+1"):
        ObservedLabels(np.full((2, 2), 3, np.int8), "full", 0, "toy", "x")


def test_check_matches_refuses_other_data(real_targets):
    yeast, scene = real_targets["yeast"], real_targets["scene"]
    ol = observe(yeast, "single-positive", seed=1, dataset="yeast")
    with pytest.raises(DataError, match=r"shape .*'scene'"):
        ol.check_matches(scene, "scene")
    other = yeast.copy()
    other[0, 0] = 1 - other[0, 0]  # same shape, different ground truth
    with pytest.raises(DataError, match="hash mismatch"):
        ol.check_matches(other, "yeast-v2")
    ol.check_matches(yeast.copy(), "yeast")


def test_meta_is_json_and_complete():
    ol = observe(_random_targets(0), "drop-positives:0.5", seed=2, dataset="toy", class_names=list("abcdefg"))
    meta = json.loads(json.dumps(ol.meta()))
    assert meta["shape"] == [40, 7]
    assert {"protocol", "seed", "dataset", "targets_sha256", "class_names", "sha256"} <= set(meta)


# --------------------------------------------------------------------------- statistics and hashing


def test_label_stats_on_ground_truth():
    t = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=np.uint8)
    s = label_stats(t, ["cat", "dog", "car", "tree"])
    assert (s.n_images, s.n_classes) == (4, 4)
    assert s.positives_per_image_mean == pytest.approx(1.5)
    assert (s.positives_per_image_min, s.positives_per_image_max) == (0, 3)
    assert s.images_without_positive == 1
    assert s.known_fraction == 1.0
    assert (s.known_positives, s.known_negatives) == (6, 10)
    assert s.positives_per_class == [3, 2, 1, 0]
    assert s.classes_without_positive == ["tree"]
    text = s.format()
    assert "tree" in text and "1.500" in text


def test_label_stats_on_observed():
    o = np.array([[1, 0, -1], [0, 0, 0], [-1, 1, 1], [0, -1, 0]], dtype=np.int8)
    s = label_stats(o, ["a", "b", "c"])
    assert s.positives_per_image_mean == pytest.approx(0.75)
    assert (s.positives_per_image_min, s.positives_per_image_max) == (0, 2)
    assert s.images_without_positive == 2
    assert s.known_fraction == pytest.approx(6 / 12)
    assert (s.known_positives, s.known_negatives) == (3, 3)
    assert s.positives_per_class == [1, 1, 1]
    assert s.classes_without_positive == []
    # single-positive style int8 without any -1 is still observed: zeros are unknown
    sp = np.array([[1, 0], [0, 0]], dtype=np.int8)
    s2 = label_stats(sp)
    assert s2.known_fraction == pytest.approx(0.25)
    assert s2.known_negatives == 0
    assert s2.classes_without_positive == ["1"]


def test_array_sha256():
    a = np.arange(12, dtype=np.int8).reshape(3, 4)
    h = array_sha256(a)
    assert h == array_sha256(a.copy()) and len(h) == 64
    assert h != array_sha256(a.reshape(4, 3))
    assert h != array_sha256(a.reshape(12))
    assert h != array_sha256(a.astype(np.int16))
    assert h != array_sha256(a.astype(np.uint8))
    b = a.copy()
    b[2, 3] = 0
    assert h != array_sha256(b)
    # a non-contiguous view hashes like its contiguous copy
    assert array_sha256(a.T) == array_sha256(np.ascontiguousarray(a.T))
