"""Image pipeline: transforms follow the model, bad images, frozen features cached once, finetune."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mlrkit.config import build_config
from mlrkit.engine.trainer import train
from mlrkit.errors import DataError
from mlrkit.features import FeatureStore
from mlrkit.models.backbones import build_backbone

from .conftest import run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))


def write_manifest(root, n_train=40, n_test=12, corrupt: tuple[str, ...] = ()):
    """A manifest dataset of real Fashion-MNIST mosaics saved as PNG files."""
    from mlrkit.data import load_dataset

    ds = load_dataset("fashion-mosaic", limit_train=n_train, limit_test=n_test)
    names = ds.class_names
    lines = ["image,labels,split"]
    for split_name, split in (("train", ds.trainval), ("test", ds.test)):
        for i in range(len(split)):
            rel = f"img/{split_name}_{i:03d}.png"
            (root / "img").mkdir(exist_ok=True)
            split.images.load(i).save(root / rel)
            labels = "|".join(names[j] for j in np.flatnonzero(split.targets[i]))
            lines.append(f"{rel},{labels},{split_name}")
    for rel in corrupt:
        (root / rel).write_bytes(b"not a png at all")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def image_cfg(out, dataset, **over):
    flags = {"out": str(out), "data": {"name": dataset, "image_size": 32}, "labels": {"protocol": "full"},
             "loss": {"name": "bce"}, "method": {"name": "finetune"}, "model": {"name": "smallcnn", "width": 8},
             "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3}}
    for k, v in over.items():
        flags[k] = {**flags.get(k, {}), **v} if isinstance(v, dict) else v
    return build_config(flags=flags)


def test_transform_uses_the_models_normalisation():
    bb = build_backbone("resnet18")
    from mlrkit.data.transforms import build_transform

    tf = build_transform(64, bb.mean, bb.std, train=False)
    x = tf(Image.new("RGB", (20, 10), (255, 0, 0)))
    assert x.shape == (3, 64, 64)
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(bb.mean)) / torch.tensor(bb.std)
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_unreadable_image_raises_unless_skipped(tmp_path):
    manifest = write_manifest(tmp_path, corrupt=("img/train_003.png",))
    cfg = image_cfg(tmp_path / "run1", f"manifest:{manifest}")
    with pytest.raises(DataError, match="train_003.png"):
        train(cfg, quiet=True)
    cfg = image_cfg(tmp_path / "run2", f"manifest:{manifest}", data={"skip_bad_images": True})
    res = train(cfg, quiet=True)
    run = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert run["skipped_images"] == {"trainval": ["img/train_003.png"]}
    assert run["n_train"] + run["n_val"] == 39
    assert 0 <= res["test_map"] <= 1


def test_skip_bad_images_flag_reports_on_cli(tmp_path):
    manifest = write_manifest(tmp_path, n_train=20, n_test=6, corrupt=("img/test_001.png",))
    r = run_cli("train", "--dataset", f"manifest:{manifest}", "--method", "finetune", "--loss", "bce",
                "--epochs", "1", "--out", str(tmp_path / "r"), "--skip-bad-images", "--quiet",
                "--set", "model.name=smallcnn", "--set", "model.width=8", "--set", "data.image_size=32")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unreadable images" in r.stderr and "img/test_001.png" in r.stderr


def test_feature_store_extracts_once_and_resumes(tmp_path):
    from mlrkit.data import load_dataset
    from mlrkit.data.transforms import build_transform

    images = load_dataset("fashion-mosaic", limit_train=50, limit_test=5).trainval.images
    torch.manual_seed(0)
    bb = build_backbone("smallcnn", width=8).eval()
    tf = build_transform(32, bb.mean, bb.std, train=False)
    calls = {"n": 0}

    def encode(x):
        calls["n"] += len(x)
        return bb(x)

    store = FeatureStore(tmp_path / "fs")
    part = store.get("smallcnn-test", encode, images, tf, batch_size=8, progress=False, stop_after=16)
    assert calls["n"] == 16
    assert not store.info("smallcnn-test", images, tf)["complete"]
    full = store.get("smallcnn-test", encode, images, tf, batch_size=8, progress=False)
    assert calls["n"] == 50, "resumed extraction must only compute the missing rows"
    np.testing.assert_array_equal(np.asarray(part[:16]), np.asarray(full[:16]))
    again = store.get("smallcnn-test", encode, images, tf, batch_size=8, progress=False)
    assert calls["n"] == 50, "a complete entry is never recomputed"
    with torch.no_grad():
        direct = torch.cat([bb(torch.stack([tf(images.load(i)) for i in range(8)]))]).numpy()
    np.testing.assert_allclose(np.asarray(again[:8]), direct, rtol=1e-5, atol=1e-6)
    other_tf = build_transform(24, bb.mean, bb.std, train=False)
    assert store.entry_dir("smallcnn-test", images, other_tf) != store.entry_dir("smallcnn-test", images, tf)


def test_linear_on_images_uses_cached_frozen_features_and_predicts_images(tmp_path):
    manifest = write_manifest(tmp_path, n_train=30, n_test=8)
    cfg = image_cfg(tmp_path / "lin", f"manifest:{manifest}", method={"name": "linear"},
                    train={"epochs": 2, "batch_size": 8})
    res = train(cfg, quiet=True)
    assert 0 <= res["test_map"] <= 1
    entries = list((tmp_path / "cache" / "features").iterdir())
    assert len(entries) == 3  # train, val, test: extracted once each
    from mlrkit.engine.inference import load_run, predict_inputs

    run = load_run(tmp_path / "lin")
    ids, probs = predict_inputs(run, [tmp_path / "img" / "test_000.png", tmp_path / "img" / "test_001.png"])
    assert probs.shape == (2, 10) and ((probs > 0) & (probs < 1)).all()


def test_finetune_end_to_end_and_linear_init_are_reproducible(tmp_path):
    r1 = train(image_cfg(tmp_path / "a", "fashion-mosaic", data={"limit_train": 80}), quiet=True)
    r2 = train(image_cfg(tmp_path / "b", "fashion-mosaic", data={"limit_train": 80}), quiet=True)
    assert r1["test_map"] == r2["test_map"]
    r3 = train(image_cfg(tmp_path / "c", "fashion-mosaic", data={"limit_train": 80},
                         method={"linear_init_epochs": 2}), quiet=True)
    assert r3["test_map"] != r1["test_map"]
    assert 0.0 < r3["test_map"] <= 1.0


def test_array_image_keys_survive_subsets():
    """A validation subset's cache keys name the original rows (a different split seed never collides)."""
    from mlrkit.data import load_dataset, split_train_val

    ds = load_dataset("fashion-mosaic", limit_train=50, limit_test=5)
    _, va1 = split_train_val(ds.trainval, 0.2, 1200)
    _, va2 = split_train_val(ds.trainval, 0.2, 7)
    assert va1.images.key(0) == ds.trainval.images.key(int(va1.index[0]))
    assert [va1.images.key(i) for i in range(len(va1))] != [va2.images.key(i) for i in range(len(va2))]
    assert ds.trainval.images.key(0) != ds.test.images.key(0)
