"""NUS-WIDE (``nuswide``): 81 concepts, from either of two on-disk layouts (auto-detected).

(a) Cole et al.'s formatted release (their re-crawl of the images): ``formatted_train_images.npy``,
    ``formatted_train_labels.npy``, ``formatted_val_images.npy``, ``formatted_val_labels.npy`` with
    image paths relative to ``Flickr/``. Their ``train`` arrays -> ``trainval``, their ``val``
    arrays (the official test images) -> ``test``, used exactly as released.
(b) The official NUS-WIDE lists: ``Concepts81.txt``, ``ImageList/TrainImagelist.txt``,
    ``ImageList/TestImagelist.txt`` and ``TrainTestLabels/Labels_<concept>_{Train,Test}.txt`` (one
    0/1 per line, aligned with the image list). Image list entries such as
    ``actor\\0001_2124494179.jpg`` are files ``Flickr/actor/0001_2124494179.jpg``. The official
    train list -> ``trainval``, the official test list -> ``test``.

When both are present, (a) is used (``layout="official"`` forces (b)). Every listed image is kept,
including images with none of the 81 concepts (the official lists have many); pass
``drop_unlabeled=True`` to remove those (many papers do). The concept order is that of
``Concepts81.txt``; layout (a) has no names file, so the same published order is used.
Many NUS-WIDE URLs are dead, so some listed files may be missing: ``--skip-bad-images`` drops
them and reports which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrkit.data.base import DATASETS, MultiLabelDataset, PathImageSource, Split, dataset_options, require_root
from mlrkit.errors import DataError

# The order of Concepts81.txt in the official release.
NUSWIDE_CONCEPTS: tuple[str, ...] = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier", "grass",
    "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain", "nighttime",
    "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow", "reflection",
    "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue", "street",
    "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toy", "train",
    "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
)  # fmt: skip

HINT = (
    "Request the NUS-WIDE images (Flickr.zip) at "
    "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html and unzip them "
    "into <dir>/Flickr/; then put either Cole et al.'s formatted_{train,val}_{images,labels}.npy "
    "(https://zenodo.org/records/10162606) or the official Concepts81.txt, ImageList/ "
    "(TrainImagelist.txt, TestImagelist.txt) and TrainTestLabels/ (Groundtruth.zip from the same page) "
    "in <dir>, and pass --root <dir> (or set $MLRKIT_DATA so that $MLRKIT_DATA/nuswide is it)."
)

DESCRIPTION = "NUS-WIDE, 81 concepts: official train / test lists, or Cole et al.'s formatted re-crawl"

_COLE_FILES = tuple(f"formatted_{p}_{k}.npy" for p in ("train", "val") for k in ("images", "labels"))
LAYOUTS = ("auto", "cole", "official")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"file not found: {path}. {HINT}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"file not found: {path}. {HINT}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy array without pickled objects ({e})") from None


def _check_unique(paths: list[str], source: Path) -> None:
    first: dict[str, int] = {}
    for i, p in enumerate(paths, start=1):
        if p in first:
            raise DataError(f"{source}: image {p!r} appears twice (entries {first[p]} and {i})")
        first[p] = i


def read_concepts(path: Path) -> list[str]:
    """Concept names of ``Concepts81.txt`` (one per line; blank lines ignored)."""
    names = [line.strip() for line in _read_lines(path) if line.strip()]
    if not names:
        raise DataError(f"{path}: no concept names")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{path}: concept {n!r} is listed twice")
        seen.add(n)
    return names


def read_image_list(path: Path) -> list[str]:
    """Image paths (relative to ``Flickr/``, '/'-separated) of an official image list."""
    out = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        entry = line.strip()
        if not entry:
            raise DataError(f"{path}:{lineno}: blank line inside the image list (labels are aligned by line)")
        out.append(entry.replace("\\", "/"))
    if not out:
        raise DataError(f"{path}: the image list is empty")
    _check_unique(out, path)
    return out


def read_label_column(path: Path, n: int) -> np.ndarray:
    """One ``Labels_<concept>_<Part>.txt`` file: ``n`` values 0/1, one per line."""
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    tokens = path.read_bytes().split()
    if len(tokens) != n:
        raise DataError(f"{path}: has {len(tokens)} values but the image list has {n} lines")
    vals = np.array(tokens, dtype="S")
    ok = (vals == b"0") | (vals == b"1")
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        lineno = _line_of_token(path, i)
        raise DataError(f"{path}:{lineno}: label must be 0 or 1, got {tokens[i].decode(errors='replace')!r}")
    return (vals == b"1").astype(np.uint8)


def _line_of_token(path: Path, index: int) -> int:
    """1-based line number of the ``index``-th whitespace-separated token (error path only)."""
    seen = 0
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        seen += len(line.split())
        if seen > index:
            return lineno
    return seen


def _split(paths: list[str], targets: np.ndarray, flickr: Path, drop_unlabeled: bool) -> Split:
    if drop_unlabeled:
        keep = np.flatnonzero(targets.any(axis=1))
        paths = [paths[i] for i in keep]
        targets = targets[keep]
    return Split(targets=targets, ids=paths, images=PathImageSource([flickr / p for p in paths]))


def load_official(base: Path, drop_unlabeled: bool) -> tuple[list[str], dict[str, Split]]:
    """Layout (b): the official lists and per-concept label files."""
    names = read_concepts(base / "Concepts81.txt")
    splits = {}
    for part, official in (("trainval", "Train"), ("test", "Test")):
        paths = read_image_list(base / "ImageList" / f"{official}Imagelist.txt")
        cols = [read_label_column(base / "TrainTestLabels" / f"Labels_{c}_{official}.txt", len(paths)) for c in names]
        splits[part] = _split(paths, np.stack(cols, axis=1), base / "Flickr", drop_unlabeled)
    return names, splits


def load_cole(base: Path, drop_unlabeled: bool) -> tuple[list[str], dict[str, Split]]:
    """Layout (a): Cole et al.'s ``formatted_*`` arrays."""
    names = read_concepts(base / "Concepts81.txt") if (base / "Concepts81.txt").is_file() else list(NUSWIDE_CONCEPTS)
    splits = {}
    for part, tag in (("trainval", "train"), ("test", "val")):
        img_file, lab_file = base / f"formatted_{tag}_images.npy", base / f"formatted_{tag}_labels.npy"
        images, labels = _load_npy(img_file), _load_npy(lab_file)
        if images.ndim != 1 or images.dtype.kind not in "US":
            raise DataError(f"{img_file}: expected a 1-D array of image paths, got {images.dtype} {images.shape}")
        if labels.ndim != 2 or labels.shape[1] != len(names):
            raise DataError(f"{lab_file}: expected labels [N, {len(names)}], got shape {labels.shape}")
        if len(labels) != len(images):
            raise DataError(f"{lab_file}: has {len(labels)} rows but {img_file.name} has {len(images)} images")
        if not np.isin(labels, (0, 1)).all():
            bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5].tolist()
            raise DataError(f"{lab_file}: labels must be 0/1, found {bad}")
        paths = []
        for p in images.tolist():
            p = p.decode() if isinstance(p, bytes) else str(p)
            p = p.replace("\\", "/")
            paths.append(p[len("Flickr/") :] if p.startswith("Flickr/") else p)
        _check_unique(paths, img_file)
        splits[part] = _split(paths, labels.astype(np.uint8), base / "Flickr", drop_unlabeled)
    return names, splits


