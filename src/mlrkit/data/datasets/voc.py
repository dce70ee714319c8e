"""PASCAL VOC 2007 and 2012 (``voc2007``, ``voc2012``) read from the devkit's XML annotations.

Splits (Cole et al. 2021 for 2012, the standard protocol for 2007):

* ``voc2007``: official ``trainval`` (5,011 images) -> ``trainval``; official ``test`` (4,952) -> ``test``.
* ``voc2012``: official ``train`` (5,717) -> ``trainval``; official ``val`` (5,823) -> ``test``
  (the VOC2012 test annotations are not public, so Cole et al. test on ``val``).

An image is positive for a class when it has at least one *non-difficult* object of that class.
A class present only through objects marked ``<difficult>1</difficult>`` is mapped by the
``difficult`` option:

* ``"negative"`` (default): ground truth 0. This is what Cole et al.'s ``format_pascal.py`` does
  (it keeps only the ``1`` entries of the per-class image lists, where difficult-only is ``0``),
  and what DualCoOp/SCPNet's loaders do (they skip difficult objects), so the default
  reproduces the label matrices of the papers mlrkit implements.
* ``"positive"``: ground truth 1 (the object is there, just hard to see).
* ``"unknown"``: the entry's ground truth is unknown (``known`` mask False): training never
  observes it and evaluation ignores it, as the official VOC evaluation ignores difficult objects.

An object without a ``<difficult>`` tag counts as not difficult (the devkit's default). All
listed images are kept, including ones whose objects are all difficult.

Your own data in the VOC layout (``Annotations/*.xml``, ``ImageSets/Main/*.txt``, ``JPEGImages``)
with other classes: the option ``classes`` is a file with one class name per line (that order),
or ``auto`` (the sorted names found in the annotations of both splits); an object whose name is
outside the list is an error naming the file. Example:
``mlrkit train --dataset voc2007 --root my_devkit --set data.options.classes=classes.txt``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mlrkit.data.base import DATASETS, MultiLabelDataset, PathImageSource, Split, dataset_options, require_root
from mlrkit.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

DIFFICULT_MODES = ("positive", "negative", "unknown")

_HINTS = {
    "2007": (
        "Download VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar from "
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/, extract both into the same directory "
        "(giving VOCdevkit/VOC2007/{Annotations,ImageSets/Main,JPEGImages}) and pass "
        "--root <that dir>/VOCdevkit (or set $MLRKIT_DATA so that $MLRKIT_DATA/voc2007 is it)."
    ),
    "2012": (
        "Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/, "
        "extract it (giving VOCdevkit/VOC2012/{Annotations,ImageSets/Main,JPEGImages}) and pass "
        "--root <that dir>/VOCdevkit (or set $MLRKIT_DATA so that $MLRKIT_DATA/voc2012 is it)."
    ),
}

_DESCRIPTIONS = {
    "2007": "PASCAL VOC 2007, 20 classes: trainval (5011) / test (4952); --root VOCdevkit",
    "2012": "PASCAL VOC 2012, 20 classes: train (5717) / val as test (5823), as Cole et al.; --root VOCdevkit",
}


# the ImageSets/Main lists read as (training set, test set) for each year
_SPLITS = {"2007": ("trainval", "test"), "2012": ("train", "val")}


def find_year_dir(root: Path, year: str) -> Path:
    """The ``VOC<year>`` directory under ``root`` (which may be it, ``VOCdevkit`` or its parent)."""
    for cand in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise DataError(
        f"{root}: no PASCAL VOC {year} devkit found (looked for Annotations/ and ImageSets/Main/ in "
        f"{root}, {root / f'VOC{year}'} and {root / 'VOCdevkit' / f'VOC{year}'}). {_HINTS[year]}"
    )


def read_id_list(path: Path) -> list[str]:
    """Image ids of a devkit list file (one per line); duplicates and junk are errors."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    ids: list[str] = []
    first_line: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 1:
            raise DataError(f"{path}:{lineno}: expected one image id per line, got {line.strip()!r}")
        image_id = tokens[0]
        if image_id in first_line:
            raise DataError(
                f"{path}:{lineno}: image {image_id!r} is listed twice (first on line {first_line[image_id]})"
            )
        first_line[image_id] = lineno
        ids.append(image_id)
    if not ids:
        raise DataError(f"{path}: the split list is empty")
    return ids


