"""Parity with the papers' reference code (issue 17): transforms, augmentation ranges, lr groups, the
GCN's input, SPLC/ASL gradients against transcriptions of the reference formulas, and every
``*-reference.yaml`` recipe loading and training a step on the built-in data with the ``tiny`` CLIP.

The transcriptions below are written from the reference code's definitions (DualCoOp, PositiveCoOp,
SCPNet, SPLC, ASL), in numpy/torch, independently of mlrkit's implementation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlrkit import losses, vl
from mlrkit.config import build_config
from mlrkit.data.transforms import (
    FIXMATCH_CUTOUT_FILL,
    FIXMATCH_OPS,
    POLICY_OPS,
    CutoutPIL,
    FixMatchDraw,
    FixMatchRandAugment,
    PolicyRandAugment,
)

from .conftest import run_cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    return vl.load("tiny").freeze()


def three_band_image(w: int = 64, h: int = 32) -> Image.Image:
    """A non-square image: red left eighth, blue right eighth, green in between."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 1] = 255
    a[:, : w // 8] = (255, 0, 0)
    a[:, -(w // 8):] = (0, 0, 255)
    return Image.fromarray(a)


def edge_colours(x: torch.Tensor) -> tuple[int, int]:
    """Dominant channel (0 R, 1 G, 2 B) of the leftmost and rightmost columns of a normalised [3, H, W]."""
    return int(x[:, :, 0].mean(dim=1).argmax()), int(x[:, :, -1].mean(dim=1).argmax())


# ----------------------------------------------------------------------------- resize: squash vs crop
def test_prompt_eval_view_squashes_the_whole_image_by_default(tiny):
    from mlrkit.methods.prompting import feature_options, view_transforms

    cfg = build_config(flags={"method": {"name": "dualcoop"}, "vl": {"model": "tiny"}})
    opts = feature_options(cfg)
    assert opts["resize"] == "squash"
    eval_tf, _ = view_transforms(tiny, 32, opts)
    x = eval_tf(three_band_image())
    assert tuple(x.shape) == (3, 32, 32)
    assert edge_colours(x) == (0, 2)  # both ends of the 2:1 image are still there (labels stay true)
    crop_tf, _ = view_transforms(tiny, 32, {**opts, "resize": "crop"})
    assert edge_colours(crop_tf(three_band_image())) == (1, 1)  # open_clip's centre crop cut them away


def test_reference_recipes_resize_as_their_code(tiny):
    from mlrkit.methods.prompting import feature_options, view_transforms
    from mlrkit.methods.scpnet import parse_options, scpnet_transforms

    cfg = build_config(CONFIGS / "prompting" / "voc2007-dualcoop-reference.yaml")
    opts = feature_options(cfg)
    assert (opts["resize"], opts["interpolation"], opts["augment"], opts["online"]) == \
        ("squash", "bilinear", "reference", True)
    big = view_transforms(tiny, cfg.data.image_size, opts)[0](three_band_image(640, 480))  # a 4:3 photo
    assert cfg.data.image_size == 448 and tuple(big.shape) == (3, 448, 448) and edge_colours(big) == (0, 2)
    eval_tf, train_tf = view_transforms(tiny, 32, opts)
    assert "bilinear" in repr(eval_tf) and "CenterCrop" not in repr(eval_tf)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names[:3] == ["Resize", "CutoutPIL", "PolicyRandAugment"] and "RandomHorizontalFlip" not in names
    x = train_tf(three_band_image())
    assert tuple(x.shape) == (3, 32, 32)
    # SCPNet's reference evaluates on Resize(S) + CenterCrop(S) (bilinear); mlrkit's default squashes
    scfg = build_config(CONFIGS / "scpnet" / "coco2014-reference.yaml")
    ev, weak, strong = scpnet_transforms(tiny, 32, parse_options(scfg.extra["scpnet"]))
    assert edge_colours(ev(three_band_image())) == (1, 1) and "bilinear" in repr(ev)
    assert type(strong.transforms[0]).__name__ == "FixMatchRandAugment"  # on the image, before the crop
    assert [type(t).__name__ for t in weak.transforms[:2]] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert weak.transforms[0].scale == (0.08, 1.0)
    ev_default, _, strong_default = scpnet_transforms(tiny, 32, parse_options({}))
    assert edge_colours(ev_default(three_band_image())) == (0, 2)
    assert "FixMatch" not in repr(strong_default)


# ----------------------------------------------------------------------------- FixMatch RandAugment (SCPNet)
def test_fixmatch_magnitudes_span_each_ops_full_range_and_cutout_is_always_applied():
    torch.manual_seed(0)
    ra = FixMatchRandAugment(3, 0.5)
    seen: dict[str, list[float]] = {}
    cut = []
    for _ in range(3000):
        d = ra.draw()
        assert len(d.ops) == 3
        for name, v in d.ops:
            seen.setdefault(name, []).append(v)
        cut.append(d.cutout)
    assert set(seen) == {n for n, _, _ in FIXMATCH_OPS}  # 14 ops, drawn with replacement
    for name, low, high in FIXMATCH_OPS:
        v = np.array(seen[name])
        assert v.min() >= low and v.max() <= high
        span = high - low
        assert v.min() < low + 0.05 * span and v.max() > high - 0.05 * span, name  # not a fixed magnitude
    cut = np.array(cut)
    assert cut.min() < 0.02 and cut.max() > 0.48 and cut.max() <= 0.5
    # Cutout comes with every draw (no probability): a constant image always gets the fill colour
    black = Image.new("RGB", (48, 40))
    for _ in range(40):
        out = np.asarray(ra(black))
        assert (out == np.array(FIXMATCH_CUTOUT_FILL)).all(axis=2).any()
    out = np.asarray(ra.apply(black, FixMatchDraw([("Identity", 0.5)], 0.25)))
    filled = (out == np.array(FIXMATCH_CUTOUT_FILL)).all(axis=2)
    assert 100 <= filled.sum() <= 13 * 13  # a square of side 0.25 x 48 = 12 px (clipped at a border)


def test_torchvision_randaugment_is_not_the_reference():
    """The default strong view (torchvision RandAugment(3, 5)) uses one fixed magnitude bin: the reason for
    the fixmatch switch (its Rotate is 5/30 of 30 degrees at most, never the reference's +-30)."""
    from torchvision.transforms import RandAugment

    space = RandAugment(3, 5)._augmentation_space(31, (32, 32))
    mag = float(space["Rotate"][0][5])
    assert mag == pytest.approx(30.0 * 5 / 30)


# ----------------------------------------------------------------------------- DualCoOp's augmentation
def test_policy_randaugment_draws_and_cutout_pil_is_always_applied():
    torch.manual_seed(1)
    ra = PolicyRandAugment()
    bins, applied, ops = set(), [], set()
    for _ in range(2000):
        d = ra.draw()
        assert len(d.ops) == 2
        for name, index, on, sign in d.ops:
            bins.add(index)
            applied.append(on)
            ops.add(name)
            assert sign in (-1, 1)
    assert bins == set(range(1, 10)) and ops == set(POLICY_OPS)
    assert 0.45 < np.mean(applied) < 0.55
    img = Image.new("RGB", (40, 40), (10, 20, 30))
    for _ in range(30):
        assert PolicyRandAugment()(img).size == (40, 40)
    cut = CutoutPIL(0.5)
    changed = [int((np.asarray(cut(img)) != np.asarray(img)).any(axis=2).sum()) for _ in range(30)]
    assert min(changed) >= 100 and max(changed) <= 21 * 21  # always a box, at most 0.5 W x 0.5 H


# ----------------------------------------------------------------------------- prompt methods: lrs, residual
def small_flags(**over):
    flags = {"data": {"name": "fashion-mosaic", "image_size": 32, "limit_train": 24, "options": {"limit_test": 8}},
             "vl": {"model": "tiny"}, "train": {"epochs": 1, "batch_size": 8, "progress": False, "num_workers": 0}}
    for k, v in over.items():
        flags[k] = {**flags.get(k, {}), **v}
    return flags


def built(recipe: Path, **over):
    from mlrkit.engine.optim import param_groups
    from mlrkit.methods.base import TaskInfo, build_method

    cfg = build_config(recipe, small_flags(**over))
    method = build_method(cfg)
    model = method.build_model(TaskInfo(class_names=NAMES, input_kind="images", image_size=32))
    groups = param_groups(model, method.classifier_parameters(model), cfg.train)
    return cfg, model, groups


def lr_of(groups, p) -> float:
    return next(g["lr"] for g in groups if any(q is p for q in g["params"]))


def test_baseline_reference_trains_its_linear_layer_at_a_hundredth_of_the_lr():
    for recipe in ("voc2007-baseline-reference.yaml", "fashion-mosaic-baseline-reference.yaml"):
        cfg, model, groups = built(CONFIGS / "prompting" / recipe)
        assert lr_of(groups, model.pos_weight) == pytest.approx(0.01 * cfg.train.lr)
        assert lr_of(groups, model.neg_bias) == pytest.approx(0.01 * cfg.train.lr)


@pytest.mark.parametrize("method", ["positivecoop", "negativecoop"])
def test_positivecoop_reference_lrs_and_randn_residual(method):
    cfg, model, groups = built(CONFIGS / "prompting" / f"coco2014-{method}-reference.yaml")
    prompt_branch = model.positive if method == "positivecoop" else model.negative
    embed_branch = model.negative if method == "positivecoop" else model.positive
    # README lr 0.002: the prompt at 0.01 x 0.002, the embeddings and the residual at 0.002
    assert lr_of(groups, prompt_branch.prompt.ctx) == pytest.approx(2e-5)
    assert lr_of(groups, embed_branch.embedding.weight) == pytest.approx(2e-3)
    res = prompt_branch.residual.weight
    assert lr_of(groups, res) == pytest.approx(2e-3)
    assert abs(float(res.detach().std()) - 1.0) < 0.15 and float(res.detach().abs().min()) >= 0  # torch.randn
    assert cfg.train.weight_decay == 0.0 and (cfg.train.warmup, cfg.train.warmup_lr) == ("constant", 5e-3)
    # the zero initialisation stays available
    cfg2 = build_config(CONFIGS / "prompting" / f"coco2014-{method}-reference.yaml",
                        small_flags(method={"residual_init": "zeros"}))
    from mlrkit.methods.base import TaskInfo, build_method

    m2 = build_method(cfg2).build_model(TaskInfo(class_names=NAMES, input_kind="images", image_size=32))
    branch = m2.positive if method == "positivecoop" else m2.negative
    assert float(branch.residual.weight.detach().abs().max()) == 0.0


def test_constant_warmup_then_schedule():
    from mlrkit.config import TrainConfig
    from mlrkit.engine.optim import build_scheduler

    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p1], "lr": 2e-5}, {"params": [p2], "lr": 2e-3}], lr=1.0)
    tc = TrainConfig(epochs=4, scheduler="cosine", warmup_epochs=1, warmup="constant", warmup_lr=5e-3)
    sched = build_scheduler(opt, tc, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert all(lr == pytest.approx([5e-3, 5e-3]) for lr in lrs[:10])  # every group at the warm-up lr
    assert lrs[10] == pytest.approx([2e-5, 2e-3])  # then the schedule from its start, per group
    assert lrs[-1][1] < 1e-4


# ----------------------------------------------------------------------------- SCPNet: schedule, GCN, scale
def test_onecycle_pct_start_and_schedule_epochs():
    from mlrkit.config import TrainConfig
    from mlrkit.engine.optim import build_scheduler

    def peak_and_last(**kw):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p], lr=1e-3)
        tc = TrainConfig(scheduler="onecycle", **kw)
        sched = build_scheduler(opt, tc, steps_per_epoch=10)
        lrs = []
        for _ in range(tc.epochs * 10):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return int(np.argmax(lrs)), lrs[-1]

    assert peak_and_last(epochs=10, pct_start=0.2)[0] == 19  # reference: the peak after 20% of the steps
    assert peak_and_last(epochs=10)[0] == 29  # torch's (and mlrkit's) default 0.3
    _, last_full = peak_and_last(epochs=6, pct_start=0.2)
    _, last_cut = peak_and_last(epochs=6, pct_start=0.2, schedule_epochs=8)  # COCO: 80-epoch cycle, stop at 60
    assert last_full < 1e-7 < last_cut
    cfg = build_config(CONFIGS / "scpnet" / "coco2014-reference.yaml")
    assert (cfg.train.pct_start, cfg.train.epochs, cfg.train.schedule_epochs) == (0.2, 60, 80)