@DATASETS.register("nuswide", DESCRIPTION)
def build_nuswide(root: Path | None = None, **options) -> MultiLabelDataset:
    """NUS-WIDE from Cole et al.'s files or the official lists; options ``layout``, ``drop_unlabeled``."""
    opts = dataset_options("nuswide", options, {"layout": "auto", "drop_unlabeled": False})
    layout, drop_unlabeled = opts["layout"], opts["drop_unlabeled"]
    if layout not in LAYOUTS:
        raise DataError(f"nuswide: layout must be one of {list(LAYOUTS)}, got {layout!r}")
    base = require_root("nuswide", root, HINT)
    has_cole = all((base / f).is_file() for f in _COLE_FILES)
    has_official = (base / "Concepts81.txt").is_file() and (base / "ImageList").is_dir()
    if layout == "auto":
        if has_cole:
            layout = "cole"
        elif has_official:
            layout = "official"
        else:
            partial = [f for f in _COLE_FILES if (base / f).is_file()]
            what = f" (found only {partial})" if partial else ""
            raise DataError(
                f"{base}: neither Cole et al.'s {list(_COLE_FILES)}{what} nor the official "
                f"Concepts81.txt + ImageList/ + TrainTestLabels/ found. {HINT}"
            )
    if not (base / "Flickr").is_dir():
        raise DataError(f"{base}: image directory Flickr/ not found. {HINT}")
    names, splits = (load_cole if layout == "cole" else load_official)(base, drop_unlabeled)
    return MultiLabelDataset(
        name="nuswide",
        class_names=names,
        trainval=splits["trainval"],
        test=splits["test"],
        description=DESCRIPTION,
        extras={"root": str(base), "layout": layout, "drop_unlabeled": bool(drop_unlabeled)},
    )
