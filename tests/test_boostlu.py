"""BoostLU (Kim et al. 2023): CAM head, BoostLU switches, explain, grouped mAP, pointing game, LL-Cp guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mlrkit.config import build_config, load_recipe
from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.models.backbones import Backbone, SmallCNN
from mlrkit.models.cam import CAMClassifier, boostlu

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "boostlu"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``mlrkit ARGS`` in this process (a subprocess would re-import torch: seconds per call)."""
    from mlrkit.cli.main import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


class _ConvStub(Backbone):
    """A BatchNorm-free backbone, so train() and eval() differ only by the BoostLU switch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.feature_dim = 6

    def forward_map(self, x):
        return self.conv(x)


def _tiny_cfg(tmp_path: Path, name: str, **over) -> object:
    d = {
        "seed": 0, "out": str(tmp_path / name),
        "data": {"name": "fashion-mosaic", "image_size": 28, "limit_train": 160, "options": {"limit_test": 48}},
        "labels": {"protocol": "single-positive"},
        "method": {"name": "cam"}, "model": {"name": "smallcnn", "width": 4, "depth": 3},
        "loss": {"name": "an"}, "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3, "progress": False},
    }
    from mlrkit.config import deep_merge

    return build_config(None, deep_merge(d, over))


# ----------------------------------------------------------------------------- CAM head and BoostLU


def test_cam_shape_and_logit_is_spatial_mean():
    torch.manual_seed(0)
    model = CAMClassifier(SmallCNN(width=4, depth=3), 5).eval()
    x = torch.randn(2, 3, 32, 32)
    cam = model.cam(x)
    assert cam.shape == (2, 5, 8, 8)
    torch.testing.assert_close(model(x), cam.mean(dim=(2, 3)))
    # without BoostLU the CAM head is a linear classifier on average-pooled features
    feats = model.backbone(x)
    w, b = model.classifier.weight[:, :, 0, 0], model.classifier.bias
    torch.testing.assert_close(model(x), feats @ w.T + b, rtol=1e-5, atol=1e-5)


def test_boostlu_formula_on_hand_values():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    torch.testing.assert_close(boostlu(x, 5.0), torch.tensor([-2.0, -0.5, 0.0, 2.5, 15.0]))  # negatives kept
    torch.testing.assert_close(boostlu(x, 1.0), x)
    with pytest.raises(ValueError, match="alpha >= 1"):
        boostlu(x, 0.5)


@pytest.mark.parametrize("b_train,b_infer", [(True, False), (False, True), (True, True), (False, False)])
def test_train_and_infer_switches_are_independent(b_train, b_infer):
    torch.manual_seed(0)
    model = CAMClassifier(_ConvStub(), 3, alpha=5.0, boost_train=b_train, boost_infer=b_infer)
    x = torch.randn(4, 3, 16, 16)
    cam = model.cam(x)
    plain, boosted = cam.mean(dim=(2, 3)), boostlu(cam, 5.0).mean(dim=(2, 3))
    assert not torch.allclose(plain, boosted)
    model.train()
    assert model.boost_active is b_train
    torch.testing.assert_close(model(x), boosted if b_train else plain)
    model.eval()
    assert model.boost_active is b_infer
    torch.testing.assert_close(model(x), boosted if b_infer else plain)


def test_cam_method_reads_the_boostlu_section():
    from mlrkit.methods import TaskInfo, build_method

    cfg = build_config(None, {"data": {"name": "fashion-mosaic", "image_size": 32}, "method": {"name": "cam"},
                              "model": {"name": "smallcnn", "width": 4},
                              "boostlu": {"train": True, "infer": False, "alpha": 3}})
    model = build_method(cfg).build_model(TaskInfo(["a", "b"], "images", image_size=32))
    assert isinstance(model, CAMClassifier)
    assert (model.boost_train, model.boost_infer, model.alpha) == (True, False, 3.0)
    assert isinstance(model.classifier, nn.Conv2d) and model.classifier.kernel_size == (1, 1)


@pytest.mark.parametrize("section,match", [
    ({"trian": True}, r"unknown config key 'boostlu.trian' \(did you mean train\?\)"),
    ({"beta": 2}, r"unknown config key 'boostlu.beta'"),
    ({"alpha": 0.5}, r"boostlu.alpha must be a finite number >= 1"),
    ({"alpha": "big"}, r"boostlu.alpha must be a number"),
    ({"infer": "maybe"}, r"boostlu.infer must be true or false"),
    ({"groups": -1}, r"boostlu.groups must be a non-negative integer"),
])
def test_bad_boostlu_section_is_a_config_error(section, match):
    with pytest.raises(ConfigError, match=match):  # when the configuration is loaded, before anything is built
        build_config(None, {"data": {"name": "fashion-mosaic"}, "method": {"name": "cam"}, "boostlu": section})


def test_boostlu_section_with_another_method_is_an_error():
    with pytest.raises(ConfigError, match="'boostlu' is read by method cam, but the active method is 'finetune'"):
        build_config(None, {"method": {"name": "finetune"}, "model": {"name": "smallcnn"}, "boostlu": {"groups": 5}})


def test_unknown_boostlu_key_on_the_command_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--config", str(CONFIGS / "fashion-mosaic-an.yaml"), "--set",
                           "boostlu.infre=true", "--out", str(tmp_path / "r"))
    assert code == 2 and "boostlu.infre" in err and "did you mean infer" in err


def test_clip_resnet_trunk_cam():
    from mlrkit.methods import TaskInfo, build_method

    cfg = build_config(None, {"data": {"name": "fashion-mosaic", "image_size": 64}, "method": {"name": "cam"},
                              "model": {"name": "clip:tiny:rn"}, "boostlu": {"infer": True}})
    method = build_method(cfg)
    model = method.build_model(TaskInfo(["a", "b", "c"], "images", image_size=64)).eval()
    assert method.mean != (0.5, 0.5, 0.5)  # CLIP's own normalisation
    x = torch.randn(2, 3, 64, 64)
    cam = model.cam(x)
    assert cam.shape == (2, 3, 2, 2)  # ModifiedResNet layer4: stride 32
    torch.testing.assert_close(model(x), boostlu(cam, 5.0).mean(dim=(2, 3)))
    assert not any("attnpool" in k for k in model.state_dict())
    bad = build_config(None, {"data": {"name": "fashion-mosaic"}, "method": {"name": "cam"},
                              "model": {"name": "clip:tiny"}})
    with pytest.raises(MlrkitError, match="CLIP ResNet"):
        build_method(bad).build_model(TaskInfo(["a"], "images", image_size=32))


# ----------------------------------------------------------------------------- a tiny trained run


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory) -> Path:
    from mlrkit.engine.trainer import train

    tmp = tmp_path_factory.mktemp("cam")
    cfg = _tiny_cfg(tmp, "run", loss={"name": "ll_r"}, boostlu={"train": True, "infer": True})
    train(cfg, quiet=True)
    return Path(cfg.out)


@pytest.fixture(scope="module")
def mosaic_pngs(tmp_path_factory) -> list[Path]:
    from mlrkit.data import load_dataset

    d = tmp_path_factory.mktemp("imgs")
    ds = load_dataset("fashion-mosaic", limit_test=2)
    paths = []
    for i in range(2):
        p = d / f"mosaic{i}.png"
        ds.test.images.load(i).save(p)
        paths.append(p)
    return paths


def test_explain_writes_pngs_and_scores(cam_run, mosaic_pngs, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "ex"
    code, stdout, err = run_cli(capsys, "explain", str(cam_run), *map(str, mosaic_pngs), "--classes",
                                "Bag,sneaker,0", "--out", str(out))
    assert code == 0, err
    assert "with BoostLU" in stdout
    report = json.loads((out / "scores.json").read_text())
    assert report["alpha"] == 5.0 and len(report["images"]) == 2
    for im in report["images"]:
        assert im["shown"] == ["Bag", "Sneaker", "T-shirt/top"]
        assert len(im["classes"]) == 10
        for s in im["classes"].values():
            # BoostLU only raises a score: mean(max(x, 5x)) >= mean(x)
            assert s["score_boostlu"] >= s["score"] - 1e-6
        with Image.open(im["png"]) as png:
            assert png.format == "PNG" and png.size[0] > 300
    # default: the top-k predicted classes
    from mlrkit.analysis.explain import explain_images

    rep = explain_images(cam_run, mosaic_pngs[:1], top_k=2, out_dir=tmp_path / "ex2")
    sc = rep["images"][0]["classes"]
    assert rep["images"][0]["shown"] == sorted(sc, key=lambda n: -sc[n]["score_boostlu"])[:2]
    with pytest.raises(MlrkitError, match="unknown class 'Hat'"):
        explain_images(cam_run, mosaic_pngs[:1], classes=["Hat"], out_dir=tmp_path / "x")


def test_explain_needs_a_cam_model(tmp_path, mosaic_pngs, capsys):
    from mlrkit.engine.trainer import train

    cfg = _tiny_cfg(tmp_path, "ft", method={"name": "finetune"}, train={"epochs": 1})  # 0: refused (untrained)
    train(cfg, quiet=True)
    code, _, err = run_cli(capsys, "explain", cfg.out, str(mosaic_pngs[0]), "--out", str(tmp_path / "x"))
    assert code == 2 and "explain needs a CAM model" in err and "--method cam" in err


def test_pointing_of_a_run(cam_run):
    from mlrkit.analysis.pointing import pointing_of_run

    res = pointing_of_run(cam_run, limit=20)
    assert res.n_images == 20 and res.pairs > 20 and res.map_shape == (7, 7)
    assert 0.25 < res.chance < 0.5 and 0 <= res.accuracy <= 1
    assert res.on_object_boostlu >= res.on_object  # BoostLU only raises attributions


# ----------------------------------------------------------------------------- pointing game by hand


def test_pointing_game_hand_made():
    from mlrkit.analysis.pointing import attribution_stats, pointing_game, pointing_hits

    # one 2x2 mosaic (cells row-major), 2x2 CAM, image 2x2 px: every pixel is a cell, no interpolation
    tiles = np.array([[1, 1, 2, 0]])
    targets = np.array([[1, 1, 1, 0]])
    cam = torch.zeros(1, 4, 2, 2)
    cam[0, 0] = torch.tensor([[0.0, 0.0], [0.0, 3.0]])  # peak in cell 3: class 0 -> hit
    cam[0, 1] = torch.tensor([[-1.0, -2.0], [4.0, -3.0]])  # peak in cell 2 (class 2) -> miss
    cam[0, 2] = torch.tensor([[0.0, 0.0], [2.0, 1.0]])  # peak in cell 2 -> hit
    hit, chance = pointing_hits(cam, targets, tiles, grid=2, image_size=2)
    np.testing.assert_array_equal(hit, [True, False, True])
    np.testing.assert_allclose(chance, [0.25, 0.5, 0.25])
    res = pointing_game(cam, targets, tiles, grid=2, image_size=2, alpha=5.0)
    assert res.pairs == 3 and res.accuracy == pytest.approx(2 / 3) and res.chance == pytest.approx(1 / 3)
    assert res.accuracy_boostlu == res.accuracy  # BoostLU is increasing: the arg-max does not move
    stats = attribution_stats(cam, targets, tiles, grid=2, image_size=2)
    # on-object: class 0 -> 3; class 1 -> mean(-1, -2) = -1.5; class 2 -> 2
    assert stats["on_object"] == (pytest.approx(3 - 1.5 + 2), 3)
    # BoostLU on positives: 15, -1.5, 10
    assert res.on_object_boostlu == pytest.approx((15 - 1.5 + 10) / 3)
    assert res.absent == pytest.approx(0.0)  # class 3 absent, its CAM is 0


def test_pointing_middle_of_a_7x7_map_goes_to_the_larger_neighbour():
    from mlrkit.analysis.pointing import pointing_hits

    cam = torch.zeros(1, 1, 7, 7)
    cam[0, 0, 3, 3] = 5.0  # the middle position straddles the four 28-px tiles of a 56-px mosaic
    cam[0, 0, 3, 4] = 1.0  # ... its right neighbour is larger than the left one
    cam[0, 0, 4, 3] = 1.0  # ... and its lower one larger than the upper one
    tiles = np.array([[1, 1, 1, 0]])  # class 0 only in the bottom-right cell
    hit, chance = pointing_hits(cam, np.array([[1]]), tiles, grid=2, image_size=56)
    assert hit.tolist() == [True] and chance.tolist() == [0.25]


# ----------------------------------------------------------------------------- grouped mAP


def test_grouped_map_hand_made():
    from mlrkit.metrics_groups import class_groups, grouped_map

    counts = np.array([5, 1, 3, 3, 0, 9])
    groups = class_groups(counts, 3)
    assert [g.tolist() for g in groups] == [[1, 4], [2, 3], [0, 5]]  # fewest first, ties by class index
    # four images; per-class AP by construction: 1, 1/4, 0.75, 1, 1, 1/4
    t = np.array([[1, 1, 1, 1, 0, 1], [0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.uint8)
    s = np.array([[0.9, 0.1, 0.9, 0.9, 0.1, 0.1],
                  [0.1, 0.9, 0.1, 0.1, 0.9, 0.9],
                  [0.2, 0.8, 0.8, 0.2, 0.2, 0.8],
                  [0.3, 0.7, 0.2, 0.3, 0.3, 0.7]])
    rep = grouped_map(s, t, None, counts, n_groups=3, class_names=list("abcdef"))
    g1, g2, g3 = rep["groups"]
    assert g1["map"] == pytest.approx((0.25 + 1.0) / 2) and g1["classes"] == ["b", "e"]
    assert g2["map"] == pytest.approx((0.75 + 1.0) / 2)
    assert g3["map"] == pytest.approx((1.0 + 0.25) / 2)
    assert (g1["annotations_min"], g1["annotations_max"], g3["annotations_max"]) == (0, 1, 9)
    assert rep["map"] == pytest.approx((1 + 0.25 + 0.75 + 1 + 1 + 0.25) / 6)
    # unknown entries are ignored: hide class b's wrongly ranked negatives -> AP 1
    mask = np.ones_like(t, dtype=bool)
    mask[1:, 1] = False
    assert grouped_map(s, t, mask, counts, 3)["groups"][0]["map"] == pytest.approx(1.0)
    # a group without any positive reports None; 5 groups of 6 classes: sizes 2,1,1,1,1
    t2 = t.copy()
    t2[:, 1] = 0
    t2[:, 4] = 0
    rep2 = grouped_map(s, t2, None, counts, 3)
    assert rep2["groups"][0]["map"] is None and rep2["groups"][0]["n_scored"] == 0
    assert [g["n_classes"] for g in grouped_map(s, t, None, counts, 5)["groups"]] == [2, 1, 1, 1, 1]
    with pytest.raises(MlrkitError, match="cannot split 6 classes into 7 groups"):
        grouped_map(s, t, None, counts, 7)


OI_CLASSES = [f"/m/0c{k:02d}" for k in range(10)]


def _openimages_fixture(root: Path) -> Path:
    """Open Images files in the adapter's format (as tests/test_datasets_formats.py writes them), 10 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "oidv7-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n" + "".join(f'{m},"Thing {k}"\n' for k, m in enumerate(OI_CLASSES)))
    for part, n, prefix in (("train", 40, "a"), ("test", 16, "b")):
        rows = []
        for i in range(n):
            img = f"{prefix}{i:015x}"
            for k, m in enumerate(OI_CLASSES):
                # class k is annotated in about (k + 1) / 11 of the images: different annotation counts
                if rng.random() < (k + 1) / 11 or (part == "train" and k == 0 and i == 0):
                    rows.append(f"{img},verification,{m},{int(rng.random() < 0.5 or i == 0)}\n")
            if rows and rows[-1].startswith(img):
                (root / part).mkdir(exist_ok=True)
                Image.new("RGB", (16, 16), (20 * (i % 12), 100, 40 * (i % 6))).save(root / part / f"{img}.jpg")
        (root / f"oidv7-{part}-annotations-human-imagelabels.csv").write_text(
            "ImageID,Source,LabelName,Confidence\n" + "".join(rows))
    return root