def reference_reweighted(sim: np.ndarray, k: int, s: float) -> np.ndarray:
    """SCPNet's model.py: keep each row's top-k, zero the diagonal, rows to sum s, diagonal 1 - s (A')."""
    rel = sim.copy()
    c = len(rel)
    keep = np.zeros_like(rel, bool)
    for i in range(c):
        keep[i, np.argsort(-rel[i], kind="stable")[:k]] = True
    rel[~keep] = 0
    rel[np.eye(c, dtype=bool)] = 0
    rel = rel / rel.sum(axis=1, keepdims=True) * s
    rel[np.eye(c, dtype=bool)] = 1 - s
    return rel, keep


def reference_prior(rew: np.ndarray, keep: np.ndarray, t: float) -> np.ndarray:
    """SCPNet's model.py: softmax of A'/T over the whole row, zero outside the top-k, renormalise (A*)."""
    e = np.exp(rew / t)
    rel = e / e.sum(axis=1, keepdims=True)
    rel[~keep] = 0
    return rel / rel.sum(axis=1, keepdims=True)


def test_gcn_input_is_a_prime_in_the_reference_and_a_star_by_default(tiny):
    from mlrkit.methods.scpnet import build_scpnet_model, parse_options
    from mlrkit.models.scpnet import prior_from_features

    # positive features: positive cosines, as CLIP text similarities (mlrkit clamps negative ones at 0 in
    # eq. 3, the reference would give them negative weights; docs/scpnet.md)
    feats = torch.rand(10, 16, generator=torch.Generator().manual_seed(0)) ** 3
    p = prior_from_features(feats, k=4, s=0.2, tau=0.3)
    assert float(p.similarity.min()) > 0
    rew, keep = reference_reweighted(p.similarity.numpy().astype(np.float64), 4, 0.2)
    np.testing.assert_allclose(p.reweighted.numpy(), rew, atol=1e-5)
    np.testing.assert_allclose(p.prior.numpy(), reference_prior(rew, keep, 0.3), atol=1e-5)
    ref_opts = parse_options(build_config(CONFIGS / "scpnet" / "voc2012-reference.yaml").extra["scpnet"])
    assert ref_opts.gcn_graph == "reweighted" and parse_options({}).gcn_graph == "prior"
    for opts, expected in ((ref_opts, "prior_reweighted"), (parse_options({}), "prior")):
        model = build_scpnet_model(tiny, NAMES, opts, train_rows=4, prior=p)
        assert torch.equal(model.graph("sam"), getattr(model, expected))
        assert torch.equal(model.graph("pessl"), model.prior)  # calibration always uses A* (eq. 13)


