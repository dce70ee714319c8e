"""``features:<file.npz>``: precomputed features with ``X_train, Y_train, X_test, Y_test``.

Optional ``class_names`` (array of strings). This is the format of the Mulan benchmarks in
``shared/data`` and of Cole et al.'s ``linear_fixed_features`` mode.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mlrkit.data.base import DATASETS, MultiLabelDataset, Split
from mlrkit.errors import DataError

REQUIRED = ("X_train", "Y_train", "X_test", "Y_test")


def load_features_npz(path: str | Path, name: str | None = None, description: str = "") -> MultiLabelDataset:
    """Read and validate a features file; every problem names the file and the array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not an .npz archive with X_train, Y_train, X_test, Y_test")
    with z:
        missing = [k for k in REQUIRED if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing arrays {missing} (needs {list(REQUIRED)}, optional class_names)")
        try:
            arrays = {k: z[k] for k in REQUIRED}
            names = [str(s) for s in z["class_names"]] if "class_names" in z.files else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot read arrays ({e}); class_names must be a string array, "
                            "not an object array") from None
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
    if names is None:
        names = [f"class{j}" for j in range(c)]
    elif len(names) != c:
        raise DataError(f"{path}: class_names has {len(names)} entries, labels have {c} classes")

    def split(part: str) -> Split:
        n = len(arrays[f"Y_{part}"])
        return Split(
            targets=arrays[f"Y_{part}"].astype(np.uint8),
            ids=[f"{part}/{i}" for i in range(n)],
            features=arrays[f"X_{part}"].astype(np.float32),
        )

    return MultiLabelDataset(
        name=name or f"features:{path}",
        class_names=names,
        trainval=split("train"),
        test=split("test"),
        description=description,
    )


@DATASETS.register("features", "features:<file.npz> - precomputed X_train, Y_train, X_test, Y_test (+class_names)")
def features_dataset(path: str | None = None, root: Path | None = None) -> MultiLabelDataset:
    if not path:
        raise DataError("dataset 'features' needs a file: --dataset features:PATH.npz")
    return load_features_npz(path)