def parse_annotation(path: Path, classes: tuple[str, ...] | list[str] = VOC_CLASSES) -> tuple[set[int], set[int]]:
    """Class indices of an annotation file: (with a non-difficult object, with only difficult ones)."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        line, col = e.position  # expat columns count from 0
        reason = str(e).split(":")[0]
        raise DataError(f"{path}:{line}:{col + 1}: malformed XML ({reason})") from None
    except OSError as e:
        raise DataError(f"cannot read annotation {path}: {e}") from None
    present: set[int] = set()
    difficult: set[int] = set()
    for k, obj in enumerate(tree.getroot().findall("object"), start=1):
        name = obj.findtext("name")
        if name is None:
            raise DataError(f"{path}: object #{k} has no <name>")
        name = name.strip()
        try:
            c = classes.index(name)
        except ValueError:
            what = "a VOC class" if tuple(classes) == VOC_CLASSES else "in the class list"
            hint = "" if tuple(classes) != VOC_CLASSES else \
                " (for your own classes use the option classes=FILE or classes=auto)"
            raise DataError(f"{path}: object #{k} has name {name!r}, which is not {what}{hint}") from None
        flag = obj.findtext("difficult")
        flag = "0" if flag is None else flag.strip()
        if flag not in ("0", "1"):
            raise DataError(f"{path}: object #{k} ({name}) has <difficult>{flag}</difficult>, expected 0 or 1")
        (difficult if flag == "1" else present).add(c)
    return present, difficult - present


def load_voc_split(year_dir: Path, list_name: str, difficult: str,
                   classes: tuple[str, ...] | list[str] = VOC_CLASSES) -> Split:
    """One split: the ids of ``ImageSets/Main/<list_name>.txt`` with labels from their XML files."""
    list_file = year_dir / "ImageSets" / "Main" / f"{list_name}.txt"
    ids = read_id_list(list_file)
    targets = np.zeros((len(ids), len(classes)), dtype=np.uint8)
    known = np.ones(targets.shape, dtype=bool) if difficult == "unknown" else None
    for i, image_id in enumerate(ids):
        ann = year_dir / "Annotations" / f"{image_id}.xml"
        if not ann.is_file():
            raise DataError(f"{list_file}: image {image_id!r} has no annotation file {ann}")
        present, difficult_only = parse_annotation(ann, classes)
        targets[i, sorted(present)] = 1
        if difficult_only:
            cols = sorted(difficult_only)
            if difficult == "positive":
                targets[i, cols] = 1
            elif difficult == "unknown":
                assert known is not None
                known[i, cols] = False
    jpeg = year_dir / "JPEGImages"
    return Split(
        targets=targets,
        ids=ids,
        images=PathImageSource([jpeg / f"{image_id}.jpg" for image_id in ids]),
        known=known,
    )


def annotation_class_names(year_dir: Path, list_names: tuple[str, ...]) -> list[str]:
    """The sorted object names used by the annotations of the listed images (``classes=auto``)."""
    names: set[str] = set()
    for list_name in list_names:
        list_file = year_dir / "ImageSets" / "Main" / f"{list_name}.txt"
        for image_id in read_id_list(list_file):
            ann = year_dir / "Annotations" / f"{image_id}.xml"
            try:
                root = ET.parse(ann).getroot()
            except (ET.ParseError, OSError):
                continue  # reported with file and line when the split is read
            names |= {(o.findtext("name") or "").strip() for o in root.findall("object")} - {""}
    if not names:
        raise DataError(f"{year_dir}: classes=auto found no object names in the annotations")
    return sorted(names)


def load_voc(year: str, root: Path | None = None, difficult: str = "negative",
             classes: str | None = None) -> MultiLabelDataset:
    """Build ``voc<year>`` from a devkit directory; see the module docstring for splits and options."""
    if difficult not in DIFFICULT_MODES:
        raise DataError(f"voc{year}: difficult must be one of {list(DIFFICULT_MODES)}, got {difficult!r}")
    base = require_root(f"voc{year}", root, _HINTS[year])
    year_dir = find_year_dir(base, year)
    if not (year_dir / "JPEGImages").is_dir():
        raise DataError(f"{year_dir}: image directory JPEGImages/ not found. {_HINTS[year]}")
    trainval_list, test_list = _SPLITS[year]
    test_file = year_dir / "ImageSets" / "Main" / f"{test_list}.txt"
    if year == "2007" and not test_file.is_file():
        raise DataError(
            f"{test_file} not found: the VOC2007 test set is a separate download "
            "(VOCtest_06-Nov-2007.tar); extract it into the same directory as the trainval tar."
        )
    names: tuple[str, ...] | list[str] = VOC_CLASSES
    if classes == "auto":
        names = annotation_class_names(year_dir, (trainval_list, test_list))
    elif classes:
        from mlrkit.data.datasets.manifest import read_class_list

        names = read_class_list(Path(classes))
    return MultiLabelDataset(
        name=f"voc{year}",
        class_names=list(names),
        trainval=load_voc_split(year_dir, trainval_list, difficult, names),
        test=load_voc_split(year_dir, test_list, difficult, names),
        description=_DESCRIPTIONS[year],
        extras={"root": str(year_dir), "difficult": difficult},
    )


OPTIONS = {"difficult": "negative", "classes": None}


@DATASETS.register("voc2007", _DESCRIPTIONS["2007"])
def build_voc2007(root: Path | None = None, **options) -> MultiLabelDataset:
    """PASCAL VOC 2007: trainval -> trainval, test -> test. Option ``difficult``: negative|positive|unknown."""
    return load_voc("2007", root, **dataset_options("voc2007", options, OPTIONS))


@DATASETS.register("voc2012", _DESCRIPTIONS["2012"])
def build_voc2012(root: Path | None = None, **options) -> MultiLabelDataset:
    """PASCAL VOC 2012 (Cole et al.): train -> trainval, val -> test. Option ``difficult`` as for 2007."""
    return load_voc("2012", root, **dataset_options("voc2012", options, OPTIONS))