def test_clip_logit_scale_is_trained_in_the_reference(tiny):
    from mlrkit.methods.scpnet import build_scpnet_model, parse_options

    cfg = build_config(CONFIGS / "scpnet" / "nuswide-reference.yaml")
    opts = parse_options(cfg.extra["scpnet"])
    assert opts.tau == "clip" and opts.train_logit_scale
    model = build_scpnet_model(tiny, NAMES, opts, train_rows=4)
    assert isinstance(model.logit_scale, torch.nn.Parameter) and model.logit_scale.requires_grad
    assert float(model.logit_scale.detach()) == pytest.approx(float(tiny.logit_scale))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad.abs()) > 0
    frozen = build_scpnet_model(tiny, NAMES, parse_options({**cfg.extra["scpnet"], "train_logit_scale": False}),
                                train_rows=4)
    assert frozen.logit_scale is None and "logit_scale" not in dict(frozen.named_parameters())


# ----------------------------------------------------------------------------- SPLC and ASL gradients
def reference_splc(x: torch.Tensor, y: torch.Tensor, epoch: int, tau=0.6, change_epoch=1, margin=1.0, gamma=2.0):
    """SPLC as in the SPLC/SCPNet code (loss.py): margin on observed positives, correction, focal weights; sum."""
    x = torch.where(y == 1, x - margin, x)
    if epoch >= change_epoch:
        y = torch.where(torch.sigmoid(x) > tau, torch.ones_like(y), y)
    p = torch.sigmoid(x)
    w = ((1 - p) * y + p * (1 - y)) ** gamma
    return (-(y * torch.nn.functional.logsigmoid(x) + (1 - y) * torch.nn.functional.logsigmoid(-x)) * w).sum()


