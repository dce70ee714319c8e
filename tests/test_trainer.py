"""Trainer: reproducibility, exact resume after a kill, run directory contents, label files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlrkit.config import build_config
from mlrkit.engine.trainer import train
from mlrkit.errors import DataError, MlrkitError
from mlrkit.labels import ObservedLabels, array_sha256

QUICK = {"method": {"name": "mlp", "hidden_dim": 64}, "train": {"epochs": 4, "batch_size": 32, "lr": 1e-3}}


def quick_cfg(out: Path, dataset: str, **over):
    flags = {**QUICK, "out": str(out), "data": {"name": dataset}, "labels": {"protocol": "single-positive"},
             "loss": {"name": "an"}}
    for k, v in over.items():
        flags[k] = {**flags.get(k, {}), **v} if isinstance(v, dict) else v
    return build_config(flags=flags)


def test_same_seed_same_result_on_features_file(tmp_path, yeast_npz):
    spec = f"features:{yeast_npz}"
    r1 = train(quick_cfg(tmp_path / "a", spec), quiet=True)
    r2 = train(quick_cfg(tmp_path / "b", spec), quiet=True)
    assert r1["test_map"] == r2["test_map"]
    assert r1["per_class_ap"] == r2["per_class_ap"]
    r3 = train(quick_cfg(tmp_path / "c", spec, seed=1), quiet=True)
    assert r3["test_map"] != r1["test_map"]
    assert r3["observed_sha256"] != r1["observed_sha256"]


def test_run_directory_contents(tmp_path):
    out = tmp_path / "run"
    res = train(quick_cfg(out, "scene"), quiet=True)
    for name in ("config.yaml", "run.json", "metrics.jsonl", "best.pt", "results.json", "calibration.json",
                 "console.log", "observed_labels.npz"):
        assert (out / name).is_file(), name
    assert not (out / "last.pt").exists(), "optimizer state is removed when the run finishes (train.keep_last)"
    import torch

    best_ck = torch.load(out / "best.pt", weights_only=True)
    assert "model" in best_ck and not {"optimizer", "scheduler", "scaler", "loss"} & set(best_ck)
    log = (out / "console.log").read_text()
    assert "epoch 4/4" in log and "test mAP" in log and "calibration on validation" in log
    import os

    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "best.pt", "config.yaml"):  # as a plain file: 0666 minus umask, not mkstemp's 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert 0.0 <= saved["test_map"] <= 1.0 and 0.0 <= saved["val_map"] <= 1.0
    assert set(saved["per_class_ap"]) == {"Beach", "Sunset", "FallFoliage", "Field", "Mountain", "Urban"}
    obs = ObservedLabels.load(out / "observed_labels.npz")
    assert saved["observed_sha256"] == obs.sha256 == array_sha256(obs.observed)
    run = json.loads((out / "run.json").read_text())
    assert run["observed_sha256"] == obs.sha256
    assert run["n_train"] + run["n_val"] == 1211 and run["n_val"] == round(0.2 * 1211)
    assert {"torch", "python", "device", "timings", "seed"} <= set(run)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # epochs count from 1, as on the console
    best = max(rows, key=lambda r: r["val_map"])
    assert saved["best_epoch"] == best["epoch"] and saved["val_map"] == pytest.approx(best["val_map"])
    assert all("test" not in k for r in rows for k in r), "test metrics must not be logged during training"


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    train(quick_cfg(out, "scene"), quiet=True)
    with pytest.raises(MlrkitError, match="--resume"):
        train(quick_cfg(out, "scene"), quiet=True)


def test_resume_with_changed_config_is_refused(tmp_path):
    out = tmp_path / "run"
    train(quick_cfg(out, "scene"), quiet=True)
    with pytest.raises(MlrkitError, match="differs"):
        train(quick_cfg(out, "scene", train={"lr": 0.5}), resume=True, quiet=True)


def test_resume_of_finished_run_gives_same_results(tmp_path):
    out = tmp_path / "run"
    r1 = train(quick_cfg(out, "scene"), quiet=True)
    r2 = train(quick_cfg(out, "scene"), resume=True, quiet=True)
    assert r1 == r2


def test_prepared_label_file_equals_protocol_and_mismatch_refused(tmp_path):
    from mlrkit.data import load_dataset
    from mlrkit.labels import observe

    ds = load_dataset("yeast")
    path = observe(ds.trainval.targets, "single-positive", 0, "yeast", ds.class_names).save(tmp_path / "sp.npz")
    r_file = train(quick_cfg(tmp_path / "f", "yeast", labels={"protocol": str(path)}), quiet=True)
    r_proto = train(quick_cfg(tmp_path / "p", "yeast"), quiet=True)
    assert r_file["observed_sha256"] == r_proto["observed_sha256"]
    assert r_file["test_map"] == r_proto["test_map"]
    scene = load_dataset("scene")
    other = observe(scene.trainval.targets, "single-positive", 0, "scene").save(tmp_path / "scene.npz")
    with pytest.raises(DataError, match="shape"):
        train(quick_cfg(tmp_path / "x", "yeast", labels={"protocol": str(other)}), quiet=True)


def test_validation_on_observed_labels_changes_selection_target(tmp_path):
    res = train(quick_cfg(tmp_path / "o", "yeast", data={"val_labels": "observed"}), quiet=True)
    full = train(quick_cfg(tmp_path / "f", "yeast"), quiet=True)
    assert res["val_map"] != full["val_map"]


def _read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_killed_run_resumes_to_identical_results(tmp_path, yeast_npz):
    """SIGKILL a real training process mid-run, resume it, compare with an uninterrupted run."""
    args = ["--dataset", f"features:{yeast_npz}", "--method", "mlp", "--loss", "an", "--labels", "single-positive",
            "--seed", "3", "--epochs", "30", "--batch-size", "8", "--lr", "3e-4", "--quiet",
            "--set", "method.dropout=0.3", "--set", "train.scheduler=cosine",
            "--set", "train.checkpoint_every_s=0"]  # last.pt after every epoch: the kill lands mid-run
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mlrkit", "train", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before the kill; make it longer"
    done_before = len(metrics.read_text().splitlines())
    assert 3 <= done_before < 30
    r = subprocess.run([sys.executable, "-m", "mlrkit", "train", "--out", str(killed), "--resume", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    straight = tmp_path / "straight"
    r = subprocess.run([sys.executable, "-m", "mlrkit", "train", *args, "--out", str(straight)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _read_results(killed) == _read_results(straight)
    rows_k = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    rows_s = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_k] == list(range(1, 31))
    assert [r["val_map"] for r in rows_k] == [r["val_map"] for r in rows_s]


def test_ema_and_amp_paths_train(tmp_path):
    res = train(quick_cfg(tmp_path / "e", "scene", train={"ema": 0.9, "amp": True, "scheduler": "onecycle",
                                                          "optimizer": "adamw", "weight_decay": 1e-4}), quiet=True)
    assert 0.3 < res["test_map"] <= 1.0
    np.testing.assert_allclose(sum(v for v in res["per_class_ap"].values()) / 6, res["test_map"])
