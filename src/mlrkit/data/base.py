"""Core data structures: a dataset is an official training set (``trainval``) and a test set.

Following Cole et al. (2021), the validation split is carved out of the official training
set: 20 % of it, chosen by a seeded permutation (``split_seed`` 1200 by default, as theirs),
so that model selection never touches the test set. Observation protocols are applied to the
whole official training set before that split (as Cole et al.'s ``generate_observed_labels``),
so one observed-label file serves every validation seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mlrkit.errors import DataError, MlrkitError
from mlrkit.labels import check_consistent, check_observed, check_targets
from mlrkit.registry import Registry

DEFAULT_SPLIT_SEED = 1200  # Cole et al.'s split_seed
DEFAULT_VAL_FRACTION = 0.2


@runtime_checkable
class ImageSource(Protocol):
    """Random access to the images of a split."""

    def __len__(self) -> int: ...

    def load(self, i: int):  # -> PIL.Image.Image (RGB)
        ...

    def key(self, i: int) -> str:
        """A stable identity of image ``i`` for caches (path, size and mtime for files)."""
        ...


class PathImageSource:
    """Images stored as files. An unreadable file raises :class:`DataError` naming it."""

    def __init__(self, paths: Sequence[str | Path], skip_hint: bool = True) -> None:
        self.paths = [Path(p) for p in paths]
        self.skip_hint = skip_hint  # whether unreadable-image errors suggest --skip-bad-images (training only)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int):
        """Image ``i`` as RGB; a missing, undecodable or oversized (decompression bomb) file is a DataError."""
        import warnings

        from PIL import Image, UnidentifiedImageError

        p = self.paths[i]
        hint = " (use --skip-bad-images to skip such files)" if self.skip_hint else ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    return im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image not found: {p}") from None
        except IsADirectoryError:
            raise DataError(f"{p} is a directory, not an image file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"refused image {p}: more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS} "
                            f"(a decompression bomb?): {e}{hint}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"unreadable image {p}: {e}{hint}") from None

    def key(self, i: int) -> str:
        p = self.paths[i]
        try:
            st = p.stat()
            return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        except FileNotFoundError:
            return f"{p}|missing"

    def subset(self, idx: np.ndarray) -> PathImageSource:
        return PathImageSource([self.paths[i] for i in idx], self.skip_hint)

    def find_bad(self) -> list[int]:
        """Indices of files that are missing or cannot be decoded (full decode, not just the header)."""
        import warnings

        from PIL import Image

        bad = []
        for i, p in enumerate(self.paths):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(p) as im:
                        im.load()
            except Exception:  # noqa: BLE001 - any decode failure (or a bomb) makes the file bad; reported by caller
                bad.append(i)
        return bad


class ArrayImageSource:
    """Images held in a uint8 array [N, H, W] (grey) or [N, H, W, 3] (RGB), e.g. built-in data.

    ``key(i)`` names the image by a digest of the whole original array and its original row, so
    a subset (e.g. a validation split) never collides with another subset in a cache.
    """

    def __init__(self, array: np.ndarray, name: str = "array", *, rows: np.ndarray | None = None,
                 digest: str | None = None) -> None:
        a = np.asarray(array)
        if a.dtype != np.uint8 or a.ndim not in (3, 4):
            raise DataError(f"image array must be uint8 [N,H,W(,3)], got {a.dtype} {a.shape}")
        self.array = a
        self.name = name
        self.rows = np.arange(len(a)) if rows is None else np.asarray(rows)
        self._digest = digest

    @property
    def digest(self) -> str:
        if self._digest is None:
            import hashlib

            self._digest = hashlib.sha256(np.ascontiguousarray(self.array).tobytes()).hexdigest()[:16]
        return self._digest

    def __len__(self) -> int:
        return len(self.array)

    def load(self, i: int):
        from PIL import Image

        a = self.array[i]
        return Image.fromarray(a).convert("RGB")

    def key(self, i: int) -> str:
        return f"{self.name}@{self.digest}#{int(self.rows[i])}"

    def subset(self, idx: np.ndarray) -> ArrayImageSource:
        return ArrayImageSource(self.array[idx], name=self.name, rows=self.rows[idx], digest=self.digest)



class ImageList:
    """Images given one by one (``predict``, the Python API): file paths and in-memory PIL images, mixed.

    A path is read when needed (an unreadable file raises :class:`DataError` naming it); an
    in-memory image is keyed by a digest of its pixels, so feature caches never confuse two images.
    """

    def __init__(self, entries: Sequence) -> None:
        self.entries = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int):
        e = self.entries[i]
        if isinstance(e, (str, Path)):
            return PathImageSource([e]).load(0)
        return e.convert("RGB")

    def key(self, i: int) -> str:
        e = self.entries[i]
        if isinstance(e, (str, Path)):
            return PathImageSource([e]).key(0)
        import hashlib

        rgb = e.convert("RGB")
        return f"pil:{rgb.size}:{hashlib.sha256(rgb.tobytes()).hexdigest()[:24]}"

    def subset(self, idx: np.ndarray) -> ImageList:
        return ImageList([self.entries[i] for i in idx])

@dataclass
class Split:
    """One split: ground truth, ids, and either precomputed features or images (or both).

    ``known`` (bool [N, C]) is None when the ground truth is complete; otherwise it marks the
    entries whose ground truth exists (a three-state manifest's positives/negatives, OpenImages'
    human-verified labels, ...), and evaluation ignores the rest. ``annotations`` (int8 [N, C] in
    {-1, 0, +1}, optional) are the dataset's own observed labels where they are *not* simply its
    known ground truth (a features file with both ``Y_train`` and ``observed_train``); the
    ``observed`` protocol trains on them. ``index`` maps rows back to the official training set.
    """

    targets: np.ndarray
    ids: list[str]
    features: np.ndarray | None = None
    images: ImageSource | None = None
    known: np.ndarray | None = None
    index: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    annotations: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.targets = check_targets(self.targets)
        n = len(self.targets)
        if len(self.ids) != n:
            raise DataError(f"split has {n} label rows but {len(self.ids)} ids")
        if self.features is not None:
            f = np.asarray(self.features)
            if f.ndim != 2 or len(f) != n:
                raise DataError(f"features must be [N={n}, D], got shape {f.shape}")
            if not np.isfinite(f).all():
                r, c = np.argwhere(~np.isfinite(f))[0]
                raise DataError(f"features contain NaN/inf (first at row {r}, column {c}: {f[r, c]})")
            self.features = f.astype(np.float32, copy=False)
        if self.images is not None and len(self.images) != n:
            raise DataError(f"split has {n} label rows but {len(self.images)} images")
        if self.known is not None:
            self.known = np.asarray(self.known, dtype=bool)
            if self.known.shape != self.targets.shape:
                raise DataError(f"known mask {self.known.shape} != targets {self.targets.shape}")
        if self.annotations is not None:
            self.annotations = check_observed(self.annotations, "annotations")
            if self.annotations.shape != self.targets.shape:
                raise DataError(f"annotations {self.annotations.shape} != targets {self.targets.shape}")
            check_consistent(self.annotations, self.targets, self.known, "annotations")
        if self.index is None:
            self.index = np.arange(n)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return int(self.targets.shape[1])

    def subset(self, idx: np.ndarray) -> Split:
        idx = np.asarray(idx)
        images = self.images.subset(idx) if self.images is not None else None  # type: ignore[attr-defined]
        return Split(
            targets=self.targets[idx],
            ids=[self.ids[i] for i in idx],
            features=None if self.features is None else self.features[idx],
            images=images,
            known=None if self.known is None else self.known[idx],
            index=self.index[idx],
            extras={k: _subset_extra(v, idx) for k, v in self.extras.items()},
            annotations=None if self.annotations is None else self.annotations[idx],
        )

    @property
    def is_partial(self) -> bool:
        """True when part of this split's ground truth is unknown."""
        return self.known is not None and not bool(self.known.all())