def test_splc_reference_margin_only_on_observed_positives():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 10, generator=g) * 2.0).requires_grad_()
    y = torch.zeros(6, 10)
    y[torch.arange(6), torch.randint(10, (6,), generator=g)] = 1  # single-positive targets (0 = unknown)
    obs = y.to(torch.int8)
    corrected = (obs == 0) & (torch.sigmoid(x.detach()) > 0.6)
    assert corrected.sum() >= 5
    gx_ref, = torch.autograd.grad(reference_splc(x, y, epoch=1), x)
    loss = losses.build("splc", corrected_margin=False)
    val = loss(x, obs, index=torch.arange(6), epoch=1) * x.numel()
    gx, = torch.autograd.grad(val, x)
    assert float(val.detach()) == pytest.approx(float(reference_splc(x, y, epoch=1).detach()), rel=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    # mlrkit's default (the paper's L+ with the margin on corrected entries): larger gradients there
    gx_paper, = torch.autograd.grad(losses.build("splc")(x, obs, index=torch.arange(6), epoch=1) * x.numel(), x)
    ratio = (gx_paper[corrected].abs() / gx_ref[corrected].abs())
    assert float(ratio.min()) > 1.5
    torch.testing.assert_close(gx_paper[~corrected], gx_ref[~corrected], rtol=1e-5, atol=1e-6)


def reference_asl(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8, detach=False):
    """Ridnik et al.'s AsymmetricLoss (the ASL repository), sum over entries."""
    xs_pos = torch.sigmoid(x)
    xs_neg = (1 - xs_pos + clip).clamp(max=1) if clip > 0 else 1 - xs_pos
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    with torch.set_grad_enabled(not detach):
        pt = xs_pos * y + xs_neg * (1 - y)
        w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * w).sum()


