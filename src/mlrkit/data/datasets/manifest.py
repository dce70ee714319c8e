"""``manifest:<file>``: the user's own images and labels, as CSV, JSON lines or a JSON array.

Three ways to write labels (one per file for CSV, one per row for JSON):

* **complete** - ``labels``: the image's positive labels; every other class is a known negative.
* **three-state** - ``positives`` and/or ``negatives``: known positives and known negatives; a class
  in neither is *unknown* (never silently a negative). A class in both is an error.
* **dense** (CSV only) - no ``labels``/``positives``/``negatives`` column: every column besides
  ``image`` and ``split`` is a class, with ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or
  empty (unknown), as CheXpert ships them; the option ``uncertain=unknown|positive|negative``
  (default ``unknown``) says what ``-1`` means.

Formats:

* CSV (``.csv``): a header with ``image``, ``split`` and the label column(s); list fields hold
  class names separated by ``|`` (empty: none). Other columns are ignored, except in the dense form.
* JSON lines (``.jsonl``, ``.ndjson``; or a ``.json`` file of one object per line):
  ``{"image": "a.jpg", "positives": ["cat"], "negatives": ["dog"], "split": "train"}`` or
  ``{"image": "a.jpg", "labels": ["cat", "dog"], "split": "train"}``.
* JSON array (``.json`` starting with ``[``): a list of the same objects (positions are "item k").

``split`` is ``train`` (the official training set; validation is carved out of it) or ``test``.
Relative image paths resolve against the manifest's directory. Classes are the sorted union of
all class names used, or, with the option ``classes=<file>`` (one class name per line), that list
in its order; then a name outside it is an error naming the file, line and value.
A manifest whose labels are all complete has complete ground truth (``known`` is None); otherwise
``known`` marks the known entries and evaluation scores only those.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.data.base import (
    DATASETS,
    MultiLabelDataset,
    PathImageSource,
    Split,
    dataset_options,
    resolve_in_root,
    three_state_matrices,
)
from mlrkit.errors import DataError

DESCRIPTION = ("manifest:<file.csv|.jsonl|.json> - your own images: image, split, and labels (complete) or "
               "positives/negatives (rest unknown) or one 1/0/-1/empty column per class")

SPLITS = ("train", "test")
LIST_KEYS = ("labels", "positives", "negatives")
UNCERTAIN = ("unknown", "positive", "negative")


@dataclass
class Row:
    """One parsed manifest row. ``negatives`` is None for a complete row (``labels``: rest negative)."""

    where: str  # "line 7" / "item 3": for messages
    lineno: int
    image: str
    positives: list[str]
    negatives: list[str] | None
    split: str

    @property
    def position(self) -> str:
        """'line 7' or 'item 3'."""
        return f"line {self.where}" if self.where.isdigit() else self.where


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


def _kind(path: Path, text: str) -> str:
    """'csv', 'jsonl' or 'json-array'."""
    head = text.lstrip()[:1]
    suffix = path.suffix.lower()
    if suffix == ".json" and head == "[":
        return "json-array"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    return "jsonl" if head == "{" else ("json-array" if head == "[" else "csv")


def _check_label(path: Path, where: str, label: str, raw: str) -> str:
    label = label.strip()
    if not label:
        raise DataError(f"{path}:{where}: empty label in {raw!r}")
    return label


def _split_field(path: Path, where: str, raw: str) -> list[str]:
    return [_check_label(path, where, x, raw) for x in raw.split("|")] if raw.strip() else []


def _check_row(path: Path, row: Row) -> Row:
    if row.negatives is not None:
        both = sorted(set(row.positives) & set(row.negatives))
        if both:
            raise DataError(f"{path}:{row.where}: class {both[0]!r} is listed as both positive and negative")
    for name in (*row.positives, *(row.negatives or ())):
        if ";" in name or "," in name:
            sep = ";" if ";" in name else ","
            raise DataError(f"{path}:{row.where}: label {name!r} contains {sep!r}; separate labels with '|'")
    return row


def csv_rows(reader, path: Path, n_fields: int):
    """(line number, fields) of the non-blank data rows of a CSV reader; a row with another number of
    fields than the header is an error naming the line."""
    for row in reader:
        lineno = reader.line_num
        if not row or not any(f.strip() for f in row):
            continue
        if len(row) != n_fields:
            raise DataError(f"{path}:{lineno}: {len(row)} fields, the header has {n_fields}")
        yield lineno, row


def read_csv_rows(path: Path, text: str, uncertain: str = "unknown") -> tuple[list[Row], list[str] | None]:
    """Rows of a CSV manifest, and the class columns of the dense form (None otherwise)."""
    reader = csv.reader(text.splitlines())
    rows: list[Row] = []
    dense: list[str] | None = None
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty manifest (expected a header line 'image,labels,split' "
                            "or 'image,positives,negatives,split')")
        header = [h.strip() for h in header]
        missing = [c for c in ("image", "split") if c not in header]
        if missing:
            raise DataError(f"{path}:{reader.line_num}: header {header} lacks column(s) {missing}")
        list_cols = [c for c in LIST_KEYS if c in header]
        if "labels" in list_cols and len(list_cols) > 1:
            raise DataError(f"{path}:{reader.line_num}: header has 'labels' and {list_cols[1:]}: use either "
                            "'labels' (complete labels) or 'positives'/'negatives' (the rest unknown)")
        ii, isp = header.index("image"), header.index("split")
        if not list_cols:
            dense = [h for j, h in enumerate(header) if j not in (ii, isp)]
            if not dense or any(not h for h in dense):
                raise DataError(f"{path}:{reader.line_num}: header {header} needs a 'labels' column, "
                                "'positives'/'negatives' columns, or one named column per class")
            if len(set(dense)) != len(dense):
                raise DataError(f"{path}:{reader.line_num}: a class column appears twice in {header}")
        for lineno, row in csv_rows(reader, path, len(header)):
            where = str(lineno)
            if dense is not None:
                pos, neg = dense_values(path, where, header, row, (ii, isp), uncertain)
                rows.append(_check_row(path, Row(where, lineno, row[ii].strip(), pos, neg, row[isp].strip())))
                continue
            fields = {c: _split_field(path, where, row[header.index(c)]) for c in list_cols}
            if "labels" in fields:
                pos, neg = fields["labels"], None
            else:
                pos, neg = fields.get("positives", []), fields.get("negatives", [])
            rows.append(_check_row(path, Row(where, lineno, row[ii].strip(), pos, neg, row[isp].strip())))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return rows, dense


def dense_values(path: Path, where: str, header: list[str], row: list[str], skip: tuple[int, int],
                  uncertain: str) -> tuple[list[str], list[str]]:
    """Positives and negatives (column names) of one dense row: 1 / 0 / -1 (uncertain) / empty (unknown).

    ``uncertain`` says what -1 means: ``unknown`` (ignored), ``positive`` or ``negative``
    (CheXpert's U-Ignore, U-Ones and U-Zeros). Other values are errors naming the column."""
    pos: list[str] = []
    neg: list[str] = []
    for j, (name, raw) in enumerate(zip(header, row)):
        if j in skip:
            continue
        v = raw.strip()
        if not v:
            continue
        try:
            x = float(v)
        except ValueError:
            x = float("nan")
        if x == 1:
            pos.append(name)
        elif x == 0:
            neg.append(name)
        elif x == -1:
            if uncertain == "positive":
                pos.append(name)
            elif uncertain == "negative":
                neg.append(name)
        else:
            raise DataError(f"{path}:{where}: column {name!r} has {v!r}; expected 1, 0, -1 (uncertain) or empty")
    return pos, neg


def _row_from_object(path: Path, where: str, lineno: int, obj) -> Row:
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{where}: expected an object with keys image, split and labels or "
                        f"positives/negatives, got {json.dumps(obj)[:80]!r}")
    missing = [c for c in ("image", "split") if c not in obj]
    keys = [k for k in LIST_KEYS if k in obj]
    if not keys:
        missing.append("labels (or positives/negatives)")
    if missing:
        raise DataError(f"{path}:{where}: missing key(s) {missing}")
    if "labels" in keys and len(keys) > 1:
        raise DataError(f"{path}:{where}: 'labels' together with {keys[1:]}: use either 'labels' (complete "
                        "labels) or 'positives'/'negatives' (the rest unknown)")
    image, split = obj["image"], obj["split"]
    if not isinstance(image, str):
        raise DataError(f"{path}:{where}: 'image' must be a string, got {image!r}")
    if not isinstance(split, str):
        raise DataError(f"{path}:{where}: 'split' must be a string, got {split!r}")
    lists: dict[str, list[str]] = {}
    for k in keys:
        v = obj[k]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DataError(f"{path}:{where}: {k!r} must be a list of strings, got {v!r}")
        lists[k] = [_check_label(path, where, x, json.dumps(v)) for x in v]
    if "labels" in lists:
        pos, neg = lists["labels"], None
    else:
        pos, neg = lists.get("positives", []), lists.get("negatives", [])
    return _check_row(path, Row(where, lineno, image.strip(), pos, neg, split.strip()))


