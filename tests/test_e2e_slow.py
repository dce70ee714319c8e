"""End-to-end evidence on real data (marked slow; CI runs them too)."""

from __future__ import annotations

import numpy as np
import pytest

from mlrkit.config import build_config
from mlrkit.engine.demo import DEMO_RECIPE
from mlrkit.engine.trainer import train

from .test_recipes import CONFIGS

pytestmark = pytest.mark.slow
#: the small-CNN tests' budget, below the recipe's (3,000 mosaics, 5 epochs) to keep the suite short;
#: same for every loss and for VLPL, so the comparisons stay like for like
SMALLCNN_BUDGET = {"data": {"limit_train": 2000}, "train": {"epochs": 4}}


def _demo_run(tmp_path, dataset, protocol, loss, seed):
    cfg = build_config(flags={**DEMO_RECIPE, "seed": seed, "out": str(tmp_path / f"{dataset}-{loss}-{seed}"),
                              "data": {"name": dataset}, "labels": {"protocol": protocol}, "loss": {"name": loss}})
    return train(cfg, quiet=True)["test_map"]


@pytest.fixture(scope="module")
def demo_table(tmp_path_factory):
    """``mlrkit demo`` once (in 2 worker processes), shared by the demo and yeast tests: its directory,
    its time, its CSV rows and test mAP per (dataset, loss) (seed 0)."""
    import csv
    import time

    from mlrkit.cli.main import main

    out = tmp_path_factory.mktemp("demo")
    t = time.perf_counter()
    assert main(["demo", "--out", str(out), "--jobs", "2"]) == 0
    elapsed = time.perf_counter() - t
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {"out": out, "elapsed": elapsed, "rows": rows,
            "map": {(r["dataset"], r["loss"]): float(r["test_map"]) for r in rows}}


@pytest.mark.xdist_group("demo")  # shares the module fixture demo_table
def test_yeast_single_positive_findings_of_cole_and_zhou(tmp_path, demo_table):
    """Mean of 3 seeds: full-label BCE beats AN by >= 4 points; EM or WAN beats AN by >= 1 point.
    Seed 0 is the demo's run (made in a worker process: it must equal the same run in this process)."""
    assert _demo_run(tmp_path, "yeast", "full", "bce", 0) == demo_table["map"][("yeast", "bce")]
    m = {loss: np.mean([demo_table["map"][("yeast", loss)]] + [_demo_run(tmp_path, "yeast", proto, loss, s)
                                                               for s in (1, 2)])
         for proto, loss in (("full", "bce"), ("single-positive", "an"), ("single-positive", "em"),
                             ("single-positive", "wan"))}
    print({k: round(100 * v, 2) for k, v in m.items()})
    assert m["bce"] - m["an"] >= 0.04
    assert max(m["em"], m["wan"]) - m["an"] >= 0.01


@pytest.fixture(scope="module")
def smallcnn_single_positive(tmp_path_factory):
    """test mAP of the small-CNN recipe with single-positive ``an`` and ``em`` (trained once, shared)."""
    out = tmp_path_factory.mktemp("smallcnn")
    recipe = CONFIGS / "fashion-mosaic" / "smallcnn.yaml"
    return {loss: train(build_config(recipe, {**SMALLCNN_BUDGET, "out": str(out / loss),
                                              "labels": {"protocol": "single-positive"}, "loss": {"name": loss}}),
                        quiet=True)["test_map"] for loss in ("an", "em")}


@pytest.mark.xdist_group("smallcnn")  # shares the module fixture smallcnn_single_positive
def test_fashion_mosaic_small_cnn_full_beats_single_positive_beats_chance(tmp_path, smallcnn_single_positive):
    recipe = CONFIGS / "fashion-mosaic" / "smallcnn.yaml"
    cfg = build_config(recipe, {**SMALLCNN_BUDGET, "out": str(tmp_path / "bce"), "labels": {"protocol": "full"},
                                "loss": {"name": "bce"}})
    res = {"bce": train(cfg, quiet=True)["test_map"], "an": smallcnn_single_positive["an"]}
    from mlrkit.data import load_dataset

    chance = float(load_dataset("fashion-mosaic").test.targets.mean())  # AP of random scores = prevalence
    print({k: round(100 * v, 2) for k, v in res.items()}, "chance", round(100 * chance, 2))
    assert res["bce"] > res["an"] > chance + 0.2


@pytest.mark.xdist_group("demo")  # shares the module fixture demo_table
def test_demo_end_to_end(demo_table):
    out = demo_table["out"]
    table = (out / "results.md").read_text()
    assert "| full | bce |" in table and "| single-positive | em |" in table
    assert (out / "demo_map.png").stat().st_size > 10_000
    from mlrkit.engine.demo import default_losses

    assert len(demo_table["rows"]) == 2 * (1 + len(default_losses())) and len(default_losses()) >= 18
    print(f"demo took {demo_table['elapsed']:.1f} s")


@pytest.mark.xdist_group("smallcnn")  # shares the module fixture smallcnn_single_positive
def test_vlpl_with_mosaic_clip_beats_an_and_em(tmp_path, monkeypatch, smallcnn_single_positive):
    """Same small CNN, budget and single-positive labels; VLPL adds mosaic-clip pseudo-labels."""
    import json

    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    res = dict(smallcnn_single_positive)
    cfg = build_config(CONFIGS / "vlpl" / "fashion-mosaic.yaml", {**SMALLCNN_BUDGET, "out": str(tmp_path / "vlpl")})
    res["vlpl"] = train(cfg, quiet=True)["test_map"]
    quality = json.loads((tmp_path / "vlpl" / "run.json").read_text())["method_info"]["pseudo_label_quality"]
    print({k: round(100 * v, 2) for k, v in res.items()}, quality)
    assert quality["positive_precision"] > 0.9
    assert res["vlpl"] > res["em"] and res["vlpl"] > res["an"]


def test_scpnet_beats_an_with_the_same_mosaic_clip_encoder(tmp_path, monkeypatch):
    """docs/scpnet.md, scaled down (400 training mosaics, 1 epoch, 300 test mosaics, seed 0): full SCPNet
    vs the same trainable mosaic-clip-heldout image tower + a linear head trained with `an`."""
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    small = {"data": {"limit_train": 400, "options": {"limit_test": 300}}, "train": {"epochs": 1}}
    res = {}
    for name in ("full", "an"):
        cfg = build_config(CONFIGS / "scpnet" / "fashion-mosaic-heldout" / f"{name}.yaml",
                           {**small, "out": str(tmp_path / name)})
        res[name] = train(cfg, quiet=True)["test_map"]
    print({k: round(100 * v, 2) for k, v in res.items()})
    assert res["full"] > res["an"] + 0.03