@pytest.mark.parametrize("detach", [False, True])
def test_asl_gradients_match_the_reference(detach):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 8, generator=g) * 3).requires_grad_()
    y = (torch.rand(5, 8, generator=g) < 0.3).float()
    ref = reference_asl(x, y, detach=detach)
    gx_ref, = torch.autograd.grad(ref, x)
    asl = losses.build("asl", gamma_pos=0.0, gamma_neg=4.0, clip=0.05, detach_focusing=detach)
    val = asl(x, torch.where(y == 1, 1, -1).to(torch.int8), index=torch.arange(5)) * x.numel()
    gx, = torch.autograd.grad(val, x)
    assert float(val.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-6)
    other, = torch.autograd.grad(reference_asl(x, y, detach=not detach), x)
    assert not torch.allclose(gx, other, rtol=1e-3)  # the switch matters


# ----------------------------------------------------------------------------- VLPL
@pytest.mark.slow
def test_vlpl_reference_pseudo_labels_every_step_from_the_training_view(tmp_path, monkeypatch):
    from mlrkit.engine.trainer import train
    from mlrkit.methods.base import build_method
    from mlrkit.methods.vl_methods import VLPLMethod

    cfg = build_config(CONFIGS / "vlpl" / "fashion-mosaic-reference.yaml",
                       small_flags(model={"name": "smallcnn", "width": 4}, vl={"model": "tiny"}))
    assert cfg.method.params["pseudo_labels"] == "every_step" and cfg.loss.params["beta_neg"] == 0.0
    with pytest.raises(Exception, match="init_from_train"):
        build_method(cfg).step_pseudo_labels(torch.randn(4, 3, 32, 32))
    seen = []
    original = VLPLMethod.step_pseudo_labels

    def spy(self, images):
        out = original(self, images)
        seen.append((tuple(images.shape), out.clone()))
        return out

    monkeypatch.setattr(VLPLMethod, "step_pseudo_labels", spy)
    cfg.out = str(tmp_path / "run")
    res = train(cfg, quiet=True)
    assert math.isfinite(res["test_map"])
    train_rows = 24 - int(round(0.2 * 24))
    assert len(seen) == math.ceil(train_rows / 8)  # one VL pass per training step, on the step's own views
    assert all(shape[1:] == (3, 32, 32) and out.shape == (shape[0], 10) for shape, out in seen)
    assert all(set(out.unique().tolist()) <= {0, 1} for _, out in seen)  # delta 0: no pseudo-negatives


