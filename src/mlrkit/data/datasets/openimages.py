"""Open Images (``openimages``) from the human-verified image-level labels (V4 to V7).

Ground truth is *incomplete*: only verified (image, class) pairs are known. A row
``ImageID,Source,LabelName,Confidence`` with ``Confidence`` 1 is a verified positive, 0 a
verified (explicit) negative. So ``targets`` is 1 for verified positives, ``known`` is True for
every pair with a verified row (explicit negatives are known 0s) and False elsewhere; training
protocols and evaluation only use known entries. If one pair has both a positive and a negative
row (two verification sources disagreeing), the positive wins.

Files (found in ``--root`` or ``--root/annotations``, newest release first; each can be given
explicitly with the options ``train_labels``, ``test_labels``, ``class_descriptions``,
``trainable_classes``):

* labels: ``oidv7-train-annotations-human-imagelabels.csv`` / ``oidv6-…`` / ``train-annotations-
  human-imagelabels.csv`` and the ``test`` (or, with ``test_split="validation"``, ``val``/
  ``validation``) counterparts;
* class names: ``oidv7-class-descriptions.csv`` (with a ``LabelName,DisplayName`` header) or
  ``oidv6-class-descriptions.csv`` / ``class-descriptions.csv`` (no header); both are accepted;
* optional trainable classes (one ``LabelName`` per line): ``oidv7-classes-trainable.txt`` /
  ``oidv6-…`` / ``classes-trainable.txt``. With it, the classes are exactly that list (in its
  order) and rows of other classes are skipped; without it, every class with at least one
  verified positive in the training file, in order of first appearance.

Images: ``train/<ImageID>.jpg`` and ``test/<ImageID>.jpg`` (or ``validation/``). A split holds
the images with at least one verified row of a selected class, in order of first appearance.
Display names shared by several selected classes get their LabelName appended
(``"<DisplayName> (<LabelName>)"``), so that class names stay unique.

Parsing streams the CSV with the ``csv`` module into flat integer buffers (no per-row objects
are kept), so multi-GB files are feasible; the dense ``targets`` and ``known`` matrices need
N x C bytes each, so for the full training set pick a modest class list.
"""

from __future__ import annotations

import csv
from array import array
from pathlib import Path
from typing import TextIO

import numpy as np

from mlrkit.data.base import DATASETS, MultiLabelDataset, PathImageSource, Split, dataset_options, require_root
from mlrkit.errors import DataError

HINT = (
    "Download from https://storage.googleapis.com/openimages/web/download_v7.html the human-verified "
    "image-level labels (oidv7-train-annotations-human-imagelabels.csv and "
    "oidv7-test-annotations-human-imagelabels.csv or oidv7-val-annotations-human-imagelabels.csv), "
    "the class names (oidv7-class-descriptions.csv), optionally oidv7-classes-trainable.txt, and the "
    "images into train/<ImageID>.jpg and test/<ImageID>.jpg (or validation/); put them in one directory "
    "and pass --root <that dir> (or set $MLRKIT_DATA so that $MLRKIT_DATA/openimages is it)."
)

DESCRIPTION = "Open Images V4-V7 human-verified image-level labels; unverified pairs are unknown (known mask)"

TEST_SPLITS = ("test", "validation")
OPTIONS: dict = {
    "test_split": "test",
    "train_labels": None,
    "test_labels": None,
    "class_descriptions": None,
    "trainable_classes": None,
}

_CANDIDATES = {
    "train": (
        "oidv7-train-annotations-human-imagelabels.csv",
        "oidv6-train-annotations-human-imagelabels.csv",
        "train-annotations-human-imagelabels.csv",
    ),
    "test": (
        "oidv7-test-annotations-human-imagelabels.csv",
        "test-annotations-human-imagelabels.csv",
    ),
    "validation": (
        "oidv7-val-annotations-human-imagelabels.csv",
        "validation-annotations-human-imagelabels.csv",
    ),
    "classes": ("oidv7-class-descriptions.csv", "oidv6-class-descriptions.csv", "class-descriptions.csv"),
    "trainable": ("oidv7-classes-trainable.txt", "oidv6-classes-trainable.txt", "classes-trainable.txt"),
}


def _find(base: Path, role: str, explicit: str | Path | None, required: bool) -> Path | None:
    if explicit is not None:
        p = Path(explicit)
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise DataError(f"openimages: {role} file not found: {p}")
        return p
    for d in (base, base / "annotations"):
        for name in _CANDIDATES[role]:
            if (d / name).is_file():
                return d / name
    if required:
        raise DataError(f"{base}: no {role} file found (looked for {', '.join(_CANDIDATES[role])}). {HINT}")
    return None


