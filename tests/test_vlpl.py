"""Zero-shot, VLPL pseudo-labels and loss, `mlrkit pseudo-label` / `extract-features` (tiny CLIP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlrkit.config import build_config
from mlrkit.engine.trainer import train
from mlrkit.losses import build
from mlrkit.vl.pseudo_labels import PseudoLabels, pseudo_label_quality, vl_pseudo_labels

from .conftest import run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))


def test_pseudo_labels_follow_the_temperature_softmax():
    sim = np.array([[0.30, 0.28, 0.10, 0.05], [0.2, 0.2, 0.2, 0.2]])
    tau, theta = 0.03, 0.3
    s = np.exp(sim / tau)
    s /= s.sum(1, keepdims=True)
    pl = vl_pseudo_labels(sim, tau, theta)
    np.testing.assert_array_equal(pl, (s > theta).astype(np.int8))
    assert pl[0].tolist() == [1, 1, 0, 0] and pl[1].tolist() == [0, 0, 0, 0]
    pl = vl_pseudo_labels(sim, tau, theta, delta=0.5)  # 2 lowest of 4 per image become -1
    assert pl[0].tolist() == [1, 1, -1, -1]
    assert (pl[1] == -1).sum() == 2


def test_pseudo_label_quality_counts():
    pl = np.array([[1, -1, 0], [1, 1, -1]], np.int8)
    t = np.array([[1, 0, 1], [0, 1, 0]], np.uint8)
    q = pseudo_label_quality(pl, t)
    assert q["pseudo_positives"] == 3 and q["positive_precision"] == pytest.approx(2 / 3)
    assert q["positive_recall"] == pytest.approx(2 / 3)
    assert q["negative_precision"] == 1.0 and q["negative_recall"] == pytest.approx(2 / 3)
    obs = np.array([[1, 0, 0], [0, 0, 0]], np.int8)  # entry (0,0) known: excluded from scope
    assert pseudo_label_quality(pl, t, obs)["pseudo_positives"] == 2


def test_vlpl_loss_matches_equation():
    loss = build("vlpl", alpha=0.2, beta=0.7, rho=0.1, beta_neg=0.5)
    x = torch.tensor([[0.3, -1.2, 2.0, 0.5, -0.4]], dtype=torch.float64)
    obs = torch.tensor([[1, -1, 0, 0, 0]], dtype=torch.int8)
    loss.prepare(obs)
    loss.set_pseudo_labels(torch.tensor([[0, 0, 1, -1, 0]], dtype=torch.int8))
    p = torch.sigmoid(x)[0].numpy()
    lp, l1p = np.log(p), np.log(1 - p)
    h = -(p * lp + (1 - p) * l1p)
    expected = np.array([-lp[0], -l1p[1], -0.7 * (0.9 * lp[2] + 0.1 * l1p[2]),
                         -0.5 * (0.1 * lp[3] + 0.9 * l1p[3]), -0.2 * h[4]]).mean()
    got = loss(x, obs, index=torch.tensor([0]), epoch=0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    warm = build("vlpl", alpha=0.2, warmup_epochs=2)
    warm.prepare(obs)
    warm.set_pseudo_labels(torch.tensor([[0, 0, 1, -1, 0]], dtype=torch.int8))
    em = np.array([-lp[0], -l1p[1], -0.2 * h[2], -0.2 * h[3], -0.2 * h[4]]).mean()
    assert float(warm(x, obs, index=torch.tensor([0]), epoch=1)) == pytest.approx(em, rel=1e-6)
    assert "pseudo" in warm.state_dict()


def test_vlpl_without_pseudo_labels_is_an_error():
    loss = build("vlpl")
    with pytest.raises(ValueError, match="pseudo-labels"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int8), index=torch.arange(2))


def _cfg(out, method, loss, protocol, epochs=1, **method_params):
    flags = {
        "out": str(out), "data": {"name": "fashion-mosaic", "limit_train": 120, "image_size": 32},
        "method": {"name": method, **method_params}, "model": {"name": "smallcnn", "width": 8},
        "loss": {"name": loss}, "labels": {"protocol": protocol}, "train": {"epochs": epochs, "batch_size": 16},
        "vl": {"model": "tiny"}}
    if method == "zeroshot":  # no backbone: a model section would be an error (nothing reads it)
        del flags["model"]
    return build_config(flags=flags)


def test_zeroshot_run_and_predict_images(tmp_path):
    res = train(_cfg(tmp_path / "zs", "zeroshot", "bce", "full", epochs=0), quiet=True)
    assert 0 < res["test_map"] <= 1 and res["best_epoch"] == 0  # epochs count from 1; 0 = nothing trained
    from mlrkit.data import load_dataset
    from mlrkit.engine.inference import load_run, predict_inputs

    img = load_dataset("fashion-mosaic", limit_train=2, limit_test=2).test.images.load(0)
    img.save(tmp_path / "x.png")
    ids, probs = predict_inputs(load_run(tmp_path / "zs"), [tmp_path / "x.png"])
    assert probs.shape == (1, 10)
    with pytest.raises(Exception, match="trains nothing.*drop --epochs"):
        train(_cfg(tmp_path / "zs2", "zeroshot", "bce", "full", epochs=1), quiet=True)


def test_vlpl_method_trains_with_cached_pseudo_labels(tmp_path):
    res = train(_cfg(tmp_path / "v", "vlpl", "vlpl", "single-positive", tau=0.05, theta=0.12), quiet=True)
    assert 0 < res["test_map"] <= 1
    info = json.loads((tmp_path / "v" / "run.json").read_text())["method_info"]
    q = info["pseudo_label_quality"]
    assert q["pseudo_positives"] > 0 and 0 <= q["positive_precision"] <= 1
    pl = PseudoLabels.load(tmp_path / "v" / "pseudo_labels.npz")
    assert pl.labels.shape == (96, 10) and pl.tau == 0.05 and pl.vl_model == "tiny"
    cache = list((tmp_path / "cache" / "features").iterdir())
    assert len(cache) == 1, "pseudo-labels come from features computed once"
    with pytest.raises(Exception, match="loss vlpl"):
        train(_cfg(tmp_path / "v2", "vlpl", "an", "single-positive"), quiet=True)


def test_pseudo_label_and_extract_features_cli(tmp_path):
    out = tmp_path / "pl.npz"
    r = run_cli("pseudo-label", "--dataset", "fashion-mosaic", "--vl-model", "tiny", "--tau", "0.05",
                "--theta", "0.12", "--labels", "single-positive", "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert report["n_images"] == 10000 and "unknown_in_observed" in report["quality"]
    assert PseudoLabels.load(out).sha256 == report["sha256"]
    feats = tmp_path / "f.npz"
    r = run_cli("extract-features", "--dataset", "fashion-mosaic", "--vl-model", "tiny", "--out", str(feats))
    assert r.returncode == 0, r.stderr
    with np.load(feats) as z:
        assert z["X_train"].shape == (10000, 64) and z["Y_test"].shape == (2000, 10)
    r = run_cli("train", "--dataset", f"features:{feats}", "--method", "linear", "--loss", "an", "--labels",
                "single-positive", "--epochs", "1", "--out", str(tmp_path / "lin"), "--quiet")
    assert r.returncode == 0, r.stderr