# ----------------------------------------------------------------------------- dry run shows the transforms
def test_dry_run_prints_train_and_eval_transforms():
    from mlrkit.cli.commands import cmd_train  # noqa: F401  (the --dry-run branch prints dry_run(cfg))
    from mlrkit.methods.prompting import dry_run

    cfg = build_config(CONFIGS / "prompting" / "fashion-mosaic-dualcoop-reference.yaml", {"vl": {"model": "tiny"}})
    tf = dry_run(cfg)["transforms"]
    assert "online" in tf["train"] and "CutoutPIL" in tf["train"] and "PolicyRandAugment" in tf["train"]
    assert "Resize(size=(56, 56)" in tf["eval"] and "bilinear" in tf["eval"] and "CenterCrop" not in tf["eval"]
    default = dry_run(build_config(CONFIGS / "prompting" / "fashion-mosaic-dualcoop.yaml",
                                   {"vl": {"model": "tiny"}}))["transforms"]
    assert default["train"].startswith("cached, 2 views") and "RandomResizedCrop" in default["train"]
    scp = dry_run(build_config(CONFIGS / "scpnet" / "fashion-mosaic-heldout" / "full-reference.yaml",
                               {"vl": {"model": "tiny"}}))["transforms"]
    assert "FixMatchRandAugment" in scp["train"] and "CenterCrop" in scp["eval"]


@pytest.mark.slow
def test_dry_run_cli_prints_the_transforms():
    r = run_cli("train", "--dataset", "fashion-mosaic", "--method", "finetune", "--set", "model.name=smallcnn",
                "--set", "data.image_size=32", "--dry-run")
    assert r.returncode == 0, r.stderr
    tf = json.loads(r.stdout.strip().splitlines()[-1])["transforms"]
    assert "RandomHorizontalFlip" in tf["train"] and "RandomHorizontalFlip" not in tf["eval"]


# ----------------------------------------------------------------------------- every reference recipe runs
REFERENCE_RECIPES = sorted(p for p in CONFIGS.rglob("*reference.yaml") if p.name != "reference.yaml"
                           and not p.name.startswith("reference-")
                           and p.parent.name != "negation")  # `mlrkit negation` recipes, not `mlrkit train` ones


def test_every_method_has_reference_recipes():
    names = {str(p.relative_to(CONFIGS)) for p in REFERENCE_RECIPES}
    for m in ("dualcoop", "positivecoop", "negativecoop", "baseline"):
        assert {f"prompting/voc2007-{m}-reference.yaml", f"prompting/coco2014-{m}-reference.yaml",
                f"prompting/fashion-mosaic-{m}-reference.yaml"} <= names
    for ds in ("coco2014", "voc2012", "nuswide", "cub"):
        assert f"scpnet/{ds}-reference.yaml" in names
    assert "scpnet/fashion-mosaic-heldout/full-reference.yaml" in names
    for ds in ("coco2014", "voc2012", "nuswide", "cub", "fashion-mosaic"):
        assert f"vlpl/{ds}-reference.yaml" in names


