"""Fashion-MNIST mosaics: real product photos tiled k x k, labels = union of the tiles' classes.

This is a *constructed* multi-label benchmark made of real photos (Fashion-MNIST, Xiao, Rasul &
Vollgraf 2017, MIT licence). It has three parts:

* :func:`read_idx` / :func:`load_fashion_mnist` read the original ``*-idx?-ubyte.gz`` files
  (magic numbers, sizes and label range validated; a bad file is a :class:`DataError` naming it).
* :func:`build_subset` draws, from a seed, the small subset that ships in the package: a
  class-balanced pool of *train tiles* from the Fashion-MNIST training set, a disjoint pool of
  *test tiles* from its test set, and the mosaic *compositions* (pool indices per mosaic,
  ``[N, k*k]``, row-major cells). Every cell's class is drawn uniformly from the 10 classes and
  its tile uniformly among that class's pool tiles, so a class is present in a mosaic with
  probability ``1 - 0.9**(k*k)`` (0.344 for k = 2). Tiles are reused across mosaics within a
  split, never across splits; only images whose pixels are unique among all 70,000
  Fashion-MNIST images are eligible, so no pixel-identical tile can be in both pools.
* :func:`make_mosaics` materialises uint8 ``[N, 28k, 28k]`` images, vectorised.

The random draws use :class:`numpy.random.RandomState`, whose streams numpy keeps fixed across
releases, so the same parameters and source files give the same arrays byte for byte.

Regenerate the shipped file with::

    python -m mlrkit.data.fashion_mosaic --source /usr/share/datasets/fashion-mnist \\
        --out src/mlrkit/builtin/fashion_mosaic.npz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlrkit.errors import DataError, MlrkitError

CLASS_NAMES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
NUM_CLASSES = len(CLASS_NAMES)
TILE = 28  # Fashion-MNIST images are 28 x 28 grey

SOURCE_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist

FORMAT_VERSION = 1
DEFAULT_PARAMS: dict[str, int] = {
    "seed": 0,
    "grid": 2,
    "train_mosaics": 10_000,
    "test_mosaics": 2_000,
    "train_tiles_per_class": 800,
    "test_tiles_per_class": 200,
}

_IDX_DTYPES = {0x08: np.dtype(np.uint8)}  # the only element type Fashion-MNIST uses
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # 0x00000803 (ubyte, 3 dims), 0x00000801 (ubyte, 1 dim)


# --------------------------------------------------------------------------- idx reader


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an idx file (gzip-compressed if its name ends in ``.gz``) into a numpy array.

    The header is validated: two zero bytes, a known element type, the number of dimensions,
    and a payload of exactly the announced size. ``expected_magic`` (2051 for image files,
    2049 for label files) is checked when given. Every problem is a :class:`DataError` naming
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"idx file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: bad idx magic number 0x{magic:08x} (not an idx file?)")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: idx magic number {magic} (0x{magic:08x}), expected {expected_magic}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[dtype_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: idx payload has {len(raw) - header} bytes, header {list(dims)} announces {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def load_fashion_mnist(source: str | Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels uint8 [N] of Fashion-MNIST's ``train`` or ``test`` set."""
    if part not in SOURCE_FILES:
        raise MlrkitError(f"Fashion-MNIST part must be 'train' or 'test', got {part!r}")
    source = Path(source)
    if not source.is_dir():
        raise DataError(
            f"Fashion-MNIST directory {source} does not exist: install the Debian package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --source DIR "
            f"holding {', '.join(f for pair in SOURCE_FILES.values() for f in pair)}"
        )
    img_name, lab_name = SOURCE_FILES[part]
    images = read_idx(source / img_name, _IMAGES_MAGIC)
    labels = read_idx(source / lab_name, _LABELS_MAGIC)
    if images.shape[1:] != (TILE, TILE):
        raise DataError(f"{source / img_name}: images are {images.shape[1:]}, expected ({TILE}, {TILE})")
    if len(images) != len(labels):
        raise DataError(f"{source}: {img_name} has {len(images)} images but {lab_name} {len(labels)} labels")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        i = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{source / lab_name}: label {int(labels[i])} at index {i} is not in 0..{NUM_CLASSES - 1}"
        )
    return images, labels


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (as ``sha256sum`` prints it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- subset + compositions


def _unique_pixel_mask(*image_sets: np.ndarray) -> list[np.ndarray]:
    """For each image set, a bool mask of the images whose pixels occur once over all sets."""
    flat = np.concatenate([s.reshape(len(s), -1) for s in image_sets])
    rows = np.ascontiguousarray(flat).view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    unique = counts[inverse.ravel()] == 1
    bounds = np.cumsum([0] + [len(s) for s in image_sets])
    return [unique[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _draw_pool(
    labels: np.ndarray, eligible: np.ndarray, per_class: int, rng: np.random.RandomState, what: str
) -> np.ndarray:
    """Source indices of a class-balanced pool: ``per_class`` per class, class-major, sorted within."""
    chosen = []
    for c in range(NUM_CLASSES):
        cand = np.flatnonzero((labels == c) & eligible)
        if len(cand) < per_class:
            raise DataError(
                f"{what}: class {c} ({CLASS_NAMES[c]}) has {len(cand)} eligible images, need {per_class}"
            )
        chosen.append(np.sort(cand[rng.permutation(len(cand))[:per_class]]))
    return np.concatenate(chosen)


def _draw_compositions(n: int, cells: int, per_class: int, rng: np.random.RandomState) -> np.ndarray:
    """Pool indices [n, cells]: each cell's class drawn uniformly, then a tile uniformly within it."""
    classes = rng.randint(0, NUM_CLASSES, size=(n, cells))
    within = rng.randint(0, per_class, size=(n, cells))
    return classes * per_class + within  # pools are class-major with per_class tiles each


def build_subset(
    source: str | Path,
    *,
    seed: int = DEFAULT_PARAMS["seed"],
    grid: int = DEFAULT_PARAMS["grid"],
    train_mosaics: int = DEFAULT_PARAMS["train_mosaics"],
    test_mosaics: int = DEFAULT_PARAMS["test_mosaics"],
    train_tiles_per_class: int = DEFAULT_PARAMS["train_tiles_per_class"],
    test_tiles_per_class: int = DEFAULT_PARAMS["test_tiles_per_class"],
) -> dict[str, np.ndarray]:
    """Draw the shipped subset from the Fashion-MNIST files in ``source``; returns the npz arrays.

    Arrays: ``{train,test}_tiles`` uint8 [T, 28, 28], ``{train,test}_tile_labels`` uint8 [T],
    ``{train,test}_tile_source`` int32 [T] (index in the Fashion-MNIST set it came from),
    ``{train,test}_compositions`` [N, grid*grid] pool indices (row-major cells), ``class_names``,
    ``build_params`` (JSON object) and ``source_sha256`` (JSON array of ``"<sha256>  <file>"``).
    """
    params = {
        "seed": seed,
        "grid": grid,
        "train_mosaics": train_mosaics,
        "test_mosaics": test_mosaics,
        "train_tiles_per_class": train_tiles_per_class,
        "test_tiles_per_class": test_tiles_per_class,
    }
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise MlrkitError(f"fashion-mosaic build parameter {key} must be an integer, got {value!r}")
        if value < (0 if key == "seed" else 1):
            raise MlrkitError(f"fashion-mosaic build parameter {key} must be positive, got {value}")
    source = Path(source)
    tr_img, tr_lab = load_fashion_mnist(source, "train")
    te_img, te_lab = load_fashion_mnist(source, "test")
    tr_ok, te_ok = _unique_pixel_mask(tr_img, te_img)

    rng = np.random.RandomState(seed)
    tr_src = _draw_pool(tr_lab, tr_ok, train_tiles_per_class, rng, f"{source} (train)")
    te_src = _draw_pool(te_lab, te_ok, test_tiles_per_class, rng, f"{source} (test)")
    cells = grid * grid
    tr_comp = _draw_compositions(train_mosaics, cells, train_tiles_per_class, rng)
    te_comp = _draw_compositions(test_mosaics, cells, test_tiles_per_class, rng)

    def index_dtype(pool_size: int) -> type:
        return np.uint16 if pool_size <= np.iinfo(np.uint16).max + 1 else np.int32

    files = [name for pair in SOURCE_FILES.values() for name in pair]
    hashes = [f"{file_sha256(source / name)}  {name}" for name in files]
    return {
        "train_tiles": np.ascontiguousarray(tr_img[tr_src]),
        "train_tile_labels": tr_lab[tr_src].astype(np.uint8),
        "train_tile_source": tr_src.astype(np.int32),
        "train_compositions": tr_comp.astype(index_dtype(len(tr_src))),
        "test_tiles": np.ascontiguousarray(te_img[te_src]),
        "test_tile_labels": te_lab[te_src].astype(np.uint8),
        "test_tile_source": te_src.astype(np.int32),
        "test_compositions": te_comp.astype(index_dtype(len(te_src))),
        "class_names": np.array(CLASS_NAMES),
        "build_params": np.array(json.dumps({"format_version": FORMAT_VERSION, **params}, sort_keys=True)),
        "source_sha256": np.array(json.dumps(hashes)),
    }


def save_subset(arrays: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write the subset with ``np.savez_compressed``, atomically (temporary file, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- loading + mosaics

_REQUIRED = (
    "train_tiles",
    "train_tile_labels",
    "train_compositions",
    "test_tiles",
    "test_tile_labels",
    "test_compositions",
    "class_names",
    "build_params",
    "source_sha256",
)


def load_subset(path: str | Path) -> dict:
    """Read and validate a subset file written by :func:`save_subset`.

    Returns the arrays plus ``build_params`` (dict) and ``source_sha256`` (list of str).
    Every problem is a :class:`DataError` naming the file and the array.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"fashion-mosaic file not found: {path}; regenerate it with "
            f"`python -m mlrkit.data.fashion_mosaic --source {DEFAULT_SOURCE} --out {path}`"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    with z:
        missing = [k for k in _REQUIRED if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}")
        out: dict = {k: z[k] for k in z.files}
    try:
        out["build_params"] = json.loads(str(out["build_params"]))
        out["source_sha256"] = json.loads(str(out["source_sha256"]))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: build_params/source_sha256 are not valid JSON ({e})") from None
    grid = out["build_params"].get("grid")
    if not isinstance(grid, int) or grid < 1:
        raise DataError(f"{path}: build_params has no valid 'grid' (got {grid!r})")
    out["class_names"] = [str(s) for s in out["class_names"]]
    c = len(out["class_names"])
    for part in ("train", "test"):
        tiles, labels, comp = (out[f"{part}_{k}"] for k in ("tiles", "tile_labels", "compositions"))
        if tiles.dtype != np.uint8 or tiles.ndim != 3 or tiles.shape[1:] != (TILE, TILE):
            got = f"{tiles.dtype} {tiles.shape}"
            raise DataError(f"{path}: {part}_tiles must be uint8 [T, {TILE}, {TILE}], got {got}")
        if labels.shape != (len(tiles),) or (labels.size and int(labels.max()) >= c):
            got = f"{labels.shape}, max {labels.max() if labels.size else None}"
            raise DataError(f"{path}: {part}_tile_labels must be [T={len(tiles)}] in 0..{c - 1}, got {got}")
        if comp.ndim != 2 or comp.shape[1] != grid * grid or not np.issubdtype(comp.dtype, np.integer):
            got = f"{comp.dtype} {comp.shape}"
            raise DataError(f"{path}: {part}_compositions must be int [N, {grid * grid}], got {got}")
        if comp.size and (int(comp.min()) < 0 or int(comp.max()) >= len(tiles)):
            raise DataError(f"{path}: {part}_compositions index outside the {len(tiles)} {part} tiles")
    return out


def make_mosaics(tiles: np.ndarray, compositions: np.ndarray, k: int) -> np.ndarray:
    """Tile ``tiles[compositions]`` into uint8 mosaics [N, h*k, w*k] (cells row-major), vectorised."""
    tiles = np.asarray(tiles)
    comp = np.asarray(compositions)
    if tiles.ndim != 3:
        raise MlrkitError(f"tiles must be [T, H, W], got shape {tiles.shape}")
    if comp.ndim != 2 or comp.shape[1] != k * k:
        raise MlrkitError(f"compositions must be [N, {k * k}] for a {k}x{k} grid, got shape {comp.shape}")
    n, (h, w) = len(comp), tiles.shape[1:]
    cells = tiles[comp.astype(np.intp, copy=False)]  # [N, k*k, h, w]
    grid = cells.reshape(n, k, k, h, w).transpose(0, 1, 3, 2, 4)  # [N, row, y, col, x]
    return np.ascontiguousarray(grid).reshape(n, k * h, k * w)


def tile_labels(labels: np.ndarray, compositions: np.ndarray) -> np.ndarray:
    """Class of each cell, int64 [N, k*k]."""
    return np.asarray(labels).astype(np.int64)[np.asarray(compositions).astype(np.intp)]


def union_targets(cell_labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """uint8 [N, C]: 1 where a class occurs in at least one cell."""
    cell_labels = np.asarray(cell_labels)
    targets = np.zeros((len(cell_labels), num_classes), dtype=np.uint8)
    rows = np.repeat(np.arange(len(cell_labels)), cell_labels.shape[1])
    targets[rows, cell_labels.ravel()] = 1
    return targets


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlrkit.data.fashion_mosaic",
        description=(
            "Build the fashion-mosaic subset (real Fashion-MNIST photos tiled k x k, labels = union "
            "of the tiles) from the Fashion-MNIST idx files and write it as a compressed .npz."
        ),
        epilog=(
            "example:\n  python -m mlrkit.data.fashion_mosaic --source /usr/share/datasets/fashion-mnist "
            "--out src/mlrkit/builtin/fashion_mosaic.npz --seed 0\n\n"
            "The Fashion-MNIST files come from the Debian package dataset-fashion-mnist (MIT)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DEFAULT_PARAMS
    p.add_argument(
        "--source", default=DEFAULT_SOURCE, help="folder of the four *-ubyte.gz files (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (default: %(default)s)")
    p.add_argument("--grid", type=int, default=d["grid"], help="k: k x k tiles (default: %(default)s)")
    p.add_argument("--train-mosaics", type=int, default=d["train_mosaics"], help="default: %(default)s")
    p.add_argument("--test-mosaics", type=int, default=d["test_mosaics"], help="default: %(default)s")
    p.add_argument(
        "--train-tiles-per-class", type=int, default=DEFAULT_PARAMS["train_tiles_per_class"],
        help="distinct training-set photos per class in the train pool (default: %(default)s)",
    )
    p.add_argument(
        "--test-tiles-per-class", type=int, default=DEFAULT_PARAMS["test_tiles_per_class"],
        help="distinct test-set photos per class in the test pool (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        arrays = build_subset(
            args.source,
            seed=args.seed,
            grid=args.grid,
            train_mosaics=args.train_mosaics,
            test_mosaics=args.test_mosaics,
            train_tiles_per_class=args.train_tiles_per_class,
            test_tiles_per_class=args.test_tiles_per_class,
        )
        out = save_subset(arrays, args.out)
    except MlrkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    for part in ("train", "test"):
        y = union_targets(tile_labels(arrays[f"{part}_tile_labels"], arrays[f"{part}_compositions"]))
        print(
            f"  {part}: {len(y)} mosaics of {args.grid}x{args.grid} tiles "
            f"from {len(arrays[f'{part}_tiles'])} photos; "
            f"class prevalence {y.mean():.4f}, labels per mosaic {y.sum(1).mean():.3f}"
        )
    for line in json.loads(str(arrays["source_sha256"])):
        print(f"  source {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
