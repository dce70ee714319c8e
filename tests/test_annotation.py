"""Annotation suggestions: strategies, selection, answer merging, suggest-labels, apply-answers, simulation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mlrkit.annotation.answers import apply_answers, merge_answers, read_answers
from mlrkit.annotation.strategies import (
    STRATEGIES,
    Pool,
    binary_entropy,
    effective_number,
    parse_budget,
    percentile_ranks,
    score_pool,
    select,
)
from mlrkit.errors import DataError, MlrkitError


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``mlrkit ARGS`` in this process."""
    from mlrkit.cli.main import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _real_pool(seed: int = 0, known_fraction: float = 0.3) -> Pool:
    """A pool on the real emotions labels: probabilities from a noisy copy of the truth."""
    from mlrkit.data import load_dataset
    from mlrkit.labels import make_observed

    ds = load_dataset("emotions")
    t = ds.trainval.targets
    rng = np.random.default_rng(seed)
    probs = np.clip(0.6 * t + 0.4 * rng.random(t.shape), 0, 1)
    obs = make_observed(t, f"partial:{known_fraction}", seed)
    return Pool(probs=probs, observed=obs, candidates=obs == 0, class_names=ds.class_names,
                vl_scores=rng.normal(size=t.shape))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- strategies and selection


@pytest.mark.parametrize("name", ["random", "uncertainty", "expected-gain", "positive-gain", "vl-disagreement"])
def test_every_strategy_selects_only_unknown_entries_deterministically(name):
    pool = _real_pool()
    s1 = score_pool(name, pool, seed=3)
    assert np.isneginf(s1[~pool.candidates]).all() and np.isfinite(s1[pool.candidates]).all()
    rows, cols = select(s1, 200, seed=3)
    assert len(rows) == 200
    assert (pool.observed[rows, cols] == 0).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 200  # no entry twice
    r2, c2 = select(score_pool(name, pool, seed=3), 200, seed=3)
    assert np.array_equal(rows, r2) and np.array_equal(cols, c2)
    assert STRATEGIES.entry(name).obj.reference  # each strategy documents its reference


def test_random_depends_on_seed_and_budget_beyond_pool_takes_all():
    pool = _real_pool()
    a = select(score_pool("random", pool, 0), 50, seed=0)
    b = select(score_pool("random", pool, 1), 50, seed=1)
    assert not np.array_equal(a[0] * 10 + a[1], b[0] * 10 + b[1])
    rows, cols = select(score_pool("random", pool, 0), 10**6, seed=0)
    assert len(rows) == int(pool.candidates.sum())


def test_uncertainty_ranks_by_distance_to_threshold():
    probs = np.array([[0.5, 0.9, 0.05], [0.3, 0.45, 0.99]])
    obs = np.zeros((2, 3), np.int8)
    pool = Pool(probs=probs, observed=obs, candidates=np.ones((2, 3), bool), class_names=list("abc"))
    rows, cols = select(score_pool("uncertainty", pool, 0), 6)
    assert list(zip(rows.tolist(), cols.tolist()))[:3] == [(0, 0), (1, 1), (1, 0)]
    pool.threshold = 0.3
    rows, cols = select(score_pool("uncertainty", pool, 0), 1)
    assert (rows[0], cols[0]) == (1, 0)  # p = 0.3 sits on the threshold


def test_expected_and_positive_gain_formulas():
    probs = np.array([[0.5, 0.5], [0.2, 0.4], [0.8, 0.1]])
    obs = np.array([[0, 0], [1, 0], [1, -1]], np.int8)  # class 0: 2 known (2 pos); class 1: 1 known (0 pos)
    pool = Pool(probs=probs, observed=obs, candidates=obs == 0, class_names=["a", "b"], beta=0.9)
    prevalence = probs.mean(0)
    want = binary_entropy(probs) * (-np.log(prevalence) / effective_number(1 + np.array([2, 1]), 0.9))
    got = score_pool("expected-gain", pool, 0)
    assert np.allclose(got[obs == 0], want[obs == 0])
    want_pos = probs / effective_number(1 + np.array([2, 0]), 0.9)
    assert np.allclose(score_pool("positive-gain", pool, 0)[obs == 0], want_pos[obs == 0])
    # equal probability: the class with fewer known positives is asked first
    rows, cols = select(score_pool("positive-gain", pool, 0), 1)
    assert (rows[0], cols[0]) == (0, 1)
    assert effective_number(np.array([0, 1]), 0.9).tolist() == pytest.approx([0.0, 1.0])


