"""Issue 18: no silent defaults, the VL-vocabulary check, calibration, predict inputs, progress, compare,
export, trackers, help texts and data-entry errors. Small real data (scene, fashion-mosaic, mosaic-clip)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlrkit.config import build_config
from mlrkit.errors import ConfigError, DataError, MlrkitError

# --------------------------------------------------------------------------- defaults per method


@pytest.mark.parametrize("method,loss", [("linear", "an"), ("finetune", "an"), ("vlpl", "vlpl"), ("scpnet", "splc"),
                                         ("dualcoop", "asl"), ("positivecoop", "asl"), ("cam", "ll_r")])
def test_each_method_defaults_to_its_own_loss(method, loss):
    cfg = build_config(flags={"method": {"name": method}})
    assert cfg.loss.name == loss
    if loss == "asl":  # DualCoOp's ASL settings, as in configs/prompting
        assert cfg.loss.params == {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.05, "unknown": "ignore",
                                   "detach_focusing": True}


def test_explicit_loss_and_params_win_over_the_method_default():
    assert build_config(flags={"method": {"name": "vlpl"}, "loss": {"name": "an"}}).loss.name == "an"
    cfg = build_config(flags={"method": {"name": "dualcoop"}}, sets=["loss.gamma_neg=4"])
    assert cfg.loss.name == "asl" and cfg.loss.params["gamma_neg"] == 4


def test_zeroshot_needs_no_epochs_and_takes_the_vl_input_size():
    cfg = build_config(flags={"method": {"name": "zeroshot"}})
    assert cfg.train.epochs == 0 and cfg.data.image_size == 56  # mosaic-clip's own resolution
    assert build_config(flags={"method": {"name": "dualcoop"}, "vl": {"model": "tiny:rn"}}).data.image_size == 64
    assert build_config(flags={"method": {"name": "dualcoop"}, "data": {"image_size": 224}}).data.image_size == 224
    assert build_config(flags={"method": {"name": "finetune"}}).data.image_size == 448  # backbones: Cole et al.
    # any dataset, not only the default one (another data.name once dropped the method's image size: 448)
    cfg = build_config(flags={"method": {"name": "zeroshot"}, "data": {"name": "fashion-mosaic"}})
    assert cfg.data.image_size == 56 and cfg.data.name == "fashion-mosaic"
    from mlrkit.methods.base import build_method

    m = build_method(build_config(flags={"method": {"name": "zeroshot"}, "train": {"epochs": 3}}))
    with pytest.raises(ConfigError, match="drop --epochs"):
        m.prepare_data(None, device="cpu")


def test_pretrained_backbone_offline_is_a_fast_clear_error(monkeypatch):
    from mlrkit.models.backbones import build_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("resnet18", "tv:resnet18"):
        t0 = time.perf_counter()
        with pytest.raises(MlrkitError) as e:
            build_backbone(name, pretrained=True)
        msg = str(e.value)
        assert time.perf_counter() - t0 < 30  # no minute of download retries (loaded CI machines: generous)
        assert "model.weights=PATH" in msg and "model.pretrained=false" in msg and "\n" not in msg


def test_default_image_backbone_is_pretrained_and_random_weights_are_a_recorded_warning(monkeypatch, tmp_path):
    import torch

    from mlrkit.methods.base import TaskInfo, build_method

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = TaskInfo(class_names=["a", "b"], input_kind="images", image_size=32)
    with pytest.raises(MlrkitError, match="model.pretrained=false"):  # default: pretrained resnet50, offline
        build_method(build_config(flags={"method": {"name": "finetune"}})).build_model(task)
    m = build_method(build_config(flags={"method": {"name": "finetune"}},
                                  sets=["model.name=resnet18", "model.pretrained=false"]))
    m.build_model(task)
    assert any("RANDOM weights" in w for w in m.warnings)
    # a local weights file: loaded, no warning
    import timm

    ref = timm.create_model("resnet18", num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    m = build_method(build_config(flags={"method": {"name": "finetune"}},
                                  sets=["model.name=resnet18", f"model.weights={tmp_path / 'r18.pth'}"]))
    model = m.build_model(task)
    assert not m.warnings
    torch.testing.assert_close(model.backbone.model.conv1.weight, ref.conv1.weight)


# --------------------------------------------------------------------------- VL vocabulary


def test_vocabulary_check_numbers_of_mosaic_clip():
    from mlrkit.data import load_dataset
    from mlrkit.data.datasets.voc import VOC_CLASSES
    from mlrkit.vl import load
    from mlrkit.vl.vocabulary import MEAN_COSINE_BOUND, vocabulary_check

    vl = load("mosaic-clip")
    own = vocabulary_check(vl, load_dataset("fashion-mosaic").class_names)
    voc = vocabulary_check(vl, list(VOC_CLASSES))
    assert own.passed and own.token_coverage == 1.0 and own.mean_cosine < 0.85 and own.max_cosine < 0.9
    assert not voc.passed and voc.token_coverage == 0.0 and voc.mean_cosine > MEAN_COSINE_BOUND
    assert "cannot tell these classes apart" in voc.message()


def _mosaic_manifest(tmp_path: Path, names: list[str], n: int = 24) -> Path:
    from mlrkit.data import load_dataset

    ds = load_dataset("fashion-mosaic")
    (tmp_path / "img").mkdir()
    lines = ["image,split,labels"]
    for i in range(n):
        split, part = ("train", ds.trainval) if i < 2 * n // 3 else ("test", ds.test)
        part.images.load(i).save(tmp_path / "img" / f"{i}.png")
        present = [names[c] for c in np.flatnonzero(part.targets[i]) if c < len(names)] or [names[i % len(names)]]
        lines.append(f"img/{i}.png,{split},{'|'.join(present)}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


def test_zeroshot_on_classes_the_vl_model_does_not_know_warns_in_run_json(tmp_path):
    from mlrkit.engine.trainer import train

    manifest = _mosaic_manifest(tmp_path, ["person", "chair", "bottle", "sofa"])
    cfg = build_config(flags={"data": {"name": f"manifest:{manifest}"}, "method": {"name": "zeroshot"},
                              "out": str(tmp_path / "zs")})
    train(cfg, quiet=True)
    info = json.loads((tmp_path / "zs" / "run.json").read_text())
    assert info["vl_vocabulary"]["passed"] is False
    assert any("cannot tell these classes apart" in w for w in info["warnings"])
    assert "cannot tell these classes apart" in (tmp_path / "zs" / "console.log").read_text()


# --------------------------------------------------------------------------- calibration


def test_temperature_and_shift_recover_overconfident_and_saturated_logits():
    from mlrkit.engine.calibration import calibrate, fit_platt, fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(4000, 3))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.uint8)
    assert fit_temperature(5 * z, y) == pytest.approx(5, rel=0.1)
    T, b = fit_platt(5 * z + 30, y)  # every raw score saturated at p ~ 1, like zero-shot CLIP logits
    assert T == pytest.approx(5, rel=0.1) and b == pytest.approx(30, rel=0.05)
    cal = calibrate(5 * z + 30, y, None, ["a", "b", "c"])
    assert cal.saturated_share > 0.9 and cal.ece["val_after"] < 0.05 and cal.ece["val_before"] > 0.4
    np.testing.assert_allclose(cal.probabilities(5 * z + 30), 1 / (1 + np.exp(-(5 * z) / cal.temperature)),
                               atol=0.02)


def test_scores_that_rank_validation_backwards_keep_a_positive_bounded_temperature():
    """Validation scores anti-correlated with the labels (a small validation split, an untrained model) once
    gave T = -9.9e10: a negative temperature reverses every ranking. The slope now stops at its floor
    (T = 100 sd of the logits), and the calibration says so."""
    from mlrkit.engine.calibration import SLOPE_MIN, calibrate, fit_platt, uninformative

    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < 0.3).astype(np.uint8)
    z = -2.0 * y + rng.normal(0, 1, y.shape)
    T, b = fit_platt(z, y)
    assert T == pytest.approx(z.std() / SLOPE_MIN, rel=1e-3) and uninformative(T, z)
    cal = calibrate(z, y, None, list("abcd"))
    p = cal.probabilities(z)
    assert cal.uninformative and (np.diff(p.ravel()[np.argsort(z, axis=None)]) >= 0).all()  # increasing in z
    assert abs(p.mean() - y.mean()) < 0.02  # ~ the base rate, nearly constant
    good = 2.0 * y + rng.normal(0, 1, y.shape)
    assert not calibrate(good, y, None, list("abcd")).uninformative


def test_per_class_threshold_maximises_validation_f1():
    from mlrkit.engine.calibration import best_f1_threshold

    rng = np.random.default_rng(1)
    p = np.round(rng.random(200), 2)  # ties on purpose
    t = (rng.random(200) < p).astype(np.uint8)

    def f1(th):
        pred = p >= th
        tp = (pred & (t == 1)).sum()
        return 2 * tp / (pred.sum() + t.sum())

    th = best_f1_threshold(p, t)
    assert f1(th) == pytest.approx(max(f1(c) for c in np.unique(p)))
    assert best_f1_threshold(p, np.zeros(200)) is None


def test_run_without_calibration_file_keeps_the_old_behaviour(tmp_path):
    from mlrkit.engine.calibration import Calibration

    cal = Calibration.load(tmp_path, ["a", "b"])
    assert cal.temperature == 1.0 and list(cal.threshold_array()) == [0.5, 0.5]


# --------------------------------------------------------------------------- a scene run, shared


@pytest.fixture(scope="module")
def scene_runs(tmp_path_factory):
    from mlrkit.engine.trainer import train

    root = tmp_path_factory.mktemp("scene")
    for name, labels in (("full", "full"), ("sp", "single-positive")):
        train(build_config(flags={"data": {"name": "scene"}, "labels": {"protocol": labels},
                                  "train": {"epochs": 3}, "out": str(root / name)}), quiet=True)
    return root


def test_predict_cli_formats_and_array_inputs(scene_runs, tmp_path):
    from mlrkit.data import load_dataset
    from mlrkit.engine.inference import load_run

    x = load_dataset("scene").test.features[:5]
    np.save(tmp_path / "rows.npy", x)
    run = load_run(scene_runs / "full")
    pred = run.predict(x)
    assert pred.probs.shape == (5, 6) and pred.ids == [f"array#0[{j}]" for j in range(5)]
    np.testing.assert_allclose(run.predict(tmp_path / "rows.npy").probs, pred.probs)
    base = [sys.executable, "-m", "mlrkit", "predict", str(scene_runs / "full"), str(tmp_path / "rows.npy")]
    out = {f: subprocess.run(base + ["--format", f], capture_output=True, text=True, timeout=120).stdout
           for f in ("jsonl", "json", "csv")}
    lines = [json.loads(line) for line in out["jsonl"].splitlines()]
    assert len(lines) == 5 and json.loads(out["json"]) == lines  # json: one array of the jsonl objects
    assert out["csv"].splitlines()[0].split(",") == ["input", *run.class_names, "labels"]
    for rec, labels in zip(lines, pred.labels):
        assert rec["labels"] == [c for c, on in zip(run.class_names, labels) if on]


def test_expand_inputs_folders_globs_and_missing(tmp_path):
    from mlrkit.engine.inference import expand_inputs

    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/1.png", "a/b/2.JPG", "a/notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    assert expand_inputs([tmp_path / "a"]) == [tmp_path / "a/1.png", tmp_path / "a/b/2.JPG"]
    assert expand_inputs([str(tmp_path / "a" / "**" / "*.JPG")]) == [tmp_path / "a/b/2.JPG"]
    with pytest.raises(DataError, match="input not found"):
        expand_inputs([tmp_path / "nope.png"])
    with pytest.raises(DataError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.gif")])


def test_compare_and_export_of_feature_runs(scene_runs, tmp_path):
    import torch

    from mlrkit.analysis.compare import compare_runs
    from mlrkit.data import load_dataset
    from mlrkit.engine.export import export_run
    from mlrkit.engine.inference import load_run

    res = compare_runs([scene_runs / "full", scene_runs / "sp"], tmp_path / "cmp")
    assert "| full | linear | an | full | " in res["table"] and "| sp |" in res["table"]
    for f in ("compare.md", "compare.json", "curves.png", "per_class_ap.png"):
        assert (tmp_path / "cmp" / f).stat().st_size > 0
    x = load_dataset("scene").test.features[:7]
    meta = export_run(scene_runs / "full", "torchscript", tmp_path / "m.ts")
    assert meta["input"] == {"kind": "features", "shape": ["B", 294]}
    ts = torch.jit.load(str(tmp_path / "m.ts"))
    with torch.no_grad():
        got = ts(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, load_run(scene_runs / "full").predict(x).probs, atol=1e-5)


def test_results_epochs_count_from_one_and_best_pt_holds_weights_only(scene_runs):
    import torch

    res = json.loads((scene_runs / "full" / "results.json").read_text())
    rows = [json.loads(r) for r in (scene_runs / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and 1 <= res["best_epoch"] <= 3
    assert res["calibration"]["thresholds"] == "f1" and {"val_before", "val_after", "test_before", "test_after"} \
        <= set(res["calibration"]["ece"])
    ck = torch.load(scene_runs / "full" / "best.pt", weights_only=True)
    assert "optimizer" not in ck and "model" in ck


def test_trackers_tensorboard_and_mlflow(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the local file store behind this flag
    from mlrkit.engine.trainer import train

    uri = (tmp_path / "mlruns").as_uri()
    train(build_config(flags={"data": {"name": "emotions"}, "train": {"epochs": 2}, "out": str(tmp_path / "r"),
                              "track": {"tensorboard": True, "mlflow": uri}}), quiet=True)
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["mlrkit"], output_format="list")
    assert len(runs) == 1 and runs[0].data.metrics["test_map"] == pytest.approx(
        json.loads((tmp_path / "r" / "results.json").read_text())["test_map"])
    hist = mlflow.MlflowClient(uri).get_metric_history(runs[0].info.run_id, "val_map")
    assert [m.step for m in hist] == [1, 2]


def test_missing_tracker_package_is_an_error_not_a_skip(monkeypatch, tmp_path):
    import builtins

    from mlrkit.engine.tracking import Trackers

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match=r"mlrkit\[track\]"):
        Trackers(build_config(flags={"track": {"mlflow": "file:/x"}}), tmp_path)


# --------------------------------------------------------------------------- progress, help, data entry


def test_progress_lines_without_a_terminal(monkeypatch, caplog):
    from mlrkit.engine.progress import LineProgress, progress

    monkeypatch.setenv("MLRKIT_PROGRESS_EVERY", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="mlrkit"):
        bar = progress(range(4), desc="features (train)")
        assert isinstance(bar, LineProgress)
        assert list(bar) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[-2].startswith("features (train): 4/4 (100%)") and "it/s" in lines[-2]
    assert "ETA" in lines[0]


def test_every_option_has_help_and_every_command_an_example():
    from mlrkit.cli.main import build_parser

    missing, no_example = [], []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    if "example" not in (sp.epilog or ""):
                        no_example.append(" ".join(path + [name]))
                    walk(sp, path + [name])
            elif not isinstance(a, (argparse._HelpAction, argparse._VersionAction)) and not a.help:
                missing.append(f"{' '.join(path)} {a.option_strings or a.dest}")

    walk(build_parser(), [])
    assert not missing, missing
    assert not no_example, no_example


def test_unknown_dataset_that_is_a_csv_suggests_manifest(tmp_path):
    from mlrkit.data import load_dataset

    (tmp_path / "labels.csv").write_text("image,split,labels\n")
    with pytest.raises(DataError, match=r"manifest:.*labels\.csv"):
        load_dataset(str(tmp_path / "labels.csv"))


def test_manifest_label_with_semicolon_is_an_error_suggesting_pipe(tmp_path):
    from mlrkit.data import load_dataset

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text("image,split,labels\na.png,train,diningtable;person\n")
    with pytest.raises(DataError, match=r"m\.csv.*diningtable;person.*'\|'"):
        load_dataset(f"manifest:{tmp_path / 'm.csv'}")


def _voc_devkit(root: Path) -> Path:
    from PIL import Image

    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (year / sub).mkdir(parents=True)
    objects = {"000001": ["widget", "gadget"], "000002": ["widget"], "000003": ["gadget"], "000004": ["widget"]}
    for image_id, names in objects.items():
        objs = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
        (year / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objs}</annotation>")
        Image.new("RGB", (8, 8)).save(year / "JPEGImages" / f"{image_id}.jpg")
    (year / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n")
    (year / "ImageSets/Main/test.txt").write_text("000003\n000004\n")
    return root / "VOCdevkit"


def test_voc_layout_with_custom_classes(tmp_path):
    from mlrkit.data import load_dataset

    root = _voc_devkit(tmp_path)
    with pytest.raises(DataError, match="classes=FILE or classes=auto"):
        load_dataset("voc2007", root)
    ds = load_dataset("voc2007", root, classes="auto")
    assert ds.class_names == ["gadget", "widget"] and ds.trainval.targets.tolist() == [[1, 1], [0, 1]]
    (tmp_path / "classes.txt").write_text("widget\ngadget\n")
    ds = load_dataset("voc2007", root, classes=str(tmp_path / "classes.txt"))
    assert ds.class_names == ["widget", "gadget"] and ds.test.targets.tolist() == [[0, 1], [1, 0]]
    (tmp_path / "one.txt").write_text("widget\n")
    with pytest.raises(DataError, match="'gadget', which is not in the class list"):
        load_dataset("voc2007", root, classes=str(tmp_path / "one.txt"))


def test_saved_config_holds_absolute_dataset_paths(tmp_path, monkeypatch):
    (tmp_path / "m.csv").write_text("x")
    (tmp_path / "w.pth").write_text("x")
    monkeypatch.chdir(tmp_path)
    cfg = build_config(flags={"data": {"name": "manifest:m.csv"}}, sets=["model.name=resnet18", "model.weights=w.pth"])
    assert cfg.data.name == f"manifest:{tmp_path / 'm.csv'}" and cfg.model.params["weights"] == str(tmp_path / "w.pth")
    assert os.path.isabs(cfg.data.name.split(":", 1)[1])


def test_analyze_prior_and_vl_vocab_warn_on_classes_the_model_does_not_know(tmp_path, capsys):
    from mlrkit.cli.main import main

    assert main(["analyze", "prior", "--vl-model", "mosaic-clip", "--dataset", "voc2007", "--out",
                 str(tmp_path / "p.png"), "--json", str(tmp_path / "p.json")]) == 0
    assert "WARNING: the VL model cannot tell these classes apart" in capsys.readouterr().err
    assert json.loads((tmp_path / "p.json").read_text())["vl_vocabulary"]["passed"] is False
    assert main(["vl", "vocab", "--vl-model", "mosaic-clip", "--dataset", "voc2007"]) == 1
    assert main(["vl", "vocab", "--vl-model", "mosaic-clip", "--dataset", "fashion-mosaic"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("PASS: mosaic-clip on 10 classes")
