"""Real incomplete labels: three-state inputs, the ``observed`` protocol, evaluation on known entries."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlrkit.cli.main import main
from mlrkit.data import load_dataset
from mlrkit.errors import DataError, MlrkitError
from mlrkit.labels import ObservedLabels, make_observed


def _sk_map(scores: np.ndarray, targets: np.ndarray, known: np.ndarray | None) -> float:
    """scikit-learn's mAP over the known entries of each class (classes with a known positive)."""
    known = np.ones_like(targets, bool) if known is None else known
    aps = [average_precision_score(targets[known[:, j], j], scores[known[:, j], j])
           for j in range(targets.shape[1]) if targets[known[:, j], j].any()]
    return float(np.mean(aps))


# ----------------------------------------------------------------------------- manifests of real photos


def _hidden(i: int, j: int) -> bool:
    return (i + 2 * j) % 3 == 0  # a fixed pattern: about a third of the entries unknown


@pytest.fixture(scope="module")
def photo_manifest(tmp_path_factory):
    """Real Fashion-MNIST mosaics as PNG files with a three-state manifest; the expected matrices."""
    root = tmp_path_factory.mktemp("photos")
    ds = load_dataset("fashion-mosaic", limit_train=60, limit_test=20)
    names = ds.class_names
    lines = ["image,positives,negatives,split"]
    expected = {}
    (root / "img").mkdir()
    for split_name, split in (("train", ds.trainval), ("test", ds.test)):
        obs = np.zeros(split.targets.shape, np.int8)
        for i in range(len(split)):
            rel = f"img/{split_name}_{i:03d}.png"
            split.images.load(i).save(root / rel)
            pos = [j for j in range(len(names)) if split.targets[i, j] and not _hidden(i, j)]
            neg = [j for j in range(len(names)) if not split.targets[i, j] and not _hidden(i, j)]
            obs[i, pos], obs[i, neg] = 1, -1
            lines.append(f"{rel},{'|'.join(names[j] for j in pos)},{'|'.join(names[j] for j in neg)},{split_name}")
        expected[split_name] = obs
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root, names, expected


def test_three_state_manifest_gives_targets_and_known_mask(photo_manifest):
    root, names, expected = photo_manifest
    ds = load_dataset(f"manifest:{root / 'manifest.csv'}", classes=str(root / "classes.txt"))
    assert ds.class_names == names
    for split, obs in ((ds.trainval, expected["train"]), (ds.test, expected["test"])):
        assert np.array_equal(split.known, obs != 0)
        assert np.array_equal(split.targets, (obs == 1).astype(np.uint8))
        assert split.is_partial


