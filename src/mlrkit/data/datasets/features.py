"""``features:<file.npz>``: precomputed features with ``X_train, Y_train, X_test, Y_test``.

Optional ``class_names`` (array of strings). This is the format of the Mulan benchmarks in
``shared/data`` and of Cole et al.'s ``linear_fixed_features`` mode.

Real incomplete labels:

* ``observed_train`` (int8 ``[N_train, C]`` in {+1, 0, -1}): the training set's own annotations.
  Without ``Y_train`` they *are* the training ground truth (known = non-zero entries). With
  ``Y_train`` they must agree with it and are what the ``observed`` protocol trains on, while the
  simulating protocols and validation use the complete ``Y_train``.
* ``known_test`` (bool ``[N_test, C]``): the entries of ``Y_test`` that are real ground truth;
  test metrics score only those.

How the features were made: ``feature_source`` (a 0-d string array holding a JSON object; written by
``mlrkit extract-features --out``): the encoder, its weights' hash, the transform, any L2
normalisation (:mod:`mlrkit.engine.feature_source`). It ends up in ``dataset.extras["feature_source"]``
and in the checkpoint of every run on the file, so those runs can predict from images too.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mlrkit.data.base import DATASETS, MultiLabelDataset, Split
from mlrkit.errors import DataError

REQUIRED = ("X_train", "X_test", "Y_test")
OPTIONAL = ("Y_train", "observed_train", "known_test")
SOURCE = "feature_source"
#: feature_source: the format this version writes and reads, the encoder kinds, the fields that identify
#: the encoder (they must match when features are made again; mlrkit.engine.feature_source)
FORMAT = 1
KINDS = ("vl", "backbone")
IDENTITY = ("encoder_key", "transform")


def open_npz(path: Path, wanted: str = "") -> np.lib.npyio.NpzFile:
    """Open an ``.npz`` archive without pickles; an unreadable file or a lone array is a DataError naming it
    (``wanted`` says what the archive should hold)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not an .npz archive{' ' + wanted if wanted else ''}")
    return z


def load_features_npz(path: str | Path, name: str | None = None, description: str = "") -> MultiLabelDataset:
    """Read and validate a features file; every problem names the file and the array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file not found: {path}")
    z = open_npz(path, "with X_train, Y_train, X_test, Y_test")
    with z:
        missing = [k for k in REQUIRED if k not in z.files]
        if "Y_train" not in z.files and "observed_train" not in z.files:
            missing.insert(1, "Y_train (or observed_train)")
        if missing:
            raise DataError(f"{path}: missing arrays {missing} (needs X_train, Y_train and/or observed_train, "
                            "X_test, Y_test; optional known_test, class_names)")
        try:
            arrays = {k: z[k] for k in (*REQUIRED, *OPTIONAL) if k in z.files}
            names = [str(s) for s in z["class_names"]] if "class_names" in z.files else None
            source = str(z[SOURCE]) if SOURCE in z.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot read arrays ({e}); class_names must be a string array, "
                            "not an object array") from None
    obs = arrays.get("observed_train")
    y_given = "Y_train" in arrays
    if obs is not None:
        obs = _check_observed_train(path, obs, arrays["X_train"], arrays.get("Y_train"))
        if "Y_train" not in arrays:
            arrays["Y_train"] = (obs == 1).astype(np.uint8)
    for part in ("train", "test"):
        x, y = arrays[f"X_{part}"], arrays[f"Y_{part}"]
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise DataError(f"{path}: X_{part} {x.shape} and Y_{part} {y.shape} must be [N, D] and [N, C]")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{path}: X_{part} must be numeric, got {x.dtype}")
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{path}: X_{part} has {int(bad.sum())} NaN/inf values (first at row {r}, column {c})")
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"{path}: Y_{part} must hold only 0/1, found {np.unique(y)[:6].tolist()}")
    if arrays["X_train"].shape[1] != arrays["X_test"].shape[1]:
        d_train, d_test = arrays["X_train"].shape[1], arrays["X_test"].shape[1]
        raise DataError(f"{path}: X_train has {d_train} features, X_test {d_test}")
    c = arrays["Y_train"].shape[1]
    if arrays["Y_test"].shape[1] != c:
        raise DataError(f"{path}: Y_train has {c} classes, Y_test {arrays['Y_test'].shape[1]}")
    known_test = arrays.get("known_test")
    if known_test is not None:
        known_test = _check_known_test(path, known_test, arrays["Y_test"].shape)
    if names is None:
        names = [f"class{j}" for j in range(c)]
    elif len(names) != c:
        raise DataError(f"{path}: class_names has {len(names)} entries, labels have {c} classes")

    train = Split(
        targets=arrays["Y_train"].astype(np.uint8),
        ids=[f"train/{i}" for i in range(len(arrays["Y_train"]))],
        features=arrays["X_train"].astype(np.float32),
        known=None if obs is None or y_given else _mask_or_none(obs != 0),
        annotations=obs if obs is not None and y_given else None,
    )
    test = Split(
        targets=arrays["Y_test"].astype(np.uint8),
        ids=[f"test/{i}" for i in range(len(arrays["Y_test"]))],
        features=arrays["X_test"].astype(np.float32),
        known=None if known_test is None else _mask_or_none(known_test),
    )
    extras = {} if source is None else {SOURCE: _read_source(path, source, arrays["X_train"].shape[1])}
    return MultiLabelDataset(
        name=name or f"features:{path}",
        class_names=names,
        trainval=train,
        test=test,
        description=description,
        extras=extras,
    )


def _read_source(path: Path, text: str, dim: int) -> dict:
    """The file's ``feature_source`` JSON object, checked against its features."""
    import json

    try:
        source = json.loads(text)
    except ValueError as e:
        raise DataError(f"{path}: {SOURCE} is not valid JSON ({e})") from None
    source = check_source(source, str(path))
    if source.get("dim") is not None and int(source["dim"]) != dim:
        raise DataError(f"{path}: {SOURCE} says the encoder makes {source['dim']} features per row, X_train has {dim}")
    return source