def read_jsonl_rows(path: Path, text: str) -> list[Row]:
    """Rows of a JSON-lines manifest."""
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a .json file holds either one JSON array or one object per line)" if lineno == 1 else ""
            raise DataError(f"{path}:{lineno}:{e.colno}: malformed JSON ({e.msg}){hint}") from None
        rows.append(_row_from_object(path, str(lineno), lineno, obj))
    return rows


def read_json_array_rows(path: Path, text: str) -> list[Row]:
    """Rows of a ``.json`` manifest holding one array of objects."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg}); a .json manifest is one "
                        "array of objects (or use .jsonl, one object per line)") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: a .json manifest must be an array of objects (or use .jsonl)")
    return [_row_from_object(path, f"item {k}", k, obj) for k, obj in enumerate(items, start=1)]


def load_manifest(path: str | Path, classes: str | Path | None = None,
                  uncertain: str = "unknown", *, root: str | Path | None = None,
                  outside_root: bool = False) -> MultiLabelDataset:
    """Read and validate a manifest; every problem names the file, the line and the value.

    Image paths resolve inside ``root`` (default: the manifest's directory); absolute paths or ``..``
    leaving it are refused unless ``outside_root``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    if uncertain not in UNCERTAIN:
        raise DataError(f"manifest option uncertain must be one of {list(UNCERTAIN)}, got {uncertain!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    kind = _kind(path, text)
    dense: list[str] | None = None
    if kind == "json-array":
        rows = read_json_array_rows(path, text)
    elif kind == "jsonl":
        rows = read_jsonl_rows(path, text)
    else:
        rows, dense = read_csv_rows(path, text, uncertain)
    if not rows:
        raise DataError(f"{path}: the manifest has no images")

    class_file = None if classes is None else Path(classes)
    if class_file is not None:
        names = read_class_list(class_file)
        if dense is not None and sorted(dense) != sorted(names):
            extra = sorted(set(dense) - set(names))
            lacking = sorted(set(names) - set(dense))
            raise DataError(f"{path}: the class columns do not match {class_file}: "
                            f"not in the list {extra[:5]}, no column for {lacking[:5]}")
    elif dense is not None:
        names = list(dense)
    else:
        names = sorted({x for r in rows for x in (*r.positives, *(r.negatives or ()))})
        if not names:
            raise DataError(f"{path}: no image has any label, so there are no classes")
    col = {n: j for j, n in enumerate(names)}

    base = Path(root) if root is not None else path.parent
    first: dict[Path, str] = {}
    parts: dict[str, list[tuple[Row, str]]] = {s: [] for s in SPLITS}
    for r in rows:
        if r.split not in SPLITS:
            raise DataError(f"{path}:{r.where}: split must be 'train' or 'test', got {r.split!r}")
        if not r.image:
            raise DataError(f"{path}:{r.where}: empty image path")
        for label in (*r.positives, *(r.negatives or ())):
            if label not in col:
                raise DataError(f"{path}:{r.where}: label {label!r} is not in the class list {class_file}")
        resolved = resolve_in_root(base, r.image, f"{path}:{r.where}", allow_outside=outside_root,
                                   option="outside_root")
        key = Path(*resolved.parts)  # normalises separators, keeps '..' (no filesystem access)
        if key in first:
            raise DataError(f"{path}:{r.where}: image {r.image!r} appears twice (first on {first[key]})")
        first[key] = r.position
        parts[r.split].append((r, str(resolved)))

    def make(split: str) -> Split:
        part = parts[split]
        if not part:
            raise DataError(f"{path}: no image has split {split!r} (each of 'train' and 'test' needs images)")
        targets, known = three_state_matrices(
            [[col[x] for x in r.positives] for r, _ in part],
            [None if r.negatives is None else [col[x] for x in r.negatives] for r, _ in part],
            len(names),
        )
        return Split(
            targets=targets,
            ids=[r.image for r, _ in part],  # the image path as written in the manifest
            images=PathImageSource([res for _, res in part]),
            known=known,
            extras={"manifest_line": np.array([r.lineno for r, _ in part])},
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
    """``manifest:<file>``; options ``classes`` (a class list file), ``uncertain`` (what a dense
    ``-1`` means: unknown, positive or negative) and ``outside_root`` (allow absolute image paths and
    ``..`` leaving the image root); ``root`` (``--root``): the image root, default the manifest's directory."""
    opts = dataset_options("manifest", options, {"classes": None, "uncertain": "unknown", "outside_root": False})
    if not path:
        raise DataError("dataset 'manifest' needs a file: --dataset manifest:PATH.csv (or .jsonl)")
    return load_manifest(path, opts["classes"], opts["uncertain"], root=root, outside_root=opts["outside_root"])