def test_vl_disagreement_uses_rank_gap_and_needs_vl_scores():
    probs = np.array([[0.9], [0.5], [0.1]])
    vl = np.array([[0.1], [0.2], [0.3]])  # reversed order: the ends disagree most
    obs = np.zeros((3, 1), np.int8)
    pool = Pool(probs=probs, observed=obs, candidates=obs == 0, class_names=["a"], vl_scores=vl)
    s = score_pool("vl-disagreement", pool, 0)
    assert s[:, 0].tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert percentile_ranks(np.array([[1.0], [1.0], [3.0]]))[:, 0].tolist() == pytest.approx([0.25, 0.25, 1.0])
    pool.vl_scores = None
    with pytest.raises(MlrkitError, match="needs a VL model"):
        score_pool("vl-disagreement", pool, 0)


def test_per_image_batches_k_classes_of_the_same_image():
    pool = _real_pool()
    scores = score_pool("uncertainty", pool, 0)
    rows, cols = select(scores, 40, per_image=3, seed=0)
    assert len(rows) == 40
    assert (pool.observed[rows, cols] == 0).all()
    _, counts = np.unique(rows, return_counts=True)
    assert counts.max() <= 3 and (counts == 3).sum() >= 13  # 13 full images + one with 1 question
    assert len(np.unique(rows)) == 14


def test_parse_budget():
    assert parse_budget("0.02", 16800) == 336
    assert parse_budget("500", 16800) == 500
    assert parse_budget(7, 100) == 7
    for bad in ("0", "1.5", "-3", "lots", "0.0"):
        with pytest.raises(MlrkitError):
            parse_budget(bad, 100)


def test_pool_refuses_known_candidates():
    obs = np.array([[1, 0]], np.int8)
    with pytest.raises(MlrkitError, match="already known"):
        Pool(probs=np.full((1, 2), 0.5), observed=obs, candidates=np.ones((1, 2), bool), class_names=["a", "b"])


# ----------------------------------------------------------------------------- merging answers


def test_merge_answers_exact_and_conflicts():
    obs = np.array([[1, 0, 0], [0, -1, 0]], np.int8)
    new, rep = merge_answers(obs, [0, 1, 0, 1], [1, 2, 0, 1], [-1, 1, 1, -1])
    assert new.tolist() == [[1, -1, 0], [0, -1, 1]]
    assert obs.tolist() == [[1, 0, 0], [0, -1, 0]]  # input untouched
    assert (rep.new_positive, rep.new_negative, rep.already_known) == (1, 1, 2)
    with pytest.raises(DataError, match="contradicts the existing annotation"):
        merge_answers(obs, [0], [0], [-1], ["a.csv:2"])
    with pytest.raises(DataError, match=r"a.csv:3: answer no conflicts with yes .* at a.csv:2"):
        merge_answers(obs, [1, 1], [0, 0], [1, -1], ["a.csv:2", "a.csv:3"])
    with pytest.raises(DataError, match="outside"):
        merge_answers(obs, [5], [0], [1])