def test_prepare_observed_train_evaluate_predict_end_to_end(photo_manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    root, names, expected = photo_manifest
    dataset = f"manifest:{root / 'manifest.csv'}"
    out = tmp_path / "obs.npz"
    assert main(["prepare", "--dataset", dataset, "--option", f"classes={root / 'classes.txt'}",
                 "--labels", "observed", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "known +" in text and "test split: partial ground truth" in text
    obs = ObservedLabels.load(out)
    assert obs.observed.dtype == np.int8 and np.array_equal(obs.observed, expected["train"])
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["observed"]["negatives_per_class"] == (expected["train"] == -1).sum(0).tolist()

    run = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--set", f"data.options.classes={root / 'classes.txt'}",
                 "--method", "finetune", "--loss", "an", "--labels", "observed", "--epochs", "2",
                 "--batch-size", "16", "--lr", "1e-3", "--set", "model.name=smallcnn", "--set", "model.width=8",
                 "--set", "data.image_size=32", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    saved = np.load(run / "observed_labels.npz")["observed"]
    assert np.array_equal(saved, expected["train"])
    res = json.loads((run / "results.json").read_text())
    assert res["test_known_fraction"] == pytest.approx(float((expected["test"] != 0).mean()))
    per = res["test_per_class"]
    for j, name in enumerate(names):
        assert per[name]["known_positives"] == int((expected["test"][:, j] == 1).sum())
        assert per[name]["known_negatives"] == int((expected["test"][:, j] == -1).sum())

    assert main(["evaluate", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test"]["map"] == pytest.approx(res["test_map"], abs=1e-9)
    images = [str(root / f"img/test_{i:03d}.png") for i in range(len(expected["test"]))]
    assert main(["predict", str(run), *images, "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    probs = np.array([[r["scores"][n] for n in names] for r in rows])
    truth = (expected["test"] == 1).astype(np.uint8)
    known = expected["test"] != 0
    assert res["test_map"] == pytest.approx(_sk_map(probs, truth, known), abs=1e-6)
    # scoring the unknown entries as negatives gives another number: the mask matters here
    assert abs(_sk_map(probs, truth, None) - res["test_map"]) > 1e-4
    assert main(["evaluate", str(run)]) == 0
    table = capsys.readouterr().out
    assert "partial ground truth" in table and "known +" in table


def test_positives_only_manifest_leaves_the_rest_unknown(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.jpg", "positives": ["cat"], "split": "train"}\n'
        '{"image": "b.jpg", "positives": ["dog"], "split": "train"}\n'
        '{"image": "c.jpg", "labels": ["dog"], "split": "test"}\n')
    ds = load_dataset(f"manifest:{tmp_path / 'm.jsonl'}")
    assert ds.class_names == ["cat", "dog"]
    assert ds.trainval.known.tolist() == [[True, False], [False, True]]
    assert ds.test.known is None  # a `labels` row is complete
    obs = make_observed(ds.trainval.targets, "observed", 0, known=ds.trainval.known)
    assert obs.tolist() == [[1, 0], [0, 1]]


def test_json_array_manifest_is_accepted(tmp_path):
    rows = [{"image": "a.jpg", "positives": ["cat"], "negatives": ["dog"], "split": "train"},
            {"image": "b.jpg", "positives": ["dog"], "negatives": [], "split": "test"}]
    (tmp_path / "m.json").write_text(json.dumps(rows, indent=1))
    ds = load_dataset(f"manifest:{tmp_path / 'm.json'}")
    assert ds.trainval.known is None  # cat and dog both known: complete
    assert ds.test.known.tolist() == [[False, True]]
    (tmp_path / "bad.json").write_text('[{"image": "a.jpg", "positives": ["cat"], "split": "train"}, {"image": 3}]')
    with pytest.raises(DataError, match=r"bad\.json:item 2: missing key"):
        load_dataset(f"manifest:{tmp_path / 'bad.json'}")
    (tmp_path / "broken.json").write_text('{"image": "a.jpg", "positives": ["cat"], "split": "train"} x\n')
    with pytest.raises(DataError, match=r"broken\.json:1:\d+: malformed JSON.*one JSON array or one object per line"):
        load_dataset(f"manifest:{tmp_path / 'broken.json'}")


@pytest.mark.parametrize("uncertain, row0", [("unknown", [1, 0, 0]), ("positive", [1, 0, 1]),
                                             ("negative", [1, 0, -1])])
def test_dense_manifest_with_uncertain_values(tmp_path, uncertain, row0):
    (tmp_path / "d.csv").write_text("image,split,Edema,Fracture,Pneumonia\n"
                                    "a.jpg,train,1.0,,-1\nb.jpg,train,0,1,0\nc.jpg,test,1,0,0\n")
    ds = load_dataset(f"manifest:{tmp_path / 'd.csv'}", uncertain=uncertain)
    assert ds.class_names == ["Edema", "Fracture", "Pneumonia"]
    obs = make_observed(ds.trainval.targets, "observed", 0, known=ds.trainval.known)
    assert obs.tolist() == [row0, [-1, 1, -1]]
    assert ds.test.known is None


@pytest.mark.parametrize("name, text, pattern", [
    ("both.csv", "image,positives,negatives,split\na.jpg,cat|dog,dog,train\nb.jpg,cat,,test\n",
     r"both\.csv:2: class 'dog' is listed as both positive and negative"),
    ("both.jsonl", '{"image": "a", "positives": ["cat"], "negatives": ["cat"], "split": "train"}\n',
     r"both\.jsonl:1: class 'cat' is listed as both"),
    ("mixed.csv", "image,labels,positives,split\na.jpg,cat,cat,train\n", r"mixed\.csv:1: header has 'labels' and"),
    ("semi.csv", "image,positives,split\na.jpg,cat;dog,train\nb.jpg,cat,test\n",
     r"semi\.csv:2: label 'cat;dog' contains ';'; separate labels with '\|'"),
    ("dense.csv", "image,split,cat,dog\na.jpg,train,1,2\nb.jpg,test,0,1\n",
     r"dense\.csv:2: column 'dog' has '2'; expected 1, 0, -1"),
])
def test_manifest_label_errors_name_file_line_and_value(tmp_path, name, text, pattern):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_dataset(f"manifest:{tmp_path / name}")


def test_manifest_class_outside_the_class_list(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "m.csv").write_text("image,positives,negatives,split\na.jpg,cat,bird,train\nb.jpg,dog,,test\n")
    with pytest.raises(DataError, match=r"m\.csv:2: label 'bird' is not in the class list"):
        load_dataset(f"manifest:{tmp_path / 'm.csv'}", classes=str(tmp_path / "classes.txt"))


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("image,positives,negatives,split\na.jpg,cat,cat,train\n")
    assert main(["prepare", "--dataset", f"manifest:{tmp_path / 'm.csv'}", "--labels", "observed"]) != 0
    err = capsys.readouterr().err
    assert "mlrkit: error:" in err and "m.csv:2" in err and "'cat'" in err


# ----------------------------------------------------------------------------- features files


@pytest.fixture(scope="module")
def yeast_partial(tmp_path_factory):
    """Real yeast: training labels = half of the entries (observed_train, no Y_train), 70 % of test known."""
    ds = load_dataset("yeast")
    d = tmp_path_factory.mktemp("feat")
    obs = make_observed(ds.trainval.targets, "partial:0.5", seed=3)
    known_test = np.random.default_rng(5).random(ds.test.targets.shape) < 0.7
    path = d / "yeast_partial.npz"
    np.savez(path, X_train=ds.trainval.features, observed_train=obs, X_test=ds.test.features,
             Y_test=ds.test.targets, known_test=known_test)
    return path, obs, known_test, ds


def test_features_observed_train_end_to_end(yeast_partial, tmp_path, capsys):
    path, obs, known_test, ds = yeast_partial
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"features:{path}", "--method", "linear", "--loss", "an",
                 "--labels", "observed", "--epochs", "3", "--batch-size", "64", "--lr", "1e-3",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    saved = np.load(run / "observed_labels.npz")["observed"]
    assert saved.dtype == np.int8 and np.array_equal(saved, obs)  # bit for bit
    res = json.loads((run / "results.json").read_text())
    np.save(tmp_path / "x_test.npy", ds.test.features)
    assert main(["predict", str(run), str(tmp_path / "x_test.npy"), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    probs = np.array([[r["scores"][f"class{j}"] for j in range(14)] for r in rows])
    assert res["test_map"] == pytest.approx(_sk_map(probs, ds.test.targets, known_test), abs=1e-6)
    assert res["test_known_fraction"] == pytest.approx(float(known_test.mean()))
    assert main(["evaluate", str(run), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "partial ground truth" in printed and "test_reliability.png" in printed
    for name in ("test_pr.png", "test_roc.png", "test_reliability.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5000
    curves = json.loads((tmp_path / "plots" / "test_curves.json").read_text())
    assert curves["reliability"]["count"] and sum(curves["reliability"]["count"]) == int(known_test.sum())


def test_features_with_y_train_and_observed_train(tmp_path):
    ds = load_dataset("yeast")
    obs = make_observed(ds.trainval.targets, "single-positive", seed=1)
    path = tmp_path / "both.npz"
    np.savez(path, X_train=ds.trainval.features, Y_train=ds.trainval.targets, observed_train=obs,
             X_test=ds.test.features, Y_test=ds.test.targets)
    loaded = load_dataset(f"features:{path}")
    assert loaded.trainval.known is None  # complete ground truth for validation and simulation
    from mlrkit.labels import observe

    tv = loaded.trainval
    got = observe(tv.targets, "observed", 0, "x", known=tv.known, annotations=tv.annotations).observed
    assert np.array_equal(got, obs)
    # simulating protocols still draw from the complete ground truth
    assert np.array_equal(make_observed(tv.targets, "partial:0.5", 3),
                          observe(tv.targets, "partial:0.5", 3, "x", annotations=tv.annotations).observed)


@pytest.mark.parametrize("change, pattern", [
    (lambda a: a.update(observed_train=a["observed_train"] * 2), r"observed_train must hold only -1/0/\+1; row \d+"),
    (lambda a: a.update(known_test=a["known_test"][:, :5]), r"known_test has shape \(\d+, 5\), Y_test has"),
    (lambda a: a.update(known_test=np.zeros_like(a["known_test"])), r"known_test marks no entry as known"),
    (lambda a: a.pop("observed_train"), r"missing arrays \['Y_train \(or observed_train\)'\]"),
    (lambda a: a.update(Y_train=1 - (a["observed_train"] == 1)), r"observed_train contradicts Y_train"),
])
def test_features_partial_errors(yeast_partial, tmp_path, change, pattern):
    path, obs, known_test, ds = yeast_partial
    arrays = dict(np.load(path))
    change(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(DataError, match=pattern):
        load_dataset(f"features:{bad}")


def test_export_features_round_trip(tmp_path, capsys):
    out = tmp_path / "half.npz"
    assert main(["prepare", "--dataset", "scene", "--labels", "partial:0.5", "--seed", "2",
                 "--export-features", str(out)]) == 0
    ds = load_dataset(f"features:{out}")
    want = make_observed(load_dataset("scene").trainval.targets, "partial:0.5", 2)
    assert np.array_equal(make_observed(ds.trainval.targets, "observed", 0, known=ds.trainval.known), want)


# ----------------------------------------------------------------------------- protocols on partial truth


def test_simulating_protocols_act_only_on_known_entries():
    t = load_dataset("yeast").trainval.targets
    known = np.random.default_rng(0).random(t.shape) < 0.4
    assert np.array_equal(make_observed(t, "observed", 0, known=known),
                          np.where(known, np.where(t == 1, 1, -1), 0))
    sp = make_observed(t, "single-positive", 0, known=known)
    assert ((sp == 1) <= (known & (t == 1))).all() and (sp != -1).all()
    assert ((sp == 1).sum(1) == (known & (t == 1)).any(1)).all()
    part = make_observed(t, "partial:0.5", 0, known=known)
    assert ((part != 0) <= known).all() and (part != 0).sum() == round(0.5 * known.sum())
    assert np.array_equal(make_observed(t, "observed", 0), make_observed(t, "full", 0))


def test_partial_validation_is_logged(yeast_partial, tmp_path, caplog):
    from mlrkit.config import build_config
    from mlrkit.engine.run_data import prepare_run_data

    path = yeast_partial[0]
    cfg = build_config(flags={"out": str(tmp_path / "r"), "data": {"name": f"features:{path}"},
                              "labels": {"protocol": "observed"}})
    with caplog.at_level(logging.WARNING, logger="mlrkit"):
        data = prepare_run_data(cfg)
    assert "no clean validation set" in caplog.text
    assert data.val_mask is not None and not data.val_mask.all()


def test_metrics_refuse_a_test_set_with_nothing_known():
    from mlrkit.metrics import summary

    with pytest.raises(MlrkitError):
        summary(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2), bool))


def test_a_test_split_with_nothing_known_is_refused_before_training(tmp_path):
    from mlrkit.config import build_config
    from mlrkit.engine.run_data import prepare_run_data

    rows = [f"t{i}.jpg,{'cat' if i % 2 else 'dog'},{'dog' if i % 2 else 'cat'},train" for i in range(10)]
    (tmp_path / "m.csv").write_text("\n".join(["image,positives,negatives,split", *rows, "x.jpg,,,test"]) + "\n")
    cfg = build_config(flags={"out": str(tmp_path / "r"), "data": {"name": f"manifest:{tmp_path / 'm.csv'}"},
                              "labels": {"protocol": "observed"}})
    with pytest.raises(DataError, match="the test split has no known entry: nothing can be scored"):
        prepare_run_data(cfg)


def test_prepared_labels_are_refused_after_the_manifest_changes_what_is_known(tmp_path, capsys):
    rows = [f"t{i}.jpg,{'cat' if i % 2 else 'dog'},{'bird' if i % 3 else ''},train" for i in range(10)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(["image,positives,negatives,split", *rows, "x.jpg,cat,dog,test"]) + "\n")
    out = tmp_path / "obs.npz"
    assert main(["prepare", "--dataset", f"manifest:{manifest}", "--labels", "observed", "--out", str(out)]) == 0
    ds = load_dataset(f"manifest:{manifest}")
    ObservedLabels.load(out).check_matches(ds.trainval.targets, ds.name, ds.trainval.known)
    manifest.write_text(manifest.read_text().replace("t1.jpg,cat,bird", "t1.jpg,cat,"))  # one negative fewer
    ds = load_dataset(f"manifest:{manifest}")
    with pytest.raises(DataError, match="other ground truth"):
        ObservedLabels.load(out).check_matches(ds.trainval.targets, ds.name, ds.trainval.known)


@pytest.mark.slow
def test_observed_partial_yeast_keeps_the_loss_zoo_ordering(tmp_path, capsys):
    """Real yeast, half of the training entries hidden and shipped as observed_train only: EM and WAN
    beat AN as they do under the simulated partial:0.5 (docs/partial-labels.md, seed 0 of the table)."""
    from pathlib import Path

    from mlrkit.config import build_config
    from mlrkit.engine.trainer import train

    half = tmp_path / "yeast-half.npz"
    assert main(["prepare", "--dataset", "yeast", "--labels", "partial:0.5", "--seed", "0",
                 "--export-features", str(half)]) == 0
    capsys.readouterr()
    recipes = Path(__file__).resolve().parents[1] / "configs" / "partial"
    test_map = {}
    for loss in ("an", "em", "wan"):
        cfg = build_config(recipes / f"mlp-{loss}.yaml",
                           flags={"out": str(tmp_path / loss), "seed": 0, "data": {"name": f"features:{half}"},
                                  "labels": {"protocol": "observed"}})
        test_map[loss] = train(cfg, quiet=True)["test_map"]
        obs = np.load(tmp_path / loss / "observed_labels.npz")["observed"]
        assert np.array_equal(obs, make_observed(load_dataset("yeast").trainval.targets, "partial:0.5", 0))
    assert test_map["em"] > test_map["an"] + 0.005 and test_map["wan"] > test_map["an"] + 0.005, test_map