def check_source(source, where: str) -> dict:
    """``source`` as read from ``where`` (a features file, a checkpoint), or a DataError saying what is wrong."""
    if not isinstance(source, dict):
        raise DataError(f"{where}: {SOURCE} must be a JSON object, got {type(source).__name__}")
    fmt = source.get("format")
    if fmt != FORMAT:
        raise DataError(f"{where}: {SOURCE} format {fmt!r} is not one this mlrkit reads ({FORMAT}); re-make the "
                        "file with this version's `mlrkit extract-features`")
    kind = source.get("kind")
    if kind not in KINDS:
        raise DataError(f"{where}: {SOURCE} kind {kind!r} is none of {list(KINDS)}")
    need = ["seed", "image_size", "l2_normalize", *IDENTITY] + (["vl_model"] if kind == "vl" else ["model"])
    missing = [k for k in need if k not in source]
    if missing:
        raise DataError(f"{where}: {SOURCE} lacks {missing}")
    return dict(source)


def _mask_or_none(mask: np.ndarray) -> np.ndarray | None:
    return None if mask.all() else mask


def _check_observed_train(path: Path, obs: np.ndarray, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    if obs.ndim != 2 or len(obs) != len(x):
        raise DataError(f"{path}: observed_train {obs.shape} must be [N_train={len(x)}, C]")
    if not np.issubdtype(obs.dtype, np.number) and obs.dtype != bool:
        raise DataError(f"{path}: observed_train must be integer (int8) in {{-1, 0, +1}}, got {obs.dtype}")
    bad = ~np.isin(obs, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: observed_train must hold only -1/0/+1; row {r}, class {c} is {obs[r, c]!r} "
                        f"({int(bad.sum())} such entries)")
    obs = obs.astype(np.int8)
    if y is not None:
        if y.shape != obs.shape:
            raise DataError(f"{path}: observed_train {obs.shape} and Y_train {y.shape} differ in shape")
        wrong = ((obs == 1) & (y == 0)) | ((obs == -1) & (y == 1))
        if wrong.any():
            r, c = np.argwhere(wrong)[0]
            raise DataError(f"{path}: observed_train contradicts Y_train at {int(wrong.sum())} entries "
                            f"(first: row {r}, class {c}: observed {int(obs[r, c])}, Y_train {int(y[r, c])})")
    return obs


def _check_known_test(path: Path, known: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if known.shape != shape:
        raise DataError(f"{path}: known_test has shape {known.shape}, Y_test has {shape}")
    if known.dtype != bool and not (np.issubdtype(known.dtype, np.integer) and np.isin(known, (0, 1)).all()):
        raise DataError(f"{path}: known_test must be boolean (or 0/1), got {known.dtype}")
    known = known.astype(bool)
    if not known.any():
        raise DataError(f"{path}: known_test marks no entry as known: nothing in the test set can be scored")
    return known


def save_partial_features(ds: MultiLabelDataset, observed_train: np.ndarray, path: str | Path) -> Path:
    """Write ``ds`` as a features file whose training labels are ``observed_train`` alone (no ``Y_train``):
    what a user with real incomplete labels has. The test split keeps its ground truth (and mask)."""
    import json

    from mlrkit.utils import atomic_write

    if ds.trainval.features is None or ds.test.features is None:
        raise DataError(f"dataset {ds.name!r} has no features to export (use a features or built-in dataset)")
    arrays = {"X_train": ds.trainval.features, "observed_train": np.asarray(observed_train, dtype=np.int8),
              "X_test": ds.test.features, "Y_test": ds.test.targets, "class_names": np.array(ds.class_names)}
    if ds.test.known is not None:
        arrays["known_test"] = ds.test.known
    if SOURCE in ds.extras:  # the features still come from the same encoder
        arrays[SOURCE] = np.array(json.dumps(ds.extras[SOURCE]))
    path = Path(path)
    if path.suffix != ".npz":
        raise DataError(f"--export-features {path}: the file name must end in .npz")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


@DATASETS.register("features", "features:<file.npz> - precomputed X_train, Y_train, X_test, Y_test (+class_names)")
def features_dataset(path: str | None = None, root: Path | None = None) -> MultiLabelDataset:
    if not path:
        raise DataError("dataset 'features' needs a file: --dataset features:PATH.npz")
    return load_features_npz(path)