def _open_csv(path: Path) -> TextIO:
    return open(path, encoding="utf-8", newline="")


def read_class_descriptions(path: Path) -> dict[str, str]:
    """``LabelName -> DisplayName``; a ``LabelName,DisplayName`` header line is allowed (V7)."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        try:
            for row in reader:
                lineno = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if lineno == 1 and [c.strip() for c in row] == ["LabelName", "DisplayName"]:
                    continue
                if len(row) != 2 or not row[0].strip():
                    raise DataError(f"{path}:{lineno}: expected 'LabelName,DisplayName', got {','.join(row)!r}")
                mid = row[0].strip()
                if mid in out:
                    raise DataError(
                        f"{path}:{lineno}: LabelName {mid!r} appears twice (first on line {first_line[mid]})"
                    )
                out[mid] = row[1].strip()
                first_line[mid] = lineno
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not out:
        raise DataError(f"{path}: no class descriptions")
    return out


def read_trainable(path: Path, descriptions: dict[str, str], desc_path: Path) -> list[str]:
    """LabelNames of a trainable-classes list (one per line), each described in ``desc_path``."""
    mids: list[str] = []
    first_line: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for lineno, line in enumerate(lines, start=1):
        mid = line.strip()
        if not mid:
            continue
        if mid in first_line:
            raise DataError(f"{path}:{lineno}: class {mid!r} is listed twice (first on line {first_line[mid]})")
        if mid not in descriptions:
            raise DataError(f"{path}:{lineno}: class {mid!r} has no entry in {desc_path}")
        first_line[mid] = lineno
        mids.append(mid)
    if not mids:
        raise DataError(f"{path}: the trainable-classes list is empty")
    return mids


class _Labels:
    """Streamed rows of one labels CSV: image index, class index, confidence, as flat buffers."""

    def __init__(self) -> None:
        self.image_ids: list[str] = []
        self.image_index: dict[str, int] = {}
        self.rows_image = array("i")  # C int (int32): enough for any Open Images split
        self.rows_class = array("i")
        self.rows_conf = array("b")


def read_labels(
    path: Path,
    class_index: dict[str, int] | None,
    new_classes: dict[str, int],
    first_line: dict[str, tuple[Path, int]],
    other_split: dict[str, int] | None = None,
) -> _Labels:
    """Stream a human-verified labels CSV.

    With ``class_index`` set, rows of other classes are skipped; otherwise every LabelName gets
    an index in ``new_classes`` (first appearance), with its first line kept in ``first_line``.
    ``other_split``: image ids of the other split; an image in both is an error.
    """
    out = _Labels()
    image_index = out.image_index
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected a header ImageID,Source,LabelName,Confidence)")
            header = [h.strip() for h in header]
            missing = [h for h in ("ImageID", "LabelName", "Confidence") if h not in header]
            if missing:
                raise DataError(f"{path}:1: header {header} lacks column(s) {missing}")
            ci, cl, cc = header.index("ImageID"), header.index("LabelName"), header.index("Confidence")
            width = len(header)
            for row in reader:
                if not row:
                    continue
                if len(row) != width:
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {width}")
                mid = row[cl]
                if class_index is not None:
                    j = class_index.get(mid)
                    if j is None:
                        continue
                else:
                    j = new_classes.get(mid)
                    if j is None:
                        j = new_classes[mid] = len(new_classes)
                        first_line[mid] = (path, reader.line_num)
                conf = row[cc].strip()
                if conf in ("1", "1.0"):
                    c = 1
                elif conf in ("0", "0.0"):
                    c = 0
                else:
                    raise DataError(f"{path}:{reader.line_num}: Confidence must be 0 or 1, got {conf!r}")
                image_id = row[ci]
                i = image_index.get(image_id)
                if i is None:
                    if not image_id:
                        raise DataError(f"{path}:{reader.line_num}: empty ImageID")
                    if other_split is not None and image_id in other_split:
                        raise DataError(f"{path}:{reader.line_num}: image {image_id!r} is also in the training labels")
                    i = image_index[image_id] = len(out.image_ids)
                    out.image_ids.append(image_id)
                out.rows_image.append(i)
                out.rows_class.append(j)
                out.rows_conf.append(c)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not out.image_ids:
        raise DataError(f"{path}: no verified labels for the selected classes")
    return out


def _matrices(lab: _Labels, col_map: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense targets/known for the images that have a row of a selected class (rows kept)."""
    img = np.frombuffer(lab.rows_image, dtype=np.intc).astype(np.int64)
    cls = col_map[np.frombuffer(lab.rows_class, dtype=np.intc)]
    conf = np.frombuffer(lab.rows_conf, dtype=np.int8)
    sel = cls >= 0
    img, cls, conf = img[sel], cls[sel], conf[sel]
    keep = np.unique(img)
    row_of = np.full(len(lab.image_ids), -1, dtype=np.int64)
    row_of[keep] = np.arange(len(keep))
    r = row_of[img]
    targets = np.zeros((len(keep), n_classes), dtype=np.uint8)
    known = np.zeros((len(keep), n_classes), dtype=bool)
    known[r, cls] = True
    pos = conf == 1
    targets[r[pos], cls[pos]] = 1
    return targets, known, keep