def test_read_answers_values(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("image,class,answer\nx,a,yes\nx,b,NO\ny,a,\ny,b,+1\ny,c,skip\n")
    ans = read_answers(p)
    assert [(a.image, a.cls, a.value) for a in ans.answers] == [("x", "a", 1), ("x", "b", -1), ("y", "b", 1)]
    assert ans.unanswered == 2
    p.write_text("image,class,answer\nx,a,0\n")
    with pytest.raises(DataError, match=r"a.csv:2: answer '0' is ambiguous"):
        read_answers(p)
    p.write_text("image,class,answer\nx,a,maybe\n")
    with pytest.raises(DataError, match=r"a.csv:2: answer 'maybe' is not yes/no"):
        read_answers(p)
    p.write_text("image,answer\nx,yes\n")
    with pytest.raises(DataError, match="lacks column"):
        read_answers(p)


def test_apply_answers_to_csv_manifest(tmp_path, capsys):
    man = tmp_path / "photos.csv"
    man.write_text("image,labels,split,note\n"
                   "a.jpg,cat,train,first\n"
                   "b.jpg,cat|dog,train,\n"
                   "c.jpg,,test,x\n")
    ans = tmp_path / "answers.csv"
    ans.write_text("image,class,answer\nb.jpg,dog,yes\nc.jpg,dog,no\n")  # agrees with the complete labels
    code, out, _ = run_cli(capsys, "apply-answers", str(man), str(ans), "--out", str(tmp_path / "new.csv"))
    assert code == 0 and json.loads(out)["already_known"] == 2 and json.loads(out)["new_positive"] == 0
    assert _read_csv(tmp_path / "new.csv") == _read_csv(man)  # complete labels: nothing to add

    three = tmp_path / "three.csv"
    three.write_text("image,positives,negatives,split,note\n"
                     "a.jpg,cat,,train,keep\n"
                     "b.jpg,,dog,train,\n"
                     "c.jpg,dog,,test,x\n")
    ans.write_text("image,class,answer\na.jpg,dog,no\nb.jpg,cat,yes\nb.jpg,cat,yes\nc.jpg,cat,\n")
    code, out, _ = run_cli(capsys, "apply-answers", str(three), str(ans), "--out", str(tmp_path / "n3.csv"))
    assert code == 0
    assert json.loads(out) == {"out": str(tmp_path / "n3.csv"), "new_positive": 1, "new_negative": 1,
                               "already_known": 0, "unanswered": 1}
    rows = _read_csv(tmp_path / "n3.csv")
    assert [(r["image"], r["positives"], r["negatives"], r["split"], r["note"]) for r in rows] == [
        ("a.jpg", "cat", "dog", "train", "keep"), ("b.jpg", "cat", "dog", "train", ""),
        ("c.jpg", "dog", "", "test", "x")]
    # the merged manifest loads as a dataset with exactly those known entries
    from mlrkit.data import load_dataset

    ds = load_dataset(f"manifest:{tmp_path / 'n3.csv'}")
    assert ds.class_names == ["cat", "dog"]
    assert ds.trainval.targets.tolist() == [[1, 0], [1, 0]] and ds.trainval.known is None
    assert ds.test.known.tolist() == [[False, True]]


def test_apply_answers_to_dense_manifest(tmp_path):
    man = tmp_path / "dense.csv"
    man.write_text("image,split,cat,dog,bird\n"
                   "a.jpg,train,1,,-1\n"
                   "b.jpg,train,0,1,\n"
                   "c.jpg,test,,,1\n")
    ans = tmp_path / "a.csv"
    ans.write_text("image,class,answer\na.jpg,dog,no\na.jpg,bird,yes\nc.jpg,cat,no\n")
    rep = apply_answers(man, ans, tmp_path / "new.csv")
    assert (rep.new_positive, rep.new_negative) == (1, 2)
    assert (tmp_path / "new.csv").read_text() == ("image,split,cat,dog,bird\n"
                                                  "a.jpg,train,1,0,1\n"
                                                  "b.jpg,train,0,1,\n"
                                                  "c.jpg,test,0,,1\n")
    with pytest.raises(DataError, match="contradicts the existing annotation"):  # -1 read as positive
        ans.write_text("image,class,answer\na.jpg,bird,no\n")
        apply_answers(man, ans, tmp_path / "x.csv", uncertain="positive")


@pytest.mark.parametrize("answers, message", [
    ("image,class,answer\nz.jpg,cat,yes\n", r"answers.csv:2: image 'z.jpg' is not in the labels"),
    ("image,class,answer\na.jpg,cta,yes\n", r"answers.csv:2: class 'cta' is not a class .*did you mean cat"),
    ("image,class,answer\na.jpg,cat,no\n", r"answers.csv:2: answer no contradicts the existing annotation \(yes\)"),
    ("image,class,answer\nb.jpg,cat,no\nb.jpg,cat,yes\n", r"answers.csv:3: answer yes conflicts with no"),
])
def test_apply_answers_refuses_bad_answers(tmp_path, capsys, answers, message):
    man = tmp_path / "m.jsonl"
    man.write_text('{"image": "a.jpg", "positives": ["cat"], "negatives": [], "split": "train"}\n'
                   '{"image": "b.jpg", "positives": [], "negatives": ["dog"], "split": "train"}\n'
                   '{"image": "c.jpg", "positives": ["dog"], "split": "test"}\n')
    ans = tmp_path / "answers.csv"
    ans.write_text(answers)
    code, _, err = run_cli(capsys, "apply-answers", str(man), str(ans), "--out", str(tmp_path / "new.jsonl"))
    assert code == 2
    assert err.startswith("mlrkit: error:")
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "new.jsonl").exists()