def three_state_matrices(
    positives: Sequence[Sequence[int]], negatives: Sequence[Sequence[int] | None], num_classes: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Ground truth of images annotated with known positive and known negative class indices.

    Returns ``targets`` (uint8 [N, C], 1 for the positives) and ``known`` (bool [N, C]: the
    positives and negatives; None when every entry is known). A row whose negatives are ``None``
    is complete: every class it does not list as positive is a known negative.
    """
    n = len(positives)
    targets = np.zeros((n, num_classes), dtype=np.uint8)
    known = np.ones((n, num_classes), dtype=bool)
    for i, (pos, neg) in enumerate(zip(positives, negatives)):
        targets[i, list(pos)] = 1
        if neg is not None:
            known[i] = False
            known[i, [*pos, *neg]] = True
    return targets, (None if known.all() else known)


def _subset_extra(v, idx):
    if isinstance(v, np.ndarray):
        return v[idx]
    if isinstance(v, list):
        return [v[i] for i in idx]
    return v


@dataclass
class MultiLabelDataset:
    """A named dataset: class names, the official training set and the test set."""

    name: str
    class_names: list[str]
    trainval: Split
    test: Split
    description: str = ""
    extras: dict = field(default_factory=dict)
    #: groups of classes (by training annotations) of the grouped mAP report; 0 = no such report
    report_groups: int = 0

    def __post_init__(self) -> None:
        c = len(self.class_names)
        if c == 0:
            raise DataError(f"dataset {self.name!r} has no classes")
        if len(set(self.class_names)) != c:
            dup = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            raise DataError(f"dataset {self.name!r} has duplicate class names: {dup[:5]}")
        for what, s in (("training", self.trainval), ("test", self.test)):
            if len(s) == 0:
                raise DataError(f"dataset {self.name!r}: the {what} split is empty")
            if s.num_classes != c:
                raise DataError(
                    f"dataset {self.name!r}: {what} labels have {s.num_classes} classes, names list {c}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_features(self) -> bool:
        return self.trainval.features is not None

    @property
    def has_images(self) -> bool:
        return self.trainval.images is not None

    def drop_bad_images(self) -> dict[str, list[str]]:
        """Remove unreadable/missing images from every split; returns the skipped ids per split."""
        skipped: dict[str, list[str]] = {}
        for attr in ("trainval", "test"):
            s: Split = getattr(self, attr)
            if not isinstance(s.images, PathImageSource):
                continue
            bad = s.images.find_bad()
            if bad:
                skipped[attr] = [s.ids[i] for i in bad]
                keep = np.setdiff1d(np.arange(len(s)), bad)
                sub = s.subset(keep)
                sub.index = np.arange(len(sub))
                setattr(self, attr, sub)
        self.__post_init__()
        return skipped


def split_train_val(
    trainval: Split, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[Split, Split]:
    """Cole et al.'s split: a seeded permutation; round(f*N) rows to validation, both sorted."""
    n = len(trainval)
    if not 0.0 < val_fraction < 1.0:
        raise MlrkitError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(np.round(val_fraction * n))
    if n_val == 0 or n_val == n:
        raise DataError(f"cannot split {n} training rows with val_fraction={val_fraction}")
    perm = np.random.RandomState(seed).permutation(n)
    train_idx = np.sort(perm[: n - n_val])
    val_idx = np.sort(perm[-n_val:])
    return trainval.subset(train_idx), trainval.subset(val_idx)


# --------------------------------------------------------------------------- registry

DatasetBuilder = Callable[..., MultiLabelDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def load_dataset(spec: str, root: str | Path | None = None, **options) -> MultiLabelDataset:
    """Build a dataset from its registry name; ``features:<file.npz>`` passes the path as ``path``.

    ``root`` is the dataset's directory for datasets stored on disk (VOC, COCO, …); when
    omitted, ``$MLRKIT_DATA/<name>`` is tried and a missing directory is a clear error.
    """
    import mlrkit.data.datasets  # noqa: F401 - registers the adapters

    name, sep, arg = spec.partition(":")
    if name not in DATASETS.names():
        p = Path(spec)
        if p.suffix.lower() in (".csv", ".jsonl", ".ndjson", ".json", ".tsv") and p.is_file():
            raise DataError(f"unknown dataset {spec!r}: it is a file; for your own images and labels write "
                            f"manifest:{spec} (docs/datasets.md, 'Your own data' in the README)")
        if p.suffix.lower() == ".npz" and p.is_file():
            raise DataError(f"unknown dataset {spec!r}: it is a file; for precomputed features write features:{spec}")
    builder = DATASETS.get(name)
    if sep:
        options["path"] = arg
    if root is not None:
        options["root"] = Path(root)
    import inspect

    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise MlrkitError(f"dataset {name!r} takes no option {unknown}; valid: {sorted(set(params) - {'root'})}")
    return builder(**options)


def require_root(name: str, root: Path | None, hint: str) -> Path:
    """Resolve a dataset directory or raise an error saying where to get the files."""
    if root is None:
        env = os.environ.get("MLRKIT_DATA")
        if env:
            root = Path(env) / name
    if root is None or not Path(root).is_dir():
        where = f"directory {root} does not exist" if root is not None else "no --root given"
        raise DataError(f"dataset {name!r}: {where}. {hint}")
    return Path(root)


def with_features(ds: MultiLabelDataset, train: np.ndarray, test: np.ndarray) -> MultiLabelDataset:
    """A copy of ``ds`` whose splits carry the given features."""
    return replace(ds, trainval=replace(ds.trainval, features=train), test=replace(ds.test, features=test))


def resolve_in_root(root: Path, name: str, where: str, *, allow_outside: bool = False,
                    option: str | None = None) -> Path:
    """``root / name`` for an image path written in a dataset file (``where``: file and line for errors).

    The path must stay inside ``root``: an absolute path, or one whose ``..`` parts climb out of it,
    is a DataError (a list file must not make mlrkit read ``/etc/passwd``), unless ``allow_outside``
    (the dataset option ``option`` names how to allow it). Nothing is read from the filesystem here.
    """
    p = Path(name)
    if allow_outside:
        return p if p.is_absolute() else root / p
    how = f"; set the dataset option {option}=true to allow paths outside it" if option else ""
    if p.is_absolute() or p.drive:
        raise DataError(f"{where}: image path {name!r} is absolute; image paths must lie inside {root}{how}")
    norm = os.path.normpath(name)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise DataError(f"{where}: image path {name!r} leaves {root} ('..'); image paths must lie inside it{how}")
    return root / p


def dataset_options(name: str, options: dict, defaults: dict) -> dict:
    """Validate a dataset builder's ``**options`` against ``defaults``; returns defaults updated.

    An unknown key is an error listing the known ones. A string value for a bool or int option
    (as a command line gives it) is converted (``true/false/yes/no/1/0``; ``int(...)``).
    """
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise MlrkitError(f"dataset {name!r}: unknown option(s) {unknown} (known: {sorted(defaults)})")
    out = dict(defaults)
    for key, value in options.items():
        default = defaults[key]
        if isinstance(default, bool) and isinstance(value, str):
            low = value.strip().lower()
            if low not in ("true", "false", "yes", "no", "1", "0"):
                raise MlrkitError(f"dataset {name!r}: option {key} must be true or false, got {value!r}")
            value = low in ("true", "yes", "1")
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise MlrkitError(f"dataset {name!r}: option {key} must be true or false, got {value!r}")
        elif isinstance(default, int) and not isinstance(default, bool):
            try:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            except (TypeError, ValueError):
                raise MlrkitError(f"dataset {name!r}: option {key} must be an integer, got {value!r}") from None
        out[key] = value
    return out
