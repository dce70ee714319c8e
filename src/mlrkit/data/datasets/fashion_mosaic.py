"""``fashion-mosaic``: the built-in constructed benchmark of real Fashion-MNIST photos tiled 2x2.

The shipped ``mlrkit/builtin/fashion_mosaic.npz`` holds the tile pools and the mosaic
compositions (see :mod:`mlrkit.data.fashion_mosaic` and ``docs/fashion-mosaic.md``); the
mosaics are materialised once, when the dataset is built. Each split carries
``extras["tile_labels"]`` (int [N, k*k], class per cell, row-major) and ``extras["grid"]`` (k),
the true object locations used by CAM pointing-game checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrkit.data.base import DATASETS, ArrayImageSource, MultiLabelDataset, Split
from mlrkit.data.datasets.builtin import builtin_path
from mlrkit.data.fashion_mosaic import load_subset, make_mosaics, tile_labels, union_targets
from mlrkit.errors import DataError, MlrkitError

NAME = "fashion-mosaic"
FILENAME = "fashion_mosaic.npz"
DESCRIPTION = (
    "built-in, real photos (Fashion-MNIST) tiled 2x2, labels = union of tiles; constructed benchmark"
)
OPTIONS = ("limit_train", "limit_test")


def _limit(value: object, key: str, available: int, path: Path) -> int:
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MlrkitError(f"dataset {NAME!r}: option {key} must be an integer, got {value!r}")
    if not 1 <= value <= available:
        raise DataError(
            f"dataset {NAME!r}: {key}={value} is outside 1..{available} ({available} mosaics in {path})"
        )
    return int(value)


def _split(sub: dict, part: str, limit: int, grid: int, num_classes: int) -> Split:
    comp = sub[f"{part}_compositions"][:limit]
    cells = tile_labels(sub[f"{part}_tile_labels"], comp)
    mosaics = make_mosaics(sub[f"{part}_tiles"], comp, grid)
    return Split(
        targets=union_targets(cells, num_classes),
        ids=[f"{part}/{i:06d}" for i in range(len(comp))],
        images=ArrayImageSource(mosaics, name=f"{NAME}/{part}"),
        extras={"tile_labels": cells, "grid": grid},
    )


@DATASETS.register(NAME, DESCRIPTION)
def build(root: Path | None = None, **options) -> MultiLabelDataset:
    """The fashion-mosaic dataset from the shipped file (``root`` is unused: the data are built in).

    Options: ``limit_train`` / ``limit_test`` (int) keep the first N mosaics of each split,
    e.g. for fast tests.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MlrkitError(f"dataset {NAME!r}: unknown options {unknown} (known: {list(OPTIONS)})")
    path = builtin_path(FILENAME)
    sub = load_subset(path)
    grid = sub["build_params"]["grid"]
    names = sub["class_names"]
    n_train = _limit(options.get("limit_train"), "limit_train", len(sub["train_compositions"]), path)
    n_test = _limit(options.get("limit_test"), "limit_test", len(sub["test_compositions"]), path)
    return MultiLabelDataset(
        name=NAME,
        class_names=names,
        trainval=_split(sub, "train", n_train, grid, len(names)),
        test=_split(sub, "test", n_test, grid, len(names)),
        description=DESCRIPTION,
        extras={
            "build_params": sub["build_params"],
            "source_sha256": sub["source_sha256"],
            "file": str(path),
        },
    )