def test_apply_answers_jsonl_roundtrip_and_same_file_refused(tmp_path):
    man = tmp_path / "m.jsonl"
    man.write_text('{"image": "a.jpg", "positives": ["cat"], "negatives": [], "split": "train", "w": 1}\n'
                   '{"image": "b.jpg", "labels": ["dog"], "split": "test"}\n')
    ans = tmp_path / "answers.csv"
    ans.write_text("image,class,answer\na.jpg,dog,yes\nb.jpg,cat,no\n")
    rep = apply_answers(man, ans, tmp_path / "new.jsonl")
    assert (rep.new_positive, rep.already_known) == (1, 1)
    lines = [json.loads(x) for x in (tmp_path / "new.jsonl").read_text().splitlines()]
    assert lines == [{"image": "a.jpg", "positives": ["cat", "dog"], "negatives": [], "split": "train", "w": 1},
                     {"image": "b.jpg", "labels": ["dog"], "split": "test"}]
    with pytest.raises(MlrkitError, match="is the input file"):
        apply_answers(man, ans, man)


def test_apply_answers_to_features_file(tmp_path):
    from mlrkit.data.datasets.builtin import builtin_path

    with np.load(builtin_path("emotions.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    observed = np.zeros(arrays["Y_train"].shape, np.int8)
    observed[0, 0] = 1
    src = tmp_path / "f.npz"
    np.savez(src, **{k: v for k, v in arrays.items() if k != "Y_train"}, observed_train=observed)
    ans = tmp_path / "a.csv"
    ans.write_text("image,class,answer\ntrain/3,sad-lonely,yes\ntrain/390,happy-pleased,no\n"
                   "train/0,amazed-surprised,yes\n")
    rep = apply_answers(src, ans, tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz") as z:
        new = z["observed_train"]
        assert np.array_equal(z["X_train"], arrays["X_train"]) and "Y_train" not in z.files
    want = observed.copy()
    want[3, 4], want[390, 1] = 1, -1
    assert new.dtype == np.int8 and np.array_equal(new, want)
    assert (rep.new_positive, rep.new_negative, rep.already_known) == (1, 1, 1)
    ans.write_text("image,class,answer\ntrain/391,sad-lonely,yes\n")
    with pytest.raises(DataError, match="image 'train/391' is not in the labels"):
        apply_answers(src, ans, tmp_path / "h.npz")


# ----------------------------------------------------------------------------- suggest-labels on a real run


@pytest.fixture(scope="module")
def emotions_run(tmp_path_factory, single_thread):
    from mlrkit.config import build_config
    from mlrkit.engine.trainer import train

    out = tmp_path_factory.mktemp("ann") / "run"
    cfg = build_config(flags={"seed": 0, "out": str(out), "data": {"name": "emotions"},
                              "labels": {"protocol": "single-positive"}, "method": {"name": "linear"},
                              "loss": {"name": "an"}, "train": {"epochs": 2, "batch_size": 64, "progress": False}})
    train(cfg, quiet=True)
    return out


def test_suggest_then_apply_then_train_loop(emotions_run, tmp_path, capsys):
    from mlrkit.data import load_dataset
    from mlrkit.labels import ObservedLabels

    q = tmp_path / "queries.csv"
    code, out, _ = run_cli(capsys, "suggest-labels", str(emotions_run), "--budget", "40", "--strategy",
                           "positive-gain", "--per-image", "2", "--out", str(q))
    assert code == 0 and json.loads(out)["questions"] == 40 and json.loads(out)["images"] == 20
    rows = _read_csv(q)
    assert list(rows[0]) == ["image", "row", "class", "probability", "score", "answer"]
    obs = ObservedLabels.load(emotions_run / "observed_labels.npz")
    ds = load_dataset("emotions")
    names = ds.class_names
    for r in rows:
        assert r["image"] == f"train/{r['row']}" and r["answer"] == ""
        assert obs.observed[int(r["row"]), names.index(r["class"])] == 0  # only unknown entries
    assert all(rows[i]["row"] == rows[i + 1]["row"] for i in range(0, 40, 2))  # 2 classes per image, together
    value = [float(rows[i]["score"]) + float(rows[i + 1]["score"]) for i in range(0, 40, 2)]
    assert value == sorted(value, reverse=True)  # images in order of their summed scores
    # answer from the truth, merge into the run's observed labels, train on them
    truth = ds.trainval.targets
    for r in rows:
        r["answer"] = "yes" if truth[int(r["row"]), names.index(r["class"])] else "no"
    with open(q, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    new = tmp_path / "obs1.npz"
    code, out, _ = run_cli(capsys, "apply-answers", str(emotions_run / "observed_labels.npz"), str(q),
                           "--out", str(new))
    assert code == 0
    merged = ObservedLabels.load(new)
    diff = np.argwhere(merged.observed != obs.observed)
    assert len(diff) == 40 and merged.protocol == "single-positive+answers"
    for r, c in diff:
        assert merged.observed[r, c] == (1 if truth[r, c] else -1)
    code, out, err = run_cli(capsys, "train", "--dataset", "emotions", "--method", "linear", "--loss", "an",
                             "--labels", str(new), "--epochs", "1", "--quiet", "--out", str(tmp_path / "r1"))
    assert code == 0, err
    assert json.loads((tmp_path / "r1" / "results.json").read_text())["observed_sha256"] == merged.sha256


def test_suggest_labels_errors(emotions_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "suggest-labels", str(emotions_run), "--budget", "10", "--strategy",
                           "vl-disagreement", "--out", str(tmp_path / "q.csv"))
    assert code == 2 and "needs images" in err
    code, _, err = run_cli(capsys, "suggest-labels", str(emotions_run), "--budget", "10", "--strategy",
                           "uncertanty", "--out", str(tmp_path / "q.csv"))
    assert code == 2 and "did you mean uncertainty" in err and "mlrkit list strategies" in err


def test_help_lists_strategies(capsys):
    from mlrkit.cli.main import main

    with pytest.raises(SystemExit):
        main(["simulate-annotation", "--help"])
    text = capsys.readouterr().out
    for name in STRATEGIES.names():
        assert name in text
    code, out, _ = run_cli(capsys, "list", "strategies")
    assert code == 0 and all(n in out for n in STRATEGIES.names())


# ----------------------------------------------------------------------------- the simulation


def _simulate(capsys, out: Path, strategy: str = "uncertainty", seed: str = "0", per_image: str | None = None):
    args = ["simulate-annotation", "--dataset", "emotions", "--labels", "single-positive", "--method", "linear",
            "--loss", "an", "--epochs", "2", "--batch-size", "64", "--budget-per-round", "0.02", "--rounds", "2",
            "--strategy", strategy, "--seed", seed, "--quiet", "--out", str(out)]
    if per_image:
        args += ["--per-image", per_image]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    return stdout


def test_simulation_never_repeats_and_answers_from_truth(tmp_path, capsys, single_thread):
    from mlrkit.data import load_dataset, split_train_val
    from mlrkit.labels import ObservedLabels

    out = tmp_path / "sim"
    _simulate(capsys, out, "expected-gain")
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2]
    ds = load_dataset("emotions")
    train_rows = split_train_val(ds.trainval)[0].index
    budget = round(0.02 * len(train_rows) * ds.num_classes)
    assert [r["entries_known"] for r in rounds] == [rounds[0]["entries_known"] + k * budget for k in range(3)]
    assert all(0 <= r["test_map"] <= 1 for r in rounds)
    seen: set[tuple[int, int]] = set()
    prev = ObservedLabels.load(out / "labels-round-0.npz").observed
    for k in (1, 2):
        q = _read_csv(out / f"queries-round-{k}.csv")
        entries = {(int(r["row"]), ds.class_names.index(r["class"])) for r in q}
        assert len(entries) == len(q) == budget
        assert not entries & seen  # never repeated across rounds
        assert all(prev[e] == 0 for e in entries)  # always unknown when asked
        assert {e[0] for e in entries} <= set(train_rows.tolist())  # only training-split images
        seen |= entries
        cur = ObservedLabels.load(out / f"labels-round-{k}.npz").observed
        changed = {tuple(x) for x in np.argwhere(cur != prev).tolist()}
        assert changed == entries  # answers merged exactly, nothing else changed
        for r in q:
            e = (int(r["row"]), ds.class_names.index(r["class"]))
            assert cur[e] == (1 if ds.trainval.targets[e] else -1)
            assert r["answer"] == ("yes" if ds.trainval.targets[e] else "no")
        prev = cur
        res = json.loads((out / f"round-{k}" / "results.json").read_text())
        assert res["observed_sha256"] == ObservedLabels.load(out / f"labels-round-{k}.npz").sha256
    for name in ("rounds.csv", "rounds.md", "rounds.png", "simulation.json"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_simulation_is_deterministic_for_a_seed(tmp_path, capsys, single_thread):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, "1"), (b, "1"), (c, "2")):
        _simulate(capsys, d, "random", seed=seed, per_image="2")
    ra, rb, rc = (json.loads((d / "rounds.json").read_text()) for d in (a, b, c))
    strip = [{k: v for k, v in r.items() if k != "run"} for r in ra]
    assert strip == [{k: v for k, v in r.items() if k != "run"} for r in rb]
    for k in (1, 2):
        assert (a / f"queries-round-{k}.csv").read_text() == (b / f"queries-round-{k}.csv").read_text()
        assert (a / f"queries-round-{k}.csv").read_text() != (c / f"queries-round-{k}.csv").read_text()
    assert [r["test_map"] for r in ra] != [r["test_map"] for r in rc]
    # a second invocation into the same directory reuses the finished rounds
    _simulate(capsys, a, "random", seed="1", per_image="2")
    assert json.loads((a / "rounds.json").read_text()) == ra


@pytest.mark.slow
def test_simulation_grid_compares_with_random(tmp_path, capsys, single_thread):
    out = tmp_path / "grid"
    stdout = _simulate(capsys, out, "random,positive-gain", seed="0,1")
    summary = json.loads((out / "comparison.json").read_text())
    pg = summary["strategies"]["positive-gain"]
    rnd = summary["strategies"]["random"]
    assert len(pg["mean"]) == 3 and pg["seeds"] == [0, 1]
    assert pg["mean"][0] == rnd["mean"][0]  # round 0 is shared
    per = np.array(pg["per_seed"]) - np.array(rnd["per_seed"])
    assert np.allclose(per.mean(0), pg["vs_random_mean"])
    assert "positive-gain" in stdout and (out / "comparison.md").is_file() and (out / "comparison.png").is_file()
    assert (out / "seed0" / "random" / "rounds.json").is_file()


@pytest.mark.slow
def test_vl_disagreement_on_images_with_a_vl_model(tmp_path, capsys, single_thread):
    """fashion-mosaic photos, a frozen small CNN + linear probe, the offline ``tiny`` CLIP as the VL model."""
    from mlrkit.annotation.suggest import run_pool
    from mlrkit.labels import ObservedLabels

    run = tmp_path / "fm"
    code, _, err = run_cli(capsys, "train", "--dataset", "fashion-mosaic", "--method", "linear", "--loss", "an",
                           "--labels", "single-positive", "--epochs", "1", "--quiet", "--vl-model", "tiny",
                           "--set", "model.name=smallcnn", "--set", "model.width=4", "--set", "model.depth=3",
                           "--set", "data.image_size=28", "--set", "data.limit_train=80",
                           "--set", "data.options.limit_test=24", "--out", str(run))
    assert code == 0, err
    rp = run_pool(run, with_vl=True)
    assert rp.pool.vl_scores is not None and rp.pool.vl_scores.shape == rp.pool.probs.shape
    assert np.abs(rp.pool.vl_scores).max() <= 1 + 1e-6  # cosine similarities
    q = tmp_path / "q.csv"
    code, out, err = run_cli(capsys, "suggest-labels", str(run), "--budget", "20", "--strategy", "vl-disagreement",
                             "--out", str(q))
    assert code == 0, err
    obs = ObservedLabels.load(run / "observed_labels.npz").observed
    rows = _read_csv(q)
    assert len(rows) == 20
    for r in rows:
        assert obs[int(r["row"]), rp.pool.class_names.index(r["class"])] == 0
        assert 0 <= float(r["score"]) <= 1


@pytest.mark.slow
def test_annotation_round_on_a_manifest_of_real_photos(tmp_path, capsys, monkeypatch, single_thread):
    """Your own data: a three-state manifest of real photos -> train -> suggest -> answer -> apply -> retrain."""
    from mlrkit.data import load_dataset

    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    ds = load_dataset("fashion-mosaic", limit_train=60, limit_test=20)
    names = ds.class_names
    (tmp_path / "img").mkdir()
    lines = ["image,positives,negatives,split"]
    for part, split in (("train", ds.trainval), ("test", ds.test)):
        for i in range(len(split)):
            rel = f"img/{part}_{i:03d}.png"
            split.images.load(i).save(tmp_path / rel)
            shown = [j for j in range(len(names)) if (i + 2 * j) % 3 != 0]  # a third of the entries unknown
            pos = [names[j] for j in shown if split.targets[i, j]]
            neg = [names[j] for j in shown if not split.targets[i, j]]
            lines.append(f"{rel},{'|'.join(pos)},{'|'.join(neg)},{part}")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    man = tmp_path / "labels.csv"
    man.write_text("\n".join(lines) + "\n")
    classes = str(tmp_path / "classes.txt")
    train_args = ["--method", "finetune", "--loss", "an", "--labels", "observed", "--epochs", "1",
                  "--batch-size", "16", "--set", "model.name=smallcnn", "--set", "model.width=8",
                  "--set", "data.image_size=32", "--set", f"data.options.classes={classes}", "--quiet"]
    code, _, err = run_cli(capsys, "train", "--dataset", f"manifest:{man}", *train_args, "--out", str(tmp_path / "r0"))
    assert code == 0, err
    q = tmp_path / "queries.csv"
    code, out, err = run_cli(capsys, "suggest-labels", str(tmp_path / "r0"), "--budget", "12", "--strategy",
                             "uncertainty", "--per-image", "3", "--out", str(q))
    assert code == 0, err
    rows = _read_csv(q)
    assert len(rows) == 12 and len({r["image"] for r in rows}) == 4
    truth = {f"img/train_{i:03d}.png": ds.trainval.targets[i] for i in range(len(ds.trainval))}
    for r in rows:
        r["answer"] = "yes" if truth[r["image"]][names.index(r["class"])] else "no"
    with open(q, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    new = tmp_path / "labels-r1.csv"
    code, out, err = run_cli(capsys, "apply-answers", str(man), str(q), "--out", str(new), "--classes", classes)
    assert code == 0, err
    before = load_dataset(f"manifest:{man}", classes=classes).trainval
    after = load_dataset(f"manifest:{new}", classes=classes).trainval
    added = {(after.ids[i], names[j]) for i, j in np.argwhere(after.known & ~before.known)}
    assert added == {(r["image"], r["class"]) for r in rows}  # exactly the answered entries became known
    assert np.array_equal(after.targets[after.known], ds.trainval.targets[after.known])  # with the true answers
    code, _, err = run_cli(capsys, "train", "--dataset", f"manifest:{new}", *train_args, "--out", str(tmp_path / "r1"))
    assert code == 0, err
    saved = np.load(tmp_path / "r1" / "observed_labels.npz")["observed"]
    assert int((saved != 0).sum()) == int((before.known).sum()) + 12
