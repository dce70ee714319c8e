"""The built-in fashion-mosaic dataset: shipped file, labels, tiling, idx reader, reproducibility."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from mlrkit.data import DATASETS, load_dataset, split_train_val
from mlrkit.data import fashion_mosaic as fm
from mlrkit.data.datasets.builtin import builtin_path
from mlrkit.errors import DataError, MlrkitError

SOURCE = Path(fm.DEFAULT_SOURCE)
needs_source = pytest.mark.skipif(
    not all((SOURCE / f).is_file() for pair in fm.SOURCE_FILES.values() for f in pair),
    reason=f"Fashion-MNIST not installed in {SOURCE} (Debian package dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def shipped() -> dict:
    return fm.load_subset(builtin_path("fashion_mosaic.npz"))


@pytest.fixture(scope="module")
def ds():
    return load_dataset("fashion-mosaic")


def _row_hashes(tiles: np.ndarray) -> set[str]:
    return {hashlib.sha256(t.tobytes()).hexdigest() for t in tiles}


# --------------------------------------------------------------------------- shipped file


def test_shipped_file_small_and_loads(shipped):
    path = builtin_path("fashion_mosaic.npz")
    assert path.stat().st_size <= 6 * 1024 * 1024
    p = shipped["build_params"]
    assert p["grid"] == 2 and p["train_mosaics"] == 10_000 and p["test_mosaics"] == 2_000
    assert shipped["class_names"] == fm.CLASS_NAMES
    assert len(shipped["source_sha256"]) == 4
    for line in shipped["source_sha256"]:
        digest, name = line.split("  ")
        assert len(digest) == 64 and name.endswith("-ubyte.gz")


def test_tile_pools_disjoint_and_balanced(shipped):
    tr, te = shipped["train_tiles"], shipped["test_tiles"]
    assert tr.dtype == te.dtype == np.uint8 and tr.shape[1:] == te.shape[1:] == (28, 28)
    htr, hte = _row_hashes(tr), _row_hashes(te)
    assert not htr & hte, "a pixel-identical tile is in both the train and the test pool"
    assert len(htr) == len(tr) and len(hte) == len(te)  # no duplicates within a pool either
    for part in ("train", "test"):
        counts = np.bincount(shipped[f"{part}_tile_labels"], minlength=10)
        assert (counts == counts[0]).all() and counts[0] > 0
        src = shipped[f"{part}_tile_source"]
        assert len(np.unique(src)) == len(src)


def test_dataset_shapes_and_dtypes(ds):
    assert ds.name == "fashion-mosaic" and ds.num_classes == 10 and ds.class_names == fm.CLASS_NAMES
    for split, part, n in ((ds.trainval, "train", 10_000), (ds.test, "test", 2_000)):
        assert len(split) == n
        assert split.targets.dtype == np.uint8 and split.targets.shape == (n, 10)
        arr = split.images.array
        assert arr.dtype == np.uint8 and arr.shape == (n, 56, 56)
        assert split.images.name == f"fashion-mosaic/{part}"
        assert split.ids[123] == f"{part}/000123"
        tl = split.extras["tile_labels"]
        assert np.issubdtype(tl.dtype, np.integer) and tl.shape == (n, 4)
        assert split.extras["grid"] == 2
        im = split.images.load(0)
        assert im.mode == "RGB" and im.size == (56, 56)


def test_targets_are_union_of_tile_labels(ds):
    for split in (ds.trainval, ds.test):
        tl = split.extras["tile_labels"]
        expected = np.stack([(tl == c).any(axis=1) for c in range(10)], axis=1).astype(np.uint8)
        np.testing.assert_array_equal(split.targets, expected)
        assert split.targets.sum(1).min() >= 1


def test_class_prevalence(ds):
    for split in (ds.trainval, ds.test):
        prevalence = split.targets.mean()
        assert 0.28 <= prevalence <= 0.40
        per_class = split.targets.mean(0)
        assert per_class.min() > 0.2 and per_class.max() < 0.5


def test_mosaic_blocks_are_the_tiles(ds, shipped):
    for split, part in ((ds.trainval, "train"), (ds.test, "test")):
        tiles, comp = shipped[f"{part}_tiles"], shipped[f"{part}_compositions"]
        arr = split.images.array
        for r in range(2):
            for c in range(2):
                block = arr[:, 28 * r : 28 * (r + 1), 28 * c : 28 * (c + 1)]
                np.testing.assert_array_equal(block, tiles[comp[:, 2 * r + c]])
                cell_labels = shipped[f"{part}_tile_labels"][comp[:, 2 * r + c]]
                np.testing.assert_array_equal(split.extras["tile_labels"][:, 2 * r + c], cell_labels)


def test_make_mosaics_layout_3x3():
    tiles = np.arange(9 * 2 * 3, dtype=np.uint8).reshape(9, 2, 3)
    comp = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1, 0]])
    m = fm.make_mosaics(tiles, comp, 3)
    assert m.shape == (2, 6, 9) and m.dtype == np.uint8
    for n in range(2):
        for cell in range(9):
            r, c = divmod(cell, 3)
            np.testing.assert_array_equal(m[n, 2 * r : 2 * r + 2, 3 * c : 3 * c + 3], tiles[comp[n, cell]])
    with pytest.raises(MlrkitError, match="compositions"):
        fm.make_mosaics(tiles, comp, 2)


def test_limits_subsets_and_options():
    small = load_dataset("fashion-mosaic", limit_train=100, limit_test=30)
    full = load_dataset("fashion-mosaic")
    assert len(small.trainval) == 100 and len(small.test) == 30
    np.testing.assert_array_equal(small.trainval.images.array, full.trainval.images.array[:100])
    np.testing.assert_array_equal(small.test.extras["tile_labels"], full.test.extras["tile_labels"][:30])
    train, val = split_train_val(small.trainval)
    assert val.extras["tile_labels"].shape == (20, 4) and val.extras["grid"] == 2
    np.testing.assert_array_equal(val.extras["tile_labels"], small.trainval.extras["tile_labels"][val.index])
    with pytest.raises(DataError, match="limit_train"):
        load_dataset("fashion-mosaic", limit_train=10_001)
    with pytest.raises(MlrkitError, match="limit_test"):
        load_dataset("fashion-mosaic", limit_test="5")
    with pytest.raises(MlrkitError, match="unknown options"):
        load_dataset("fashion-mosaic", limti_train=5)


def test_registered_and_fast():
    import mlrkit.data.datasets  # noqa: F401

    entry = DATASETS.entry("fashion-mosaic")
    assert entry.description == (
        "built-in, real photos (Fashion-MNIST) tiled 2x2, labels = union of tiles; constructed benchmark"
    )
    start = time.perf_counter()
    load_dataset("fashion-mosaic")
    assert time.perf_counter() - start < 3.0  # typically ~0.1 s; a per-mosaic loop would be far slower


# --------------------------------------------------------------------------- idx reader


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)
    return path


def test_read_idx_valid(tmp_path):
    p = _write_idx(tmp_path / "ok-images-idx3-ubyte.gz", 2051, (2, 28, 28), bytes(range(256)) * 6 + bytes(32))
    a = fm.read_idx(p, 2051)
    assert a.shape == (2, 28, 28) and a.dtype == np.uint8 and a[0, 0, 5] == 5


@pytest.mark.parametrize(
    "kind",
    ["bad-magic", "wrong-kind", "truncated", "not-gzip", "short"],
)
def test_read_idx_rejects_corrupted(tmp_path, kind):
    name = tmp_path / f"{kind}-images-idx3-ubyte.gz"
    if kind == "bad-magic":
        _write_idx(name, 0x12340803, (2, 28, 28), bytes(2 * 784))
    elif kind == "wrong-kind":
        _write_idx(name, 2049, (2,), bytes(2))  # a label file where images are expected
    elif kind == "truncated":
        _write_idx(name, 2051, (2, 28, 28), bytes(784 + 100))
    elif kind == "not-gzip":
        name.write_bytes(b"this is not gzip data at all")
    else:
        _write_idx(name, 2051, (2, 28, 28), b"")
        name.write_bytes(name.read_bytes()[:-8])  # cut inside the gzip stream
    with pytest.raises(DataError) as err:
        fm.read_idx(name, 2051)
    assert str(name) in str(err.value)


def test_missing_source_is_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        fm.load_fashion_mnist(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        _write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2051, (1, 28, 28), bytes(784))
        fm.load_fashion_mnist(tmp_path, "train")


def test_corrupted_subset_file(tmp_path):
    bad = tmp_path / "fm.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=str(bad)):
        fm.load_subset(bad)
    with pytest.raises(DataError, match="regenerate"):
        fm.load_subset(tmp_path / "absent.npz")
    arrays = dict(np.load(builtin_path("fashion_mosaic.npz")))
    arrays["test_compositions"] = arrays["test_compositions"].astype(np.int32) + 10_000
    np.savez(tmp_path / "oob.npz", **arrays)
    with pytest.raises(DataError, match="test_compositions"):
        fm.load_subset(tmp_path / "oob.npz")


# --------------------------------------------------------------------------- reproducibility


@needs_source
def test_rebuild_reproduces_shipped_file(shipped):
    params = dict(shipped["build_params"])
    assert params.pop("format_version") == fm.FORMAT_VERSION
    rebuilt = fm.build_subset(SOURCE, **params)
    assert json.loads(str(rebuilt["source_sha256"])) == shipped["source_sha256"], "source files differ"
    for key in (
        "train_tiles", "train_tile_labels", "train_tile_source", "train_compositions",
        "test_tiles", "test_tile_labels", "test_tile_source", "test_compositions",
    ):
        assert rebuilt[key].dtype == shipped[key].dtype, key
        assert rebuilt[key].shape == shipped[key].shape, key
        assert rebuilt[key].tobytes() == shipped[key].tobytes(), key


@needs_source
def test_tiles_are_the_source_photos(shipped):
    for part in ("train", "test"):
        images, labels = fm.load_fashion_mnist(SOURCE, part)
        src = shipped[f"{part}_tile_source"]
        np.testing.assert_array_equal(shipped[f"{part}_tiles"], images[src])
        np.testing.assert_array_equal(shipped[f"{part}_tile_labels"], labels[src])


@needs_source
def test_cli_small_build(tmp_path, capsys):
    out = tmp_path / "small.npz"
    rc = fm.main([
        "--source", str(SOURCE), "--out", str(out), "--seed", "3", "--grid", "3",
        "--train-mosaics", "50", "--test-mosaics", "20",
        "--train-tiles-per-class", "5", "--test-tiles-per-class", "2",
    ])
    assert rc == 0 and "class prevalence" in capsys.readouterr().out
    sub = fm.load_subset(out)
    assert sub["build_params"]["seed"] == 3 and sub["train_compositions"].shape == (50, 9)
    assert sub["train_tiles"].shape == (50, 28, 28) and sub["test_tiles"].shape == (20, 28, 28)
    m = fm.make_mosaics(sub["test_tiles"], sub["test_compositions"], 3)
    assert m.shape == (20, 84, 84)
    assert fm.main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_cli_help_has_example(capsys):
    with pytest.raises(SystemExit) as e:
        fm.main(["--help"])
    assert e.value.code == 0
    assert "example:" in capsys.readouterr().out


def _write_idx_array(path, array: np.ndarray) -> None:
    import gzip

    magic = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(magic + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_heldout_mosaics_never_use_a_builtin_photo(tmp_path, shipped):
    """`mlrkit vl pretrain --heldout-source`: the mosaics are made only of training-file photos that the
    built-in subset does not use (checked on a synthetic Fashion-MNIST whose photos encode their index)."""
    from mlrkit.vl.pretraining import heldout_mosaics

    rng = np.random.default_rng(0)
    n_train, n_test = 60000, 10000
    train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    idx = np.arange(n_train)
    train[:, 0, 0], train[:, 0, 1], train[:, 0, 2] = idx >> 16, (idx >> 8) & 255, idx & 255  # photo -> its index
    labels = (idx % 10).astype(np.uint8)
    _write_idx_array(tmp_path / "train-images-idx3-ubyte.gz", train)
    _write_idx_array(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    _write_idx_array(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    _write_idx_array(tmp_path / "t10k-labels-idx1-ubyte.gz", (np.arange(n_test) % 10).astype(np.uint8))
    mosaics, targets = heldout_mosaics(tmp_path, 500, seed=0)
    assert mosaics.shape == (500, 56, 56) and mosaics.dtype == np.uint8 and targets.shape == (500, 10)
    used = set()
    for y0 in (0, 28):
        for x0 in (0, 28):
            px = mosaics[:, y0, x0:x0 + 3].astype(np.int64)
            src = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
            assert (targets[np.arange(500), src % 10] == 1).all()  # the target names each tile's class
            used |= set(src.tolist())
    assert not used & set(np.asarray(shipped["train_tile_source"]).tolist())
    assert len(used) > 1500  # drawn from the large remaining pool, not a handful of photos
    again, _ = heldout_mosaics(tmp_path, 500, seed=0)
    assert np.array_equal(again, mosaics)