def _unique_names(mids: list[str], descriptions: dict[str, str]) -> list[str]:
    names = [descriptions[m] for m in mids]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({m})" if counts[n] > 1 else n for n, m in zip(names, mids)]


@DATASETS.register("openimages", DESCRIPTION)
def build_openimages(root: Path | None = None, **options) -> MultiLabelDataset:
    """Open Images from human-verified label CSVs; see the module docstring for files, options, mapping."""
    opts = dataset_options("openimages", options, OPTIONS)
    test_split = opts["test_split"]
    train_labels, test_labels = opts["train_labels"], opts["test_labels"]
    class_descriptions, trainable_classes = opts["class_descriptions"], opts["trainable_classes"]
    if test_split not in TEST_SPLITS:
        raise DataError(f"openimages: test_split must be one of {list(TEST_SPLITS)}, got {test_split!r}")
    base = require_root("openimages", root, HINT)
    train_csv = _find(base, "train", train_labels, True)
    test_csv = _find(base, test_split, test_labels, True)
    desc_csv = _find(base, "classes", class_descriptions, True)
    trainable_txt = _find(base, "trainable", trainable_classes, False)
    assert train_csv is not None and test_csv is not None and desc_csv is not None
    image_dirs = {"train": base / "train", "test": base / test_split}
    for d in image_dirs.values():
        if not d.is_dir():
            raise DataError(f"{base}: image directory {d.name}/ not found. {HINT}")
    descriptions = read_class_descriptions(desc_csv)

    first_line: dict[str, tuple[Path, int]] = {}
    if trainable_txt is not None:
        mids = read_trainable(trainable_txt, descriptions, desc_csv)
        index = {m: j for j, m in enumerate(mids)}
        train = read_labels(train_csv, index, {}, first_line)
        col_map = np.arange(len(mids))
    else:
        seen: dict[str, int] = {}
        train = read_labels(train_csv, None, seen, first_line)
        has_pos = np.zeros(len(seen), dtype=bool)
        conf = np.frombuffer(train.rows_conf, dtype=np.int8)
        has_pos[np.frombuffer(train.rows_class, dtype=np.intc)[conf == 1]] = True
        order = list(seen)  # first appearance
        mids = [m for m in order if has_pos[seen[m]]]
        if not mids:
            raise DataError(f"{train_csv}: no verified positive label at all")
        for m in mids:
            if m not in descriptions:
                path, line = first_line[m]
                raise DataError(f"{path}:{line}: LabelName {m!r} has no entry in {desc_csv}")
        index = {m: j for j, m in enumerate(mids)}
        col_map = np.array([index.get(m, -1) for m in order], dtype=np.int64)

    test = read_labels(test_csv, index, {}, {}, other_split=train.image_index)
    names = _unique_names(mids, descriptions)

    def split(lab: _Labels, cmap: np.ndarray, part: str) -> Split:
        targets, known, keep = _matrices(lab, cmap, len(mids))
        ids = [lab.image_ids[i] for i in keep]
        return Split(
            targets=targets,
            ids=ids,
            images=PathImageSource([image_dirs[part] / f"{i}.jpg" for i in ids]),
            known=known,
        )

    trainval = split(train, col_map, "train")
    del train
    return MultiLabelDataset(
        name="openimages",
        report_groups=5,  # Kim et al. report 5 groups by number of training annotations
        class_names=names,
        trainval=trainval,
        test=split(test, np.arange(len(mids)), "test"),
        description=DESCRIPTION,
        extras={
            "root": str(base),
            "files": [str(p) for p in (train_csv, test_csv, desc_csv, trainable_txt) if p is not None],
            "label_names": mids,
        },
    )
