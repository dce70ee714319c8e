"""Registry, the ``features:<file.npz>`` dataset, the built-in Mulan datasets and Cole et al.'s split."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mlrkit.data import DATASETS, MultiLabelDataset, Split, load_dataset, split_train_val
from mlrkit.errors import DataError, MlrkitError
from mlrkit.registry import Registry

# --------------------------------------------------------------------------- registry


def test_registry_add_get_list():
    reg: Registry[object] = Registry("widget")
    sentinel = object()
    reg.add("alpha", sentinel, "the first one")

    @reg.register("beta-two", "a decorated one")
    def beta():
        return 2

    assert reg.get("alpha") is sentinel
    assert reg.get("beta-two") is beta and beta() == 2  # the decorator returns the object unchanged
    assert reg.names() == ["alpha", "beta-two"]
    listed = [(e.name, e.description) for e in reg.list()]
    assert listed == [("alpha", "the first one"), ("beta-two", "a decorated one")]
    assert reg.entry("alpha").obj is sentinel
    assert "alpha" in reg and "gamma" not in reg
    assert list(reg) == ["alpha", "beta-two"]


def test_registry_refuses_duplicates_and_missing_descriptions():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1, "one")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 2, "again")
    assert reg.get("a") == 1
    with pytest.raises(ValueError, match="one-line description"):
        reg.add("b", 2, "")
    with pytest.raises(ValueError, match="one-line description"):
        reg.add("c", 3, "two\nlines")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", "decorated")(lambda: None)
    assert reg.names() == ["a"]


def test_registry_unknown_name_suggests_close_names():
    reg: Registry[int] = Registry("loss")
    for i, name in enumerate(["focal", "asl", "hill", "role", "an_ls"]):
        reg.add(name, i, f"loss {name}")
    with pytest.raises(MlrkitError, match=r"unknown loss 'foca' \(did you mean focal\?\).*mlrkit list losses"):
        reg.get("foca")
    with pytest.raises(MlrkitError, match=r"did you mean .*an_ls"):
        reg.get("an-ls")
    with pytest.raises(MlrkitError) as ei:
        reg.get("zzzzzzzz")
    assert "did you mean" not in str(ei.value) and "'zzzzzzzz'" in str(ei.value)


def test_dataset_registry_has_the_builtins():
    import mlrkit.data.datasets  # noqa: F401 - importing the adapters registers them

    names = set(DATASETS.names())
    assert {"features", "scene", "yeast", "emotions"} <= names
    with pytest.raises(MlrkitError, match=r"did you mean yeast.*`mlrkit list datasets`"):
        load_dataset("yeats")


def test_loss_registry_error_points_at_the_real_list_command():
    from mlrkit.losses import LOSSES

    with pytest.raises(MlrkitError, match=r"`mlrkit list losses`"):
        LOSSES.get("no-such-loss")


# --------------------------------------------------------------------------- features:<file.npz>


def _arrays(n_train=12, n_test=7, d=5, c=3, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "X_train": rng.standard_normal((n_train, d)),
        "Y_train": (rng.random((n_train, c)) < 0.4).astype(np.int64),
        "X_test": rng.standard_normal((n_test, d)),
        "Y_test": (rng.random((n_test, c)) < 0.4).astype(np.int64),
    }


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _fails(path: Path, pattern: str | None) -> DataError:
    with pytest.raises(DataError, match=pattern) as ei:
        load_dataset(f"features:{path}")
    assert str(path) in str(ei.value), f"message does not name the file: {ei.value}"
    return ei.value


def test_features_good_file(tmp_path):
    a = _arrays()
    names = np.array(["cat", "dog", "car"])
    path = _save(tmp_path / "good.npz", **a, class_names=names)
    ds = load_dataset(f"features:{path}")
    assert isinstance(ds, MultiLabelDataset)
    assert ds.class_names == ["cat", "dog", "car"] and ds.num_classes == 3
    assert str(path) in ds.name
    assert len(ds.trainval) == 12 and len(ds.test) == 7
    assert ds.trainval.features.dtype == np.float32 and ds.trainval.targets.dtype == np.uint8
    np.testing.assert_allclose(ds.trainval.features, a["X_train"].astype(np.float32))
    np.testing.assert_allclose(ds.test.features, a["X_test"].astype(np.float32))
    assert np.array_equal(ds.trainval.targets, a["Y_train"]) and np.array_equal(ds.test.targets, a["Y_test"])
    assert ds.has_features and not ds.has_images
    assert len(set(ds.trainval.ids)) == 12


def test_features_default_class_names_and_label_dtypes(tmp_path):
    a = _arrays()
    a["Y_train"] = a["Y_train"].astype(bool)
    a["Y_test"] = a["Y_test"].astype(np.float32)
    path = _save(tmp_path / "nonames.npz", **a)
    ds = load_dataset(f"features:{path}")
    assert ds.class_names == ["class0", "class1", "class2"]
    assert np.array_equal(ds.test.targets, a["Y_test"].astype(np.uint8))


@pytest.mark.parametrize("missing", ["X_train", "Y_train", "X_test", "Y_test"])
def test_features_missing_array(tmp_path, missing):
    a = _arrays()
    a.pop(missing)
    path = _save(tmp_path / "missing.npz", **a)
    shown = "Y_train \\(or observed_train\\)" if missing == "Y_train" else missing
    _fails(path, rf"missing arrays \['{shown}'\]")


@pytest.mark.parametrize(
    "value, split, row, col", [(np.nan, "train", 3, 1), (np.inf, "test", 2, 4), (-np.inf, "train", 0, 0)]
)
def test_features_non_finite(tmp_path, value, split, row, col):
    a = _arrays()
    a[f"X_{split}"][row, col] = value
    path = _save(tmp_path / "nan.npz", **a)
    _fails(path, rf"X_{split} has 1 NaN/inf values \(first at row {row}, column {col}\)")


@pytest.mark.parametrize("bad", [2, -1, 0.5])
def test_features_labels_not_binary(tmp_path, bad):
    a = _arrays()
    a["Y_test"] = a["Y_test"].astype(np.float64)
    a["Y_test"][1, 2] = bad
    path = _save(tmp_path / "labels.npz", **a)
    _fails(path, r"Y_test must hold only 0/1")


def test_features_mismatched_rows(tmp_path):
    a = _arrays()
    a["Y_train"] = a["Y_train"][:-1]
    _fails(_save(tmp_path / "rows.npz", **a), r"X_train \(12, 5\) and Y_train \(11, 3\)")


def test_features_not_two_dimensional(tmp_path):
    a = _arrays()
    a["X_test"] = a["X_test"][:, 0]
    _fails(_save(tmp_path / "ndim.npz", **a), r"X_test \(7,\)")


def test_features_mismatched_feature_dims(tmp_path):
    a = _arrays()
    a["X_test"] = a["X_test"][:, :4]
    _fails(_save(tmp_path / "dims.npz", **a), r"X_train has 5 features, X_test 4")


def test_features_mismatched_class_counts(tmp_path):
    a = _arrays()
    a["Y_test"] = a["Y_test"][:, :2]
    _fails(_save(tmp_path / "classes.npz", **a), r"Y_train has 3 classes, Y_test 2")


def test_features_class_names_length(tmp_path):
    path = _save(tmp_path / "names.npz", **_arrays(), class_names=np.array(["a", "b"]))
    _fails(path, r"class_names has 2 entries, labels have 3 classes")


def test_features_non_numeric(tmp_path):
    a = _arrays()
    a["X_train"] = np.full((12, 5), "x")
    _fails(_save(tmp_path / "text.npz", **a), r"X_train must be numeric")


def test_features_duplicate_class_names(tmp_path):
    path = _save(tmp_path / "dup.npz", **_arrays(), class_names=np.array(["a", "b", "a"]))
    _fails(path, r"duplicate class names: \['a'\]")


def test_features_empty_split(tmp_path):
    path = _save(tmp_path / "empty.npz", **_arrays(n_test=0))
    _fails(path, r"test split is empty")


def test_features_missing_file(tmp_path):
    _fails(tmp_path / "absent.npz", "not found")


def test_features_without_path():
    with pytest.raises(DataError, match="needs a file"):
        load_dataset("features")


def test_features_text_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("X_train,Y_train\n1,2\n")
    _fails(path, "not a readable .npz")


@pytest.mark.parametrize("kind", ["npy", "empty", "truncated-zip", "object-array"])
def test_features_other_unreadable_files(tmp_path, kind):
    # every unreadable file must be a DataError naming it, never a bare TypeError/EOFError/BadZipFile
    path = tmp_path / f"{kind}.npz"
    if kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((3, 3)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-zip":
        _save(tmp_path / "full.npz", **_arrays())
        path.write_bytes((tmp_path / "full.npz").read_bytes()[:200])
    else:
        _save(path, **_arrays(), class_names=np.array(["a", "b", "c"], dtype=object))
    _fails(path, "class_names" if kind == "object-array" else r"\.npz")


# --------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    "name, n_train, n_test, d, c",
    [("scene", 1211, 1196, 294, 6), ("yeast", 1500, 917, 103, 14), ("emotions", 391, 202, 72, 6)],
)
def test_builtin_sizes(name, n_train, n_test, d, c):
    ds = load_dataset(name)
    assert ds.name == name
    assert (len(ds.trainval), len(ds.test)) == (n_train, n_test)
    assert ds.trainval.features.shape == (n_train, d) and ds.test.features.shape == (n_test, d)
    assert ds.trainval.targets.shape == (n_train, c) and ds.test.targets.shape == (n_test, c)
    assert ds.num_classes == c and len(set(ds.class_names)) == c
    assert ds.trainval.features.dtype == np.float32 and ds.trainval.targets.dtype == np.uint8
    assert np.isfinite(ds.trainval.features).all()
    # real multi-label data: every class occurs, images carry more than one label on average
    assert (ds.trainval.targets.sum(axis=0) > 0).all()
    assert ds.trainval.targets.sum(axis=1).mean() > 1.0
    assert ds.description
    assert np.array_equal(ds.trainval.index, np.arange(n_train))


# --------------------------------------------------------------------------- Cole et al.'s split


def _cole_generate_split(num_ex: int, frac: float, rng: np.random.RandomState):
    """Verbatim logic of Cole et al. (2021) ``datasets.generate_split``."""
    n_2 = int(np.round(frac * num_ex))
    n_1 = num_ex - n_2
    idx_rand = rng.permutation(num_ex)
    idx_1 = np.sort(idx_rand[:n_1])
    idx_2 = np.sort(idx_rand[-n_2:])
    return idx_1, idx_2


def _toy_split(n: int, c: int = 3) -> Split:
    rng = np.random.default_rng(n)
    t = (rng.random((n, c)) < 0.5).astype(np.uint8)
    return Split(targets=t, ids=[f"img{i}" for i in range(n)], features=rng.standard_normal((n, 4)))


@pytest.mark.parametrize("name", ["scene", "yeast", "emotions"])
def test_split_matches_cole_et_al(name):
    tv = load_dataset(name).trainval
    train, val = split_train_val(tv)  # defaults: 0.2, seed 1200
    ref_train, ref_val = _cole_generate_split(len(tv), 0.2, np.random.RandomState(1200))
    assert np.array_equal(train.index, ref_train) and np.array_equal(val.index, ref_val)
    assert len(val) == int(np.round(0.2 * len(tv)))
    assert np.all(np.diff(train.index) > 0) and np.all(np.diff(val.index) > 0)  # sorted
    assert not set(train.index) & set(val.index)
    assert np.array_equal(np.sort(np.r_[train.index, val.index]), np.arange(len(tv)))
    # the rows really are the indexed rows
    assert np.array_equal(val.targets, tv.targets[ref_val])
    assert np.array_equal(train.features, tv.features[ref_train])
    assert val.ids == [tv.ids[i] for i in ref_val]


@pytest.mark.parametrize("n, frac, seed", [(7, 0.2, 1200), (10, 0.25, 3), (101, 0.5, 0), (1000, 0.1, 42)])
def test_split_matches_cole_on_toy_sizes(n, frac, seed):
    tv = _toy_split(n)
    train, val = split_train_val(tv, frac, seed)
    ref_train, ref_val = _cole_generate_split(n, frac, np.random.RandomState(seed))
    assert np.array_equal(train.index, ref_train) and np.array_equal(val.index, ref_val)
    assert len(train) + len(val) == n


def test_split_is_deterministic_and_seeded():
    tv = _toy_split(200)
    a_train, a_val = split_train_val(tv, 0.2, 5)
    b_train, b_val = split_train_val(tv, 0.2, 5)
    assert np.array_equal(a_val.index, b_val.index) and np.array_equal(a_train.index, b_train.index)
    _, c_val = split_train_val(tv, 0.2, 6)
    assert not np.array_equal(a_val.index, c_val.index)


def test_split_refuses_degenerate_requests():
    with pytest.raises(DataError, match="cannot split 1 training rows"):
        split_train_val(_toy_split(1))
    with pytest.raises(DataError, match="cannot split 2 training rows"):
        split_train_val(_toy_split(2), 0.2)
    for frac in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(MlrkitError, match="val_fraction"):
            split_train_val(_toy_split(50), frac)


# --------------------------------------------------------------------------- dataset validation


def test_dataset_validation_errors():
    good = _toy_split(5)
    empty = Split(targets=np.zeros((0, 3), np.uint8), ids=[])
    with pytest.raises(DataError, match="the test split is empty"):
        MultiLabelDataset("toy", ["a", "b", "c"], good, empty)
    with pytest.raises(DataError, match="the training split is empty"):
        MultiLabelDataset("toy", ["a", "b", "c"], empty, good)
    with pytest.raises(DataError, match="has no classes"):
        MultiLabelDataset("toy", [], good, good)
    with pytest.raises(DataError, match=r"duplicate class names: \['b'\]"):
        MultiLabelDataset("toy", ["a", "b", "b"], good, good)
    with pytest.raises(DataError, match="3 classes, names list 2"):
        MultiLabelDataset("toy", ["a", "b"], good, good)
    MultiLabelDataset("toy", ["a", "b", "c"], good, good)  # accepted


def test_split_validation_errors():
    t = np.zeros((3, 2), np.uint8)
    with pytest.raises(DataError, match="3 label rows but 2 ids"):
        Split(targets=t, ids=["a", "b"])
    with pytest.raises(DataError, match=re.escape("row 1, column 0")):
        Split(targets=t, ids=list("abc"), features=np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(DataError, match="features must be"):
        Split(targets=t, ids=list("abc"), features=np.zeros((2, 4)))
    with pytest.raises(DataError, match="known mask"):
        Split(targets=t, ids=list("abc"), known=np.ones((3, 3), bool))
    with pytest.raises(DataError, match="only 0/1"):
        Split(targets=np.full((3, 2), 2), ids=list("abc"))
