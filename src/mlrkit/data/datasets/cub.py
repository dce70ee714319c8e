"""CUB-200-2011 (``cub``): the 312 binary bird attributes as a multi-label task.

Files of the official ``CUB_200_2011.tgz``: ``CUB_200_2011/images.txt`` (``<image_id> <path>``),
``CUB_200_2011/train_test_split.txt`` (``<image_id> <is_training_image>``, 1 = train),
``CUB_200_2011/attributes/image_attribute_labels.txt`` (``<image_id> <attribute_id> <is_present>
<certainty_id> <time>``), images under ``CUB_200_2011/images/`` and the attribute names in
``attributes.txt`` (``<attribute_id> <name>``; at the top of the archive, next to
``CUB_200_2011/``, or in ``CUB_200_2011/attributes/``).

Splits follow Cole et al. (2021): official training images -> ``trainval``, official test images
-> ``test``, both in ``images.txt`` order. Labels are the workers' ``is_present`` answers taken
as they are, whatever their certainty, exactly as Cole et al.'s ``format_cub.py`` does (it ignores
the certainty column). The option ``min_certainty`` (1 = not visible, 2 = guessing, 3 = probably,
4 = definitely; default 1) makes entries answered with a lower certainty *unknown* (``known``
mask False) instead, e.g. ``min_certainty=2`` for "not visible" -> unknown.

Some lines of the real ``image_attribute_labels.txt`` carry more than five fields; only the first
four (image, attribute, is_present, certainty) are used, so those lines parse like the others.
"""

from __future__ import annotations

from array import array
from pathlib import Path

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
    "Download CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158 "
    "(formerly http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz), extract it "
    "(giving attributes.txt and CUB_200_2011/{images.txt,train_test_split.txt,attributes/,images/}) and "
    "pass --root <the extraction dir> (or set $MLRKIT_DATA so that $MLRKIT_DATA/cub is it)."
)

DESCRIPTION = "CUB-200-2011, 312 binary attributes: official train (5994) / test (5794), as Cole et al."

CERTAINTIES = {1: "not visible", 2: "guessing", 3: "probably", 4: "definitely"}


def find_data_dir(base: Path) -> Path:
    """The directory holding ``images.txt`` (``base`` itself or ``CUB_200_2011/`` below it)."""
    for cand in (base, base / "CUB_200_2011", base / "CUB_200_2011" / "CUB_200_2011"):
        if (cand / "images.txt").is_file():
            return cand
    raise DataError(f"{base}: CUB_200_2011/images.txt not found. {HINT}")