@pytest.mark.parametrize("recipe", REFERENCE_RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_dry_run_prints_the_transforms_of_every_reference_recipe(recipe):
    """Every reference preset's --dry-run shows what images go through, also where the dataset is absent (CUB,
    NUS-WIDE here: then without class-dependent parameter counts). The tiny CLIP stands in for the papers'
    CLIPs, and VLPL's ResNet-50 is built without its ImageNet weights (not downloadable here; the
    architecture and its normalisation, hence the transforms, are the same)."""
    from mlrkit.methods.prompting import dry_run

    over = {"vl": {"model": "tiny"}}
    if "vlpl" in recipe.parts:
        over["model"] = {"pretrained": False}
    out = dry_run(build_config(recipe, over))
    tf = out["transforms"]
    size = out.get("image_size") or build_config(recipe, over).data.image_size
    assert isinstance(tf["train"], str) and isinstance(tf["eval"], str) and f"{size}" in tf["eval"]
    if "prompting" in recipe.parts:  # squash to S x S; online Cutout + RandAugment views
        assert f"Resize(size=({size}, {size})" in tf["eval"] and "CenterCrop" not in tf["eval"]
        assert tf["train"].startswith("online") and "CutoutPIL" in tf["train"] and "PolicyRandAugment" in tf["train"]
    elif "scpnet" in recipe.parts:  # weak random crop + flip; FixMatch strong view; resize + centre crop eval
        assert "RandomResizedCrop" in tf["train"] and "FixMatchRandAugment" in tf["train"]
        assert "CenterCrop" in tf["eval"]
    else:  # VLPL: Resize((448, 448)) + flip for training, pseudo-labels from that view every step
        assert "vlpl" in recipe.parts and f"Resize(size=({size}, {size})" in tf["train"]
        assert "RandomHorizontalFlip" in tf["train"] and "RandomHorizontalFlip" not in tf["eval"]
        assert tf["pseudo_labels"].startswith("every step")
    if recipe.name.startswith(("cub", "nuswide")):
        assert out["classes"] is None and "unavailable" in out["class_names_from"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REFERENCE_RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_reference_recipe_trains_a_smoke_epoch_on_builtin_data(recipe, tmp_path):
    """The full-size recipes need VOC/COCO/NUS/CUB and OpenAI weights; here each runs one epoch on 24
    fashion-mosaic images with the tiny CLIP (and a tiny CNN for VLPL), everything else as written."""
    from mlrkit.engine.trainer import train

    over = {"vl": {"model": "tiny"}, "features": {"cache_dir": str(tmp_path / "cache")}}
    if "vlpl" in recipe.parts:
        over["model"] = {"name": "smallcnn", "width": 4}
        over["vl"] = {"model": "tiny", "templates": "single"}
    flags = small_flags(**over)
    flags["out"] = str(tmp_path / "run")
    cfg = build_config(recipe, flags)
    res = train(cfg, quiet=True)
    assert math.isfinite(res["test_map"]) and 0.0 <= res["test_map"] <= 1.0


# ----------------------------------------------------------------------------- NegationCLIP
@pytest.mark.slow
def test_negation_finetune_every_row_per_epoch_as_the_reference_loader():
    """rows_per_epoch='all' takes every (image, row) pair once per epoch (3 rows per image: 3x the steps);
    the default draws one row per distinct image."""
    from mlrkit.data import load_dataset
    from mlrkit.negation import captions
    from mlrkit.negation.finetune import FinetuneConfig, finetune_negation

    ds = load_dataset("fashion-mosaic", limit_train=30, limit_test=4)
    sp = ds.trainval
    rows, _ = captions.generate_p1(class_names=ds.class_names, targets=sp.targets, ids=sp.ids, per_image=3, seed=0)
    steps, n_train = {}, 0
    for mode in ("image", "all"):
        res = finetune_negation(vl.load("tiny"), rows, sp.images, sp.ids,
                                FinetuneConfig(lr=1e-4, epochs=1, batch_size=4, rows_per_epoch=mode, seed=0),
                                progress=False)
        steps[mode], n_train = res.steps, res.n_train_images
        assert np.isfinite(res.best_val_loss)
    assert steps == {"image": n_train // 4, "all": (3 * n_train) // 4}
    with pytest.raises(Exception, match="rows_per_epoch"):
        FinetuneConfig(rows_per_epoch="caption").validate()


def test_negation_reference_recipe_sets_the_reference_loader():
    from mlrkit.cli.main import build_parser
    from mlrkit.cli.negation import apply_recipe

    args = build_parser().parse_args(["negation", "finetune", "--config", str(CONFIGS / "negation" / "reference.yaml"),
                                      "--captions", "x.jsonl", "--out", "y.pt"])
    args = apply_recipe(args)
    assert (args.rows_per_epoch, int(args.batch_size), float(args.p_negated), bool(args.train_logit_scale)) == \
        ("all", 512, 1.0, True)
    assert (float(args.lr), int(args.epochs), bool(args.freeze_ln_final), bool(args.multi_positive)) == \
        (1e-6, 15, True, False)
    # the fashion-mosaic reference preset: the data of fashion-mosaic.yaml, every fine-tuning setting of reference.yaml
    args = apply_recipe(build_parser().parse_args(
        ["negation", "finetune", "--config", str(CONFIGS / "negation" / "fashion-mosaic-reference.yaml"),
         "--captions", "x.jsonl", "--out", "y.pt"]))
    assert (args.dataset, args.rows_per_epoch, int(args.batch_size), float(args.lr), bool(args.multi_positive),
            bool(args.freeze_ln_final)) == ("fashion-mosaic", "all", 512, 1e-6, False, True)


def test_negation_reference_freezes_the_final_text_layernorm():
    from mlrkit.negation.finetune import trainable_parameters

    model = vl.load("tiny")
    names = {id(p): n for n, p in model.clip.named_parameters()}
    default = {names[id(p)] for p in trainable_parameters(model, ("text",))}
    reference = {names[id(p)] for p in trainable_parameters(model, ("text",), True, freeze_ln_final=True)}
    assert {"ln_final.weight", "ln_final.bias"} <= default and not any(n.startswith("visual.") for n in default)
    assert reference == (default - {"ln_final.weight", "ln_final.bias"}) | {"logit_scale"}
    assert not model.clip.ln_final.weight.requires_grad and model.clip.logit_scale.requires_grad
