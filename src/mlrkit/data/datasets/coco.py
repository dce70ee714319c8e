"""MS-COCO 2014 (``coco2014``) read from the official instances JSON files.

Splits follow Cole et al. (2021): the official ``train2014`` set -> ``trainval`` (the validation
split is carved out of it), the official ``val2014`` set -> ``test``.

Classes: the 80 categories ordered by category id (1 ... 90, with gaps), named by the JSON's
``name`` field. An image is positive for a category when it has at least one instance annotation
of it (crowd annotations included, as in Cole et al.'s ``format_coco.py``).

Images without any instance annotation (702 in train2014, 367 in val2014) are dropped by
default, as Cole et al. do (their image list is built from the annotations), which gives their
82,081 / 40,137 images; ``keep_unannotated=True`` keeps them as all-negative rows. Rows are
ordered by image id compared as strings, Cole et al.'s order, so that the seeded validation
split selects the same images as theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.data.base import (
    DATASETS,
    MultiLabelDataset,
    PathImageSource,
    Split,
    dataset_options,
    require_root,
    resolve_in_root,
)
from mlrkit.errors import DataError

HINT = (
    "Download annotations_trainval2014.zip, train2014.zip and val2014.zip from "
    "https://cocodataset.org/#download (http://images.cocodataset.org/annotations/annotations_trainval2014.zip, "
    "http://images.cocodataset.org/zips/train2014.zip, http://images.cocodataset.org/zips/val2014.zip), "
    "unzip all three into one directory (giving annotations/instances_train2014.json, "
    "annotations/instances_val2014.json, train2014/, val2014/) and pass --root <that dir> "
    "(or set $MLRKIT_DATA so that $MLRKIT_DATA/coco2014 is it)."
)

DESCRIPTION = "MS-COCO 2014, 80 classes: train2014 (82081 annotated) / val2014 as test (40137), as Cole et al."


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}. {HINT}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def _records(data: Any, key: str, fields: tuple[str, ...], path: Path) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: not a COCO instances file (no list {key!r} at the top level)")
    items = data[key]
    for k, item in enumerate(items):
        if not isinstance(item, dict) or any(f not in item for f in fields):
            raise DataError(f"{path}: {key}[{k}] must be an object with fields {list(fields)}, got {item!r:.120}")
    return items


def parse_categories(data: Any, path: Path) -> tuple[list[int], list[str]]:
    """Category ids (sorted) and their names."""
    cats = _records(data, "categories", ("id", "name"), path)
    if not cats:
        raise DataError(f"{path}: the categories list is empty")
    by_id: dict[int, str] = {}
    for k, c in enumerate(cats):
        cid = c["id"]
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DataError(f"{path}: categories[{k}] has a non-integer id {cid!r}")
        if cid in by_id:
            raise DataError(f"{path}: category id {cid} appears twice ({by_id[cid]!r} and {c['name']!r})")
        by_id[cid] = str(c["name"])
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def split_from_instances(data: Any, path: Path, image_dir: Path, cat_ids: list[int], keep_unannotated: bool) -> Split:
    """One split from a parsed instances file (read from ``path``); ``cat_ids`` fixes the columns."""
    images = _records(data, "images", ("id", "file_name"), path)
    anns = _records(data, "annotations", ("image_id", "category_id"), path)
    file_of: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for k, im in enumerate(images):
        iid, fname = im["id"], str(im["file_name"])
        if not isinstance(iid, int) or isinstance(iid, bool):
            raise DataError(f"{path}: images[{k}] has a non-integer id {iid!r}")
        if iid in file_of:
            raise DataError(f"{path}: image id {iid} appears twice in 'images'")
        if fname in seen_names:
            raise DataError(f"{path}: file {fname!r} appears twice in 'images' (ids {seen_names[fname]} and {iid})")
        resolve_in_root(image_dir, fname, f"{path}: images[{k}] (id {iid}) file_name")
        file_of[iid] = fname
        seen_names[fname] = iid
    col_of = {cid: j for j, cid in enumerate(cat_ids)}
    ann_image = np.empty(len(anns), dtype=np.int64)
    ann_col = np.empty(len(anns), dtype=np.int64)
    for k, a in enumerate(anns):
        iid, cid = a["image_id"], a["category_id"]
        if not isinstance(iid, int) or iid not in file_of:
            raise DataError(
                f"{path}: annotations[{k}] (id {a.get('id')}) refers to image_id {iid!r}, which is not in 'images'"
            )
        j = col_of.get(cid) if isinstance(cid, int) else None
        if j is None:
            raise DataError(
                f"{path}: annotations[{k}] (id {a.get('id')}) has category_id {cid!r}, "
                f"which is not in the file's categories"
            )
        ann_image[k] = iid
        ann_col[k] = j
    row_ids = list(file_of) if keep_unannotated else sorted(set(ann_image.tolist()))
    row_ids.sort(key=str)  # Cole et al. sort the image ids as strings
    if not row_ids:
        raise DataError(f"{path}: no annotated images")
    row_of = {iid: i for i, iid in enumerate(row_ids)}
    targets = np.zeros((len(row_ids), len(cat_ids)), dtype=np.uint8)
    if len(anns):
        rows = np.fromiter((row_of[i] for i in ann_image.tolist()), dtype=np.int64, count=len(anns))
        targets[rows, ann_col] = 1
    return Split(
        targets=targets,
        ids=[str(i) for i in row_ids],
        images=PathImageSource([image_dir / file_of[i] for i in row_ids]),
    )


def _image_dir(root: Path, name: str) -> Path:
    for cand in (root / name, root / "images" / name):
        if cand.is_dir():
            return cand
    raise DataError(f"{root}: image directory {name}/ not found. {HINT}")


@DATASETS.register("coco2014", DESCRIPTION)
def build_coco2014(root: Path | None = None, **options) -> MultiLabelDataset:
    """MS-COCO 2014: train2014 -> trainval, val2014 -> test (Cole et al.); option ``keep_unannotated``."""
    keep_unannotated = dataset_options("coco2014", options, {"keep_unannotated": False})["keep_unannotated"]
    base = require_root("coco2014", root, HINT)
    ann_dir = base / "annotations"
    splits: dict[str, Split] = {}
    names: list[str] = []
    cat_ids: list[int] = []
    for part, official in (("trainval", "train2014"), ("test", "val2014")):
        path = ann_dir / f"instances_{official}.json"
        image_dir = _image_dir(base, official)
        data = read_json(path)
        ids, part_names = parse_categories(data, path)
        if not cat_ids:
            cat_ids, names = ids, part_names
        elif (ids, part_names) != (cat_ids, names):
            raise DataError(f"{path}: its categories differ from those of instances_train2014.json")
        splits[part] = split_from_instances(data, path, image_dir, cat_ids, keep_unannotated)
        del data
    return MultiLabelDataset(
        name="coco2014",
        class_names=names,
        trainval=splits["trainval"],
        test=splits["test"],
        description=DESCRIPTION,
        extras={"root": str(base), "keep_unannotated": bool(keep_unannotated)},
    )
