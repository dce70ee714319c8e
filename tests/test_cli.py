"""The command line: help texts, every command end to end, one-line errors for bad input."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from mlrkit.cli.main import build_parser, main

from .conftest import run_cli

COMMANDS = ["list", "prepare", "train", "evaluate", "predict", "demo", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"mlrkit {command}" in out


def test_parser_knows_exactly_the_documented_train_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    flags = {s for a in sub._actions for s in a.option_strings}
    for f in ("--dataset", "--method", "--loss", "--labels", "--seed", "--epochs", "--batch-size", "--lr",
              "--out", "--root", "--config", "--set", "--resume", "--skip-bad-images"):
        assert f in flags


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("datasets:", "scene", "yeast", "fashion-mosaic", "features", "protocols:", "single-positive",
                 "losses:", "bce", "an", "methods:", "linear", "mlp"):
        assert word in out


def test_prepare_prints_statistics_and_writes_hashed_file(tmp_path, capsys):
    out = tmp_path / "sp.npz"
    assert main(["prepare", "--dataset", "scene", "--labels", "single-positive", "--seed", "0",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "positives per image: mean 1.000" in text
    assert "classes without a positive: 0" in text
    assert "known fraction 0.1667" in text
    from mlrkit.labels import ObservedLabels

    obs = ObservedLabels.load(out)
    assert obs.sha256 in text and obs.protocol == "single-positive" and obs.observed.shape == (1211, 6)


def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "yeast", "--method", "linear", "--loss", "bce", "--labels", "full",
                 "--seed", "0", "--epochs", "3", "--batch-size", "64", "--lr", "1e-3", "--out", str(run),
                 "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(line)
    assert 0 < res["test_map"] <= 1
    assert main(["evaluate", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test"]["map"] == pytest.approx(res["test_map"], abs=1e-9)
    assert ev["val"]["map"] == pytest.approx(res["val_map"], abs=1e-9)
    assert {"CF1", "OF1", "P@3", "R@3"} <= set(ev["test"])
    assert main(["evaluate", str(run)]) == 0
    assert "test" in capsys.readouterr().out
    from mlrkit.data import load_dataset

    x = load_dataset("yeast").test.features[:5]
    np.save(tmp_path / "rows.npy", x)
    assert main(["predict", str(run), str(tmp_path / "rows.npy"), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][0] == "input" and len(rows[0]) == 16 and rows[0][-1] == "labels" and len(rows) == 6
    probs = np.array([[float(v) for v in r[1:-1]] for r in rows[1:]])
    assert ((probs >= 0) & (probs <= 1)).all()
    # the same rows through the library give the same probabilities (standardisation re-applied)
    from mlrkit.data import Split
    from mlrkit.engine.inference import load_run

    loaded = load_run(run)
    logits = loaded.scores(Split(targets=np.zeros((5, 14), np.uint8), ids=list("abcde"), features=x))
    # probabilities after the run's calibration (calibration.json, fitted on validation)
    np.testing.assert_allclose(probs, loaded.calibration.probabilities(logits), atol=1e-6)
    assert main(["predict", str(run), str(tmp_path / "rows.npy"), "--format", "jsonl"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(first["scores"]) == {f"Class{i}" for i in range(1, 15)}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "nope", "--out", "X"], "unknown dataset 'nope'"),
        (["train", "--dataset", "scene", "--labels", "partial:abc", "--out", "X"], "not a number"),
        (["train", "--dataset", "scene", "--loss", "an", "--set", "loss.alpha=1", "--out", "X"], "no hyper-parameter"),
        (["train", "--dataset", "scene", "--set", "train.epochz=1", "--out", "X"], "did you mean epochs"),
        (["train", "--dataset", "scene", "--method", "linearr", "--out", "X"], "did you mean linear"),
        (["prepare", "--dataset", "scene", "--labels", "partial:1.5"], "fraction must be in"),
        (["evaluate", "does/not/exist"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_error(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlrkit: error:") and message in err and "\n" not in err


def test_nan_features_file_is_named_in_error(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    x = np.ones((10, 3), np.float32)
    x[4, 2] = np.nan
    y = np.eye(2, dtype=np.uint8)[np.arange(10) % 2]
    np.savez(bad, X_train=x, Y_train=y, X_test=x, Y_test=y)
    assert main(["prepare", "--dataset", f"features:{bad}"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "NaN" in err and "row 4" in err


def test_predict_rejects_wrong_feature_width(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "scene", "--method", "linear", "--epochs", "1", "--out", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    assert main(["predict", str(run), str(tmp_path / "bad.npy")]) == 2
    assert "[N, 294]" in capsys.readouterr().err


def test_console_entry_point_subprocess(tmp_path):
    r = run_cli("list", "protocols")
    assert r.returncode == 0 and "drop-positives" in r.stdout
    r = run_cli("train", "--dataset", "scene", "--labels", "bogus", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown protocol 'bogus'" in r.stderr and "Traceback" not in r.stderr


def test_bench_metrics_runs(capsys):
    assert main(["bench", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "mlrkit mAP 40504x80" in out and "max |AP - sklearn AP|" in out