def find_attribute_names(data_dir: Path, base: Path) -> Path:
    """``attributes.txt``: in ``attributes/``, next to ``images.txt``, or in a parent up to ``base``.

    The archive puts it next to the ``CUB_200_2011/`` directory, so the parent of the data
    directory is always searched (also when ``--root`` points at ``CUB_200_2011/`` itself).
    """
    dirs = [data_dir]
    d = data_dir
    while d != base and base in d.parents:
        d = d.parent
        dirs.append(d)
    if data_dir.parent not in dirs:
        dirs.append(data_dir.parent)
    tried = []
    for d in dirs:
        for cand in (d / "attributes" / "attributes.txt", d / "attributes.txt"):
            if cand.is_file():
                return cand
            tried.append(str(cand))
    raise DataError(f"attribute names not found (tried {', '.join(tried)}). {HINT}")


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(f"file not found: {path}. {HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


ID_MAX = 2**31 - 1  # CUB's ids are small; a larger one is a corrupt file, not a reason to allocate gigabytes


def _int(path: Path, lineno: int, value: str, what: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} must be an integer, got {value!r}") from None
    if not 0 <= v <= ID_MAX:
        raise DataError(f"{path}:{lineno}: {what} must be in 0..{ID_MAX}, got {value!r}")
    return v


def read_attribute_names(path: Path) -> list[str]:
    """Names from ``<attribute_id> <name>`` lines; ids must run 1..A in order."""
    names = []
    for lineno, parts in _lines(path):
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<attribute_id> <name>', got {' '.join(parts)!r}")
        aid = _int(path, lineno, parts[0], "attribute id")
        if aid != len(names) + 1:
            raise DataError(f"{path}:{lineno}: attribute id {aid}, expected {len(names) + 1} (ids run 1..A in order)")
        names.append(parts[1])
    if not names:
        raise DataError(f"{path}: no attribute names")
    return names


def read_images(path: Path) -> tuple[list[int], list[str]]:
    """Image ids and relative paths of ``images.txt``; repeated ids or paths are errors."""
    ids: list[int] = []
    paths: list[str] = []
    seen_id: dict[int, int] = {}
    seen_path: dict[str, int] = {}
    for lineno, parts in _lines(path):
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<image_id> <image_name>', got {' '.join(parts)!r}")
        iid = _int(path, lineno, parts[0], "image id")
        if iid < 0:
            raise DataError(f"{path}:{lineno}: image id must not be negative, got {iid}")
        if iid in seen_id:
            raise DataError(f"{path}:{lineno}: image id {iid} appears twice (first on line {seen_id[iid]})")
        if parts[1] in seen_path:
            raise DataError(f"{path}:{lineno}: image {parts[1]!r} appears twice (first on line {seen_path[parts[1]]})")
        seen_id[iid], seen_path[parts[1]] = lineno, lineno
        ids.append(iid)
        paths.append(parts[1])
    if not ids:
        raise DataError(f"{path}: no images")
    return ids, paths


def read_split_flags(path: Path, image_ids: list[int]) -> np.ndarray:
    """``is_training_image`` per image of ``images.txt`` (bool), each image exactly once."""
    row_of = {iid: i for i, iid in enumerate(image_ids)}
    flags = np.full(len(image_ids), -1, dtype=np.int8)
    for lineno, parts in _lines(path):
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<image_id> <is_training_image>', got {' '.join(parts)!r}")
        iid = _int(path, lineno, parts[0], "image id")
        if iid not in row_of:
            raise DataError(f"{path}:{lineno}: image id {iid} is not in images.txt")
        if parts[1] not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: is_training_image must be 0 or 1, got {parts[1]!r}")
        if flags[row_of[iid]] != -1:
            raise DataError(f"{path}:{lineno}: image id {iid} appears twice")
        flags[row_of[iid]] = int(parts[1])
    missing = np.flatnonzero(flags == -1)
    if missing.size:
        raise DataError(f"{path}: {missing.size} images of images.txt have no split, e.g. id {image_ids[missing[0]]}")
    return flags == 1


def read_attribute_labels(
    path: Path, image_ids: list[int], image_paths: list[str], names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``is_present`` (uint8 [N, A]) and ``certainty_id`` (uint8 [N, A]) for every (image, attribute).

    Streams the file (3.7 M lines in the real release) into flat integer buffers, then checks
    ranges, repeats and gaps with numpy; every error names the file and the line.
    """
    if not path.is_file():
        raise DataError(f"file not found: {path}. {HINT}")
    buf = array("q")
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 4:
                    raise DataError(
                        f"{path}:{lineno}: expected '<image_id> <attribute_id> <is_present> <certainty_id> <time>', "
                        f"got {line.strip()!r}"
                    )
                try:
                    buf.extend((int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), lineno))
                except (ValueError, OverflowError):
                    raise DataError(f"{path}:{lineno}: non-integer field (or one out of range) in {line.strip()!r}") \
                        from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    rec = np.frombuffer(buf, dtype=np.int64).reshape(-1, 5)
    iid, aid, present, cert, lines = rec.T
    n, a = len(image_ids), len(names)

    def fail(mask: np.ndarray, what: str) -> None:
        k = int(np.flatnonzero(mask)[0])
        raise DataError(f"{path}:{lines[k]}: {what} (line '{' '.join(map(str, rec[k, :4]))} ...')")

    order = np.argsort(np.asarray(image_ids, dtype=np.int64))
    sorted_ids = np.asarray(image_ids, dtype=np.int64)[order]
    pos = np.clip(np.searchsorted(sorted_ids, iid), 0, n - 1)
    known = sorted_ids[pos] == iid
    if not known.all():
        fail(~known, "image id not in images.txt")
    rows = order[pos]
    if ((aid < 1) | (aid > a)).any():
        fail((aid < 1) | (aid > a), f"attribute id outside 1..{a}")
    if not np.isin(present, (0, 1)).all():
        fail(~np.isin(present, (0, 1)), "is_present must be 0 or 1")
    if ((cert < 1) | (cert > 4)).any():
        fail((cert < 1) | (cert > 4), "certainty_id must be 1..4")
    flat = rows * a + (aid - 1)
    counts = np.bincount(flat, minlength=n * a)
    if (counts > 1).any():
        dup = int(np.flatnonzero(counts > 1)[0])
        where = np.flatnonzero(flat == dup)
        raise DataError(
            f"{path}:{lines[where[1]]}: image {image_ids[dup // a]} attribute {dup % a + 1} is labelled "
            f"again (first on line {lines[where[0]]})"
        )
    if (counts == 0).any():
        gap = int(np.flatnonzero(counts == 0)[0])
        raise DataError(
            f"{path}: no label for image {image_ids[gap // a]} ({image_paths[gap // a]}), attribute "
            f"{gap % a + 1} ({names[gap % a]}); {int((counts == 0).sum())} (image, attribute) pairs are missing"
        )
    is_present = np.zeros(n * a, dtype=np.uint8)
    certainty = np.zeros(n * a, dtype=np.uint8)
    is_present[flat] = present
    certainty[flat] = cert
    return is_present.reshape(n, a), certainty.reshape(n, a)


@DATASETS.register("cub", DESCRIPTION)
def build_cub(root: Path | None = None, **options) -> MultiLabelDataset:
    """CUB-200-2011 attributes: official train -> trainval, test -> test; option ``min_certainty`` (1-4)."""
    min_certainty = dataset_options("cub", options, {"min_certainty": 1})["min_certainty"]
    if min_certainty not in CERTAINTIES:
        raise DataError(f"cub: min_certainty must be 1..4 ({CERTAINTIES}), got {min_certainty!r}")
    base = require_root("cub", root, HINT)
    data_dir = find_data_dir(base)
    if not (data_dir / "images").is_dir():
        raise DataError(f"{data_dir}: image directory images/ not found. {HINT}")
    names = read_attribute_names(find_attribute_names(data_dir, base))
    image_ids, image_paths = read_images(data_dir / "images.txt")
    is_train = read_split_flags(data_dir / "train_test_split.txt", image_ids)
    labels, certainty = read_attribute_labels(
        data_dir / "attributes" / "image_attribute_labels.txt", image_ids, image_paths, names
    )
    known = certainty >= min_certainty if min_certainty > 1 else None

    def split(rows: np.ndarray) -> Split:
        return Split(
            targets=labels[rows],
            ids=[image_paths[i] for i in rows],
            images=PathImageSource([resolve_in_root(data_dir / "images", image_paths[i], f"{data_dir}/images.txt")
                                    for i in rows]),
            known=None if known is None else known[rows],
        )

    return MultiLabelDataset(
        name="cub",
        class_names=names,
        trainval=split(np.flatnonzero(is_train)),
        test=split(np.flatnonzero(~is_train)),
        description=DESCRIPTION,
        extras={"root": str(data_dir), "min_certainty": int(min_certainty)},
    )
