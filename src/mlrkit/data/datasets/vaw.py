"""VAW (``vaw``): Visual Attributes in the Wild, 620 attributes with positive and negative labels.

Pham et al. (CVPR 2021) label attributes of object instances in Visual Genome images: each
instance has ``positive_attributes`` and ``negative_attributes``; every other attribute is
unknown. mlrkit pools them per image: an attribute is a known **positive** of an image when some
instance of it has the attribute, a known **negative** when some instance is labelled without it
and no instance with it, and **unknown** otherwise. (An unlabelled object of the image may still
have a pooled-negative attribute; this is VAW's own partiality, said here rather than hidden.)

Layout (``--root``): VAW's ``train_part1.json``, ``train_part2.json``, ``val.json``, ``test.json``
and ``attribute_index.json`` (in ``--root`` or ``--root/data``, as in the VAW repository) and the
Visual Genome images in ``VG_100K/`` or ``VG_100K_2/`` (``<image_id>.jpg``). Splits: the two
training parts are the official training set (option ``include_val=true`` adds ``val.json``),
``test.json`` the test set. Classes: the attributes in ``attribute_index.json``'s order.
"""

from __future__ import annotations

import json
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
from mlrkit.data.datasets.coco import read_json
from mlrkit.errors import DataError

HINT = ("Get the VAW annotation files from https://github.com/adobe-research/vaw_dataset (data/*.json) and "
        "the Visual Genome images (VG_100K/, VG_100K_2/) from https://homes.cs.washington.edu/~ranjay/"
        "visualgenome/api.html; put them in one directory and pass --root <it>.")
DESCRIPTION = "VAW attributes (620) pooled per image: positive/negative attributes of objects, rest unknown"
IMAGE_DIRS = ("VG_100K", "VG_100K_2", "images")


def _data_file(root: Path, name: str) -> Path:
    for p in (root / name, root / "data" / name):
        if p.is_file():
            return p
    raise DataError(f"VAW file {name} not found in {root} or {root / 'data'}. {HINT}")


def _attribute_index(root: Path) -> list[str]:
    path = _data_file(root, "attribute_index.json")
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise DataError(f"{path}: expected an object {{attribute name: index}}")
    order = sorted(data.items(), key=lambda kv: kv[1])
    if [v for _, v in order] != list(range(len(order))):
        raise DataError(f"{path}: attribute indices must be 0..{len(order) - 1} without gaps")
    return [k for k, _ in order]


def _image_path(root: Path, image_id: str) -> Path:
    for d in IMAGE_DIRS:
        p = root / d / f"{image_id}.jpg"
        if p.is_file():
            return p
    return root / IMAGE_DIRS[0] / f"{image_id}.jpg"  # reported as missing when read


def _read_instances(root: Path, files: list[str], col: dict[str, int]) -> Split:
    pos: dict[str, set[int]] = {}
    neg: dict[str, set[int]] = {}
    for name in files:
        path = _data_file(root, name)
        items = read_json(path)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON array of instances")
        for k, inst in enumerate(items):
            if not isinstance(inst, dict) or "image_id" not in inst:
                raise DataError(f"{path}: instance {k} must be an object with image_id, positive_attributes, "
                                f"negative_attributes; got {json.dumps(inst)[:100]}")
            iid = str(inst["image_id"])
            p_set, n_set = pos.setdefault(iid, set()), neg.setdefault(iid, set())
            for key, target in (("positive_attributes", p_set), ("negative_attributes", n_set)):
                values = inst.get(key, [])
                if not isinstance(values, list):
                    raise DataError(f"{path}: instance {k} ({key}) must be a list of attribute names")
                for a in values:
                    if a not in col:
                        raise DataError(f"{path}: instance {k} of image {iid}: attribute {a!r} is not in "
                                        "attribute_index.json")
                    target.add(col[a])
    ids = sorted(i for i in pos if pos[i] or neg[i])
    if not ids:
        raise DataError(f"VAW files {files}: no image has a labelled attribute")
    targets, known = three_state_matrices([sorted(pos[i]) for i in ids],
                                          [sorted(neg[i] - pos[i]) for i in ids], len(col))
    return Split(targets=targets, ids=ids, known=known, images=PathImageSource([_image_path(root, i) for i in ids]))


@DATASETS.register("vaw", DESCRIPTION)
def build_vaw(root: Path | None = None, **options) -> MultiLabelDataset:
    """VAW from ``--root``; option ``include_val`` adds val.json to the official training set."""
    opts = dataset_options("vaw", options, {"include_val": False})
    root = require_root("vaw", root, HINT)
    names = _attribute_index(root)
    col = {n: j for j, n in enumerate(names)}
    train_files = ["train_part1.json", "train_part2.json"] + (["val.json"] if opts["include_val"] else [])
    train = _read_instances(root, train_files, col)
    test = _read_instances(root, ["test.json"], col)
    return MultiLabelDataset(name="vaw", class_names=names, trainval=train, test=test, description=DESCRIPTION)
