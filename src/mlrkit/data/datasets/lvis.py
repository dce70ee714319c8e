"""LVIS v1 (``lvis``) at image level: a large-vocabulary dataset whose own labels are partial.

LVIS (Gupta et al., CVPR 2019) annotates each image *federatedly*: for a category, an image is
either annotated (it has instance masks: a known **positive**), verified absent (its
``neg_category_ids``: a known **negative**), or not looked at (**unknown**). Categories in
``not_exhaustive_category_ids`` have instances but not all of them are annotated: at image level
they stay positive when the image has an instance of them, and are unknown otherwise. Nothing
unlisted is ever turned into a negative.

Layout (``--root``): ``lvis_v1_train.json``, ``lvis_v1_val.json`` (from the LVIS website) and the
COCO 2017 images ``train2017/`` and ``val2017/``. An image's file is found through its ``coco_url``
(``.../train2017/000000391895.jpg`` -> ``<root>/train2017/000000391895.jpg``; LVIS v1 val uses
images of both COCO folders) or, for older files, ``file_name``. Splits: ``lvis_v1_train.json`` is
the official training set (validation is carved out of it), ``lvis_v1_val.json`` the test set
(LVIS test annotations are not public). Classes: the 1,203 categories ordered by id. Images with
no known label at all are dropped (option ``keep_unlabelled=true`` keeps them).
"""

from __future__ import annotations

from pathlib import Path

from mlrkit.data.base import (
    DATASETS,
    MultiLabelDataset,
    PathImageSource,
    Split,
    dataset_options,
    require_root,
    resolve_in_root,
    three_state_matrices,
)
from mlrkit.data.datasets.coco import read_json
from mlrkit.errors import DataError

HINT = ("Download lvis_v1_train.json.zip and lvis_v1_val.json.zip from https://www.lvisdataset.org/dataset "
        "and the COCO 2017 images (http://images.cocodataset.org/zips/train2017.zip, val2017.zip); unzip all "
        "into one directory (lvis_v1_train.json, lvis_v1_val.json, train2017/, val2017/) and pass --root <it>.")
DESCRIPTION = "LVIS v1 image-level, 1203 classes, its own partial labels (neg_category_ids known negatives)"
FILES = {"train": "lvis_v1_train.json", "test": "lvis_v1_val.json"}


def _list_of_dicts(data, key: str, fields: tuple[str, ...], path: Path) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: not an LVIS file (no list {key!r} at the top level)")
    for k, item in enumerate(data[key]):
        if not isinstance(item, dict) or any(f not in item for f in fields):
            raise DataError(f"{path}: {key}[{k}] must be an object with fields {list(fields)}, got {item!r:.120}")
    return data[key]


def _image_path(root: Path, img: dict, path: Path) -> Path:
    url = img.get("coco_url")
    if isinstance(url, str) and "/" in url:
        folder, name = url.rstrip("/").split("/")[-2:]
        return resolve_in_root(root, f"{folder}/{name}", f"{path}: image {img.get('id')!r} coco_url")
    name = img.get("file_name")
    if isinstance(name, str) and name:
        return resolve_in_root(root, name, f"{path}: image {img.get('id')!r} file_name")
    raise DataError(f"{path}: image {img.get('id')!r} has neither coco_url nor file_name")


def _read_split(root: Path, path: Path, keep_unlabelled: bool, cat_ids: list[int] | None):
    data = read_json(path)
    images = _list_of_dicts(data, "images", ("id",), path)
    anns = _list_of_dicts(data, "annotations", ("image_id", "category_id"), path)
    cats = _list_of_dicts(data, "categories", ("id", "name"), path)
    ids = sorted(int(c["id"]) for c in cats)
    if cat_ids is not None and ids != cat_ids:
        raise DataError(f"{path}: its categories differ from those of {FILES['train']}")
    names = {int(c["id"]): str(c["name"]) for c in cats}
    col = {cid: j for j, cid in enumerate(ids)}
    by_id = {int(img["id"]): img for img in images}
    positives: dict[int, set[int]] = {i: set() for i in by_id}
    for k, a in enumerate(anns):
        iid, cid = int(a["image_id"]), int(a["category_id"])
        if iid not in by_id:
            raise DataError(f"{path}: annotations[{k}] refers to image {iid}, which is not in 'images'")
        if cid not in col:
            raise DataError(f"{path}: annotations[{k}] has category {cid}, which is not in 'categories'")
        positives[iid].add(col[cid])
    rows, pos_rows, neg_rows = [], [], []
    for iid in sorted(by_id):
        img = by_id[iid]
        neg = set()
        for cid in img.get("neg_category_ids", []) or []:
            if int(cid) not in col:
                raise DataError(f"{path}: image {iid} lists negative category {cid}, which is not in 'categories'")
            neg.add(col[int(cid)])
        both = positives[iid] & neg
        if both:
            j = min(both)
            raise DataError(f"{path}: image {iid} has instances of category {ids[j]} ({names[ids[j]]!r}) "
                            "but lists it in neg_category_ids")
        if not positives[iid] and not neg and not keep_unlabelled:
            continue
        rows.append(img)
        pos_rows.append(sorted(positives[iid]))
        neg_rows.append(sorted(neg))
    if not rows:
        raise DataError(f"{path}: no image has a known label")
    targets, known = three_state_matrices(pos_rows, neg_rows, len(ids))
    split = Split(targets=targets, ids=[str(int(img["id"])) for img in rows], known=known,
                  images=PathImageSource([_image_path(root, img, path) for img in rows]))
    return split, ids, [names[i] for i in ids]


@DATASETS.register("lvis", DESCRIPTION)
def build_lvis(root: Path | None = None, **options) -> MultiLabelDataset:
    """LVIS v1 image-level labels from ``--root``; option ``keep_unlabelled`` (default false)."""
    opts = dataset_options("lvis", options, {"keep_unlabelled": False})
    root = require_root("lvis", root, HINT)
    train, ids, names = _read_split(root, root / FILES["train"], opts["keep_unlabelled"], None)
    test, _, _ = _read_split(root, root / FILES["test"], opts["keep_unlabelled"], ids)
    return MultiLabelDataset(name="lvis", class_names=names, trainval=train, test=test, description=DESCRIPTION)
