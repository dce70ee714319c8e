"""``manifest:<file>``: the user's own images and labels, as CSV or JSON lines.

* CSV (``.csv``): a header with the columns ``image``, ``labels``, ``split`` (others are ignored);
  ``labels`` holds the image's positive labels separated by ``|`` (empty: no positive label).
* JSON lines (``.jsonl``, ``.ndjson``, ``.json``; or any file whose first character is ``{``):
  one object per line, ``{"image": "a.jpg", "labels": ["cat", "dog"], "split": "train"}``.

``split`` is ``train`` (the official training set; validation is carved out of it) or ``test``.
Relative image paths resolve against the manifest's directory. Classes are the sorted union of
all labels, or, with the option ``classes=<file>`` (one class name per line), that list in its
order; then a label outside it is an error naming the file, line and value. Every label listed
for an image is a known positive and every other class a known negative (complete ground truth).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mlrkit.data.base import DATASETS, MultiLabelDataset, PathImageSource, Split, dataset_options
from mlrkit.errors import DataError

DESCRIPTION = "manifest:<file.csv|file.jsonl> - your own images: columns image, labels (a|b), split (train/test)"

SPLITS = ("train", "test")
COLUMNS = ("image", "labels", "split")

# one parsed manifest row: (line number, image path as written, labels, split)
Row = tuple[int, str, list[str], str]


def read_class_list(path: Path) -> list[str]:
    """Class names, one per line (blank lines ignored); duplicates are errors."""
    if not path.is_file():
        raise DataError(f"class list not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    names: list[str] = []
    first: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if name in first:
            raise DataError(f"{path}:{lineno}: class {name!r} is listed twice (first on line {first[name]})")
        first[name] = lineno
        names.append(name)
    if not names:
        raise DataError(f"{path}: the class list is empty")
    return names


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return True
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return False
    return text.lstrip().startswith("{")


def _check_label(path: Path, lineno: int, label: str, raw: str) -> str:
    label = label.strip()
    if not label:
        raise DataError(f"{path}:{lineno}: empty label in {raw!r}")
    return label


def read_csv_rows(path: Path, text: str) -> list[Row]:
    """Rows of a CSV manifest (header ``image,labels,split``)."""
    reader = csv.reader(text.splitlines())
    rows: list[Row] = []
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty manifest (expected a header line 'image,labels,split')")
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}:{reader.line_num}: header {header} lacks column(s) {missing}")
        ii, il, isp = (header.index(c) for c in COLUMNS)
        for row in reader:
            lineno = reader.line_num
            if not row or not any(f.strip() for f in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            raw = row[il]
            labels = [_check_label(path, lineno, x, raw) for x in raw.split("|")] if raw.strip() else []
            rows.append((lineno, row[ii].strip(), labels, row[isp].strip()))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def read_jsonl_rows(path: Path, text: str) -> list[Row]:
    """Rows of a JSON-lines manifest."""
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}:{e.colno}: malformed JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected an object with keys {list(COLUMNS)}, got {line.strip()[:80]!r}")
        missing = [c for c in COLUMNS if c not in obj]
        if missing:
            raise DataError(f"{path}:{lineno}: missing key(s) {missing}")
        image, labels, split = obj["image"], obj["labels"], obj["split"]
        if not isinstance(image, str):
            raise DataError(f"{path}:{lineno}: 'image' must be a string, got {image!r}")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{path}:{lineno}: 'labels' must be a list of strings, got {labels!r}")
        if not isinstance(split, str):
            raise DataError(f"{path}:{lineno}: 'split' must be a string, got {split!r}")
        labels = [_check_label(path, lineno, x, json.dumps(obj["labels"])) for x in labels]
        rows.append((lineno, image.strip(), labels, split.strip()))
    return rows


def load_manifest(path: str | Path, classes: str | Path | None = None) -> MultiLabelDataset:
    """Read and validate a manifest; every problem names the file, the line and the value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    rows = read_jsonl_rows(path, text) if _is_jsonl(path, text) else read_csv_rows(path, text)
    if not rows:
        raise DataError(f"{path}: the manifest has no images")

    class_file = None if classes is None else Path(classes)
    if class_file is not None:
        names = read_class_list(class_file)
    else:
        names = sorted({label for _, _, labels, _ in rows for label in labels})
        if not names:
            raise DataError(f"{path}: no image has any label, so there are no classes")
    col = {n: j for j, n in enumerate(names)}

    base = path.parent
    first: dict[Path, int] = {}
    parts: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for lineno, image, labels, split in rows:
        if split not in SPLITS:
            raise DataError(f"{path}:{lineno}: split must be 'train' or 'test', got {split!r}")
        if not image:
            raise DataError(f"{path}:{lineno}: empty image path")
        for label in labels:
            if label not in col:
                raise DataError(f"{path}:{lineno}: label {label!r} is not in the class list {class_file}")
        resolved = Path(image) if Path(image).is_absolute() else base / image
        key = Path(*resolved.parts)  # normalises separators, keeps '..' (no filesystem access)
        if key in first:
            raise DataError(f"{path}:{lineno}: image {image!r} appears twice (first on line {first[key]})")
        first[key] = lineno
        parts[split].append((lineno, image, labels, str(resolved)))

    def make(split: str) -> Split:
        part = parts[split]
        if not part:
            raise DataError(f"{path}: no image has split {split!r} (each of 'train' and 'test' needs images)")
        targets = np.zeros((len(part), len(names)), dtype=np.uint8)
        for i, (_, _, labels, _) in enumerate(part):
            targets[i, [col[x] for x in labels]] = 1
        return Split(
            targets=targets,
            ids=[p[1] for p in part],  # the image path as written in the manifest
            images=PathImageSource([p[3] for p in part]),
            extras={"manifest_line": np.array([p[0] for p in part])},
        )

    return MultiLabelDataset(
        name=f"manifest:{path}",
        class_names=names,
        trainval=make("train"),
        test=make("test"),
        description=f"images and labels listed in {path}",
        extras={"manifest": str(path), "classes_file": None if class_file is None else str(class_file)},
    )


@DATASETS.register("manifest", DESCRIPTION)
def build_manifest(path: str | None = None, root: Path | None = None, **options) -> MultiLabelDataset:
    """``manifest:<file>``; option ``classes`` (a class list file); ``root`` is not used."""
    classes = dataset_options("manifest", options, {"classes": None})["classes"]
    if not path:
        raise DataError("dataset 'manifest' needs a file: --dataset manifest:PATH.csv (or .jsonl)")
    return load_manifest(path, classes)
