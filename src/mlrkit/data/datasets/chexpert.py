"""CheXpert (``chexpert``): chest radiographs with 14 observations labelled 1 / 0 / -1 / blank.

Irvin et al. (AAAI 2019) label each training study from its report: ``1.0`` positive, ``0.0``
negative, ``-1.0`` *uncertain* and blank *unmentioned*. Unmentioned is unknown here (never a
negative). What uncertain means is the option ``uncertain``: ``unknown`` (U-Ignore, the default),
``positive`` (U-Ones) or ``negative`` (U-Zeros), the policies compared in the paper.

Layout (``--root``): the unpacked ``CheXpert-v1.0-small/`` (or full-size) directory holding
``train.csv``, ``valid.csv``, ``train/`` and ``valid/``. ``Path`` entries start with that
directory's name (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``) and are
resolved against ``--root``. Splits: ``train.csv`` is the official training set (validation is
carved out of it), ``valid.csv`` (234 studies, radiologists' consensus, complete 0/1) the test set.
Option ``frontal_only=true`` keeps frontal views only.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mlrkit.data.base import (
    DATASETS,
    MultiLabelDataset,
    PathImageSource,
    Split,
    dataset_options,
    require_root,
    three_state_matrices,
)
from mlrkit.data.datasets.manifest import UNCERTAIN, csv_rows, dense_values
from mlrkit.errors import DataError

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
HINT = ("Register and download CheXpert-v1.0-small.zip from https://stanfordmlgroup.github.io/competitions/"
        "chexpert/, unzip it and pass --root <.../CheXpert-v1.0-small> (the folder with train.csv, valid.csv).")
DESCRIPTION = "CheXpert chest X-rays, 14 observations; 1/0/-1(uncertain)/blank(unknown), option uncertain="


def _resolve(root: Path, rel: str) -> Path:
    parts = Path(rel).parts
    if parts and parts[0] == root.name:
        return root.joinpath(*parts[1:])
    return root / rel


def _read_csv(root: Path, path: Path, uncertain: str, frontal_only: bool) -> Split:
    if not path.is_file():
        raise DataError(f"CheXpert file not found: {path}. {HINT}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("Path", *OBSERVATIONS) if c not in header]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {missing}")
        obs_cols = [header.index(c) for c in OBSERVATIONS]
        ip = header.index("Path")
        iview = header.index("Frontal/Lateral") if "Frontal/Lateral" in header else None
        col = {name: j for j, name in enumerate(OBSERVATIONS)}
        ids, pos_rows, neg_rows = [], [], []
        for lineno, row in csv_rows(reader, path, len(header)):
            if frontal_only and iview is not None and row[iview].strip().lower() != "frontal":
                continue
            cells = [row[j] for j in obs_cols]
            pos, neg = dense_values(path, str(lineno), list(OBSERVATIONS), cells, (), uncertain)
            ids.append(row[ip].strip())
            pos_rows.append([col[x] for x in pos])
            neg_rows.append([col[x] for x in neg])
    if not ids:
        raise DataError(f"{path}: no study left to read")
    targets, known = three_state_matrices(pos_rows, neg_rows, len(OBSERVATIONS))
    return Split(targets=targets, ids=ids, known=known, images=PathImageSource([_resolve(root, i) for i in ids]))


@DATASETS.register("chexpert", DESCRIPTION)
def build_chexpert(root: Path | None = None, **options) -> MultiLabelDataset:
    """CheXpert from ``--root``; options ``uncertain`` (unknown|positive|negative), ``frontal_only``."""
    opts = dataset_options("chexpert", options, {"uncertain": "unknown", "frontal_only": False})
    if opts["uncertain"] not in UNCERTAIN:
        raise DataError(f"chexpert option uncertain must be one of {list(UNCERTAIN)}, got {opts['uncertain']!r}")
    root = require_root("chexpert", root, HINT)
    train = _read_csv(root, root / "train.csv", opts["uncertain"], opts["frontal_only"])
    test = _read_csv(root, root / "valid.csv", opts["uncertain"], opts["frontal_only"])
    return MultiLabelDataset(name="chexpert", class_names=list(OBSERVATIONS), trainval=train, test=test,
                             description=DESCRIPTION, extras={"uncertain": opts["uncertain"]})