def test_grouped_map_on_openimages_format(tmp_path):
    from mlrkit.data import load_dataset
    from mlrkit.labels import make_observed
    from mlrkit.metrics import mean_average_precision
    from mlrkit.metrics_groups import grouped_map, train_annotation_counts

    ds = load_dataset("openimages", root=_openimages_fixture(tmp_path / "oi"))
    tv, te = ds.trainval, ds.test
    assert te.known is not None and not te.known.all()
    obs = make_observed(tv.targets, "full", 0, known=tv.known)
    counts = train_annotation_counts(obs)
    np.testing.assert_array_equal(counts, tv.known.sum(0))
    rng = np.random.default_rng(1)
    scores = rng.random(te.targets.shape)
    rep = grouped_map(scores, te.targets, te.known, counts, 5)
    assert [g["n_classes"] for g in rep["groups"]] == [len(ds.class_names) // 5] * 5
    assert rep["map"] == pytest.approx(mean_average_precision(scores, te.targets, te.known))
    mins = [g["annotations_min"] for g in rep["groups"]]
    maxs = [g["annotations_max"] for g in rep["groups"]]
    assert all(maxs[i] <= mins[i + 1] for i in range(4))  # Group 1 has the fewest annotations
    scrambled = np.where(te.known, scores, rng.random(scores.shape))  # unknown entries do not count
    assert grouped_map(scrambled, te.targets, te.known, counts, 5) == rep


def test_openimages_run_reports_grouped_map(tmp_path, capsys):
    from mlrkit.engine.trainer import train

    root = _openimages_fixture(tmp_path / "oi")
    cfg = build_config(None, {
        "seed": 0, "out": str(tmp_path / "run"), "data": {"name": "openimages", "root": str(root), "image_size": 16},
        "labels": {"protocol": "full"}, "method": {"name": "cam"}, "model": {"name": "smallcnn", "width": 4,
                                                                              "depth": 2},
        "loss": {"name": "bce"}, "train": {"epochs": 1, "batch_size": 16, "progress": False}})
    res = train(cfg, quiet=True)
    g = res["grouped_map"]
    assert g["n_groups"] == 5 and len(g["groups"]) == 5
    assert g["map"] == pytest.approx(res["test_map"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["grouped_map"] == g
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "run"))
    assert code == 0, err
    assert "Group 1" in out and "Group 5" in out and "annotations" in out


def test_no_grouped_map_elsewhere_unless_asked(cam_run):
    from mlrkit.engine.inference import evaluate_grouped

    assert "grouped_map" not in json.loads((cam_run / "results.json").read_text())
    assert evaluate_grouped(cam_run) is None


# ----------------------------------------------------------------------------- large loss + CAM


def test_ll_cp_differs_from_ll_ct_in_a_training_run(tmp_path):
    """Regression guard for the reference codes' LL-Cp that silently ran LL-Ct."""
    from mlrkit.engine.checkpoint import load_checkpoint
    from mlrkit.engine.trainer import train

    losses = {}
    for name in ("ll_ct", "ll_cp"):
        cfg = _tiny_cfg(tmp_path, name, loss={"name": name, "delta_rel": 0.02},
                        data={"limit_train": 80, "options": {"limit_test": 16}},
                        boostlu={"train": True, "infer": True}, train={"epochs": 3, "keep_last": True})
        train(cfg, quiet=True)
        losses[name] = [json.loads(line)["train_loss"] for line in (tmp_path / name / "metrics.jsonl").open()]
    # same rate: epoch 0 selects nothing, epoch 1 the same entries (LL-Cp only records them) ...
    assert losses["ll_cp"][:2] == losses["ll_ct"][:2]
    # ... epoch 2 differs: LL-Ct selects 2 x rate afresh, LL-Cp keeps its corrections and adds 1 x rate
    assert losses["ll_cp"][2] != losses["ll_ct"][2]
    ck = load_checkpoint(tmp_path / "ll_cp" / "last.pt")
    assert ck["loss"]["corrected"].sum() > 0


def test_default_large_loss_rates():
    import mlrkit.losses.zoo  # noqa: F401
    from mlrkit import losses

    assert [losses.build(n).delta_rel for n in ("ll_r", "ll_ct", "ll_cp")] == [0.005, 0.002, 0.001]


# ----------------------------------------------------------------------------- recipes, bench


def test_fashion_mosaic_recipes_match_the_ablation_rows():
    from mlrkit.bench.boostlu import ABLATION_ROWS, FASHION_MOSAIC_BASE, FULL_ROW, ablation_config
    from mlrkit.config import deep_merge

    assert deep_merge({}, load_recipe(CONFIGS / "fashion-mosaic-base.yaml")) == FASHION_MOSAIC_BASE
    for row in [*ABLATION_ROWS, FULL_ROW]:
        name = row[0]
        from_recipe = build_config(CONFIGS / f"fashion-mosaic-{name}.yaml", {"seed": 3, "out": "x"})
        assert from_recipe.to_dict() == ablation_config(row, 3, Path("x")).to_dict(), name
        if name != "full":
            full = build_config(CONFIGS / f"ablation-{name}.yaml")
            assert (full.loss.name, full.extra["boostlu"]["train"], full.extra["boostlu"]["infer"]) == row[1:4]
            assert full.method.name == "cam" and full.data.image_size == 448 and full.model.name == "resnet50"
    assert len(ABLATION_ROWS) == 8  # the all-off baseline + the seven rows that switch something on


def test_bench_boostlu_smoke():
    from mlrkit.bench.boostlu import bench_boostlu, format_table

    rows = bench_boostlu(batch=1, image_size=32, classes=4, repeats=2, warmup=1, backbone="smallcnn")
    assert [r["mode"] for r in rows] == ["forward, no BoostLU", "forward, BoostLU", "BoostLU op alone"]
    assert rows[0]["ratio"] == 1.0 and rows[2]["median_ms"] > 0
    assert "median ms" in format_table(rows)


# ----------------------------------------------------------------------------- slow: pointing evidence


@pytest.mark.slow
def test_full_label_cam_points_at_the_objects(tmp_path):
    """A full-label CAM model's arg-max lands in a tile of the class far more often than chance."""
    from mlrkit.analysis.pointing import pointing_of_run
    from mlrkit.engine.trainer import train

    torch.set_num_threads(1)
    cfg = _tiny_cfg(tmp_path, "full", data={"image_size": 56, "limit_train": 1500},
                    labels={"protocol": "full"}, loss={"name": "bce"},
                    model={"width": 8, "depth": 4}, train={"epochs": 3, "batch_size": 64})
    train(cfg, quiet=True)
    res = pointing_of_run(cfg.out, limit=48)
    # chance: a uniformly random point hits a tile of the class with probability (#tiles)/4, > 0.25
    assert 0.25 < res.chance < 0.4
    assert res.accuracy > res.chance + 0.2, res
