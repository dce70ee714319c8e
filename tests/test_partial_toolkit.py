"""The partial-label toolkit (issue 19): FPC protocol, CSL / SPA / partial BCE / curriculum losses,
alpha-balanced focal, LogicMix and MixUp-PME, category-wise fine-tuning; on real data (scene) where
data matters, against independent numpy formulas where a value is checked."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from mlrkit.config import build_config
from mlrkit.data.datasets.builtin import builtin_path
from mlrkit.engine.cft import category_wise_finetune, head_inputs, parse_cft
from mlrkit.engine.mixing import Mixer, SoftTargetLoss, logic_mix, logic_mix_labels, mixup_pme, parse_mix
from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.labels import make_observed
from mlrkit.losses import build
from mlrkit.methods.training_sections import CFTSection, MixSection


@pytest.fixture(scope="module")
def scene():
    with np.load(builtin_path("scene.npz")) as z:
        return {k: z[k] for k in ("X_train", "Y_train")}


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def lsig(x):
    return -np.logaddexp(0.0, -x)


X = np.array([[2.0, -1.5, 0.3, -0.7, 1.2, -2.5], [-0.4, 0.9, -3.0, 2.6, 0.1, 0.6],
              [1.7, -0.2, 0.8, -1.1, -2.2, 3.1], [-2.8, 1.4, -0.6, 0.45, 2.2, -0.05]])
Y = np.array([[1, 0, 0, -1, 0, 0], [0, 1, -1, 0, 0, 0], [1, 0, 1, 0, -1, 0], [0, 0, 0, 0, 1, -1]], np.int8)


def value(loss, x=X, y=Y, epoch=0):
    return float(loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y), index=torch.arange(len(x)),
                      epoch=epoch).detach())


# ----------------------------------------------------------------------------- FPC
@pytest.mark.parametrize("n", [1, 30, 400])
def test_fpc_keeps_n_positives_and_n_negatives_per_class_on_real_data(scene, n):
    t = scene["Y_train"]
    obs = make_observed(t, f"fpc:{n}", seed=3)
    assert np.array_equal((obs == 1).sum(0), np.minimum(n, t.sum(0)))
    assert np.array_equal((obs == -1).sum(0), np.minimum(n, (t == 0).sum(0)))
    assert not ((obs == 1) & (t == 0)).any() and not ((obs == -1) & (t == 1)).any()
    assert np.array_equal(obs, make_observed(t, f"fpc:{n}", seed=3))
    if n < 100:
        assert not np.array_equal(obs, make_observed(t, f"fpc:{n}", seed=4))


def test_fpc_acts_on_known_entries_only(scene):
    t = scene["Y_train"]
    known = np.random.default_rng(0).random(t.shape) < 0.5
    obs = make_observed(t, "fpc:50", seed=0, known=known)
    assert not ((obs != 0) & ~known).any()
    assert np.array_equal((obs == 1).sum(0), np.minimum(50, ((t == 1) & known).sum(0)))


@pytest.mark.parametrize("bad, match", [("fpc", "needs a count per class"), ("fpc:0", "whole number"),
                                        ("fpc:2.5", "whole number"), ("fpc:many", "not a number")])
def test_fpc_argument_errors(scene, bad, match):
    with pytest.raises(MlrkitError, match=match):
        make_observed(scene["Y_train"], bad, seed=0)


# ----------------------------------------------------------------------------- focal with alpha / unknown
@pytest.mark.parametrize("unknown", ["negative", "ignore"])
def test_alpha_balanced_focal_matches_formula(unknown):
    a, g = 0.25, 2.0
    pos = -a * (1 - sig(X)) ** g * lsig(X)
    neg = -(1 - a) * sig(X) ** g * lsig(-X)
    ref = np.where(Y == 1, pos, neg)
    if unknown == "ignore":
        ref = np.where(Y == 0, 0.0, ref)
    assert value(build("focal", alpha=a, unknown=unknown)) == pytest.approx(ref.mean(), abs=1e-6)


def test_focal_detach_keeps_value_changes_gradient():
    x1 = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    x2 = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    a = build("focal", alpha=0.25)(x1, torch.tensor(Y))
    b = build("focal", alpha=0.25, detach_focusing=True)(x2, torch.tensor(Y))
    assert float(a.detach()) == pytest.approx(float(b.detach()))
    a.backward()
    b.backward()
    assert not torch.allclose(x1.grad, x2.grad)


# ----------------------------------------------------------------------------- CSL
def ref_csl(x, y, priors, k, thr=0.05, gp=0.0, gn=1.0, gu=2.0):
    p = sig(x)
    w = np.ones_like(x)
    unknown = y == 0
    if priors is not None:
        w[unknown & (np.asarray(priors)[None, :] > thr)] = 0
    cand = np.flatnonzero(unknown.ravel())
    top = cand[np.argsort(-x.ravel()[cand], kind="stable")[: k * x.shape[0]]]
    w.ravel()[top] = 0
    m = np.where(y == 1, -(1 - p) ** gp * lsig(x), np.where(y == -1, -p**gn * lsig(-x), -p**gu * lsig(-x)))
    return (m * w).mean(), w


@pytest.mark.parametrize("priors", [None, [0.01, 0.3, 0.02, 0.9, 0.04, 0.06]])
def test_csl_matches_formula_and_ignores_selected_unknowns(priors):
    loss = build("csl", likelihood_topk=1, priors=priors)
    loss.prepare(torch.tensor(Y))
    ref, w = ref_csl(X, Y, priors, k=1)
    assert value(loss) == pytest.approx(ref, abs=1e-6)
    assert np.array_equal(loss.ignore_weights(torch.tensor(X, dtype=torch.float32), torch.tensor(Y)).numpy(), w)
    xg = torch.tensor(X, dtype=torch.float32, requires_grad=True)
    loss(xg, torch.tensor(Y)).backward()
    assert (xg.grad.numpy()[w == 0] == 0).all() and (xg.grad.numpy()[w == 1] != 0).all()


def test_csl_estimates_the_prior_from_training_scores_and_checkpoints_it():
    loss = build("csl")
    loss.prepare(torch.tensor(Y))
    assert loss.prior.numel() == 0  # before the first estimate: top-k only
    scores = torch.tensor(np.random.default_rng(1).normal(size=(10, 6)), dtype=torch.float32)
    loss.update_pseudo_labels(scores, epoch=0)
    assert torch.allclose(loss.prior, torch.sigmoid(scores).mean(0))
    fresh = build("csl")
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.prior, loss.prior) and value(fresh) == pytest.approx(value(loss))
    fixed = build("csl", priors=[0.5] * 6)
    fixed.prepare(torch.tensor(Y))
    fixed.update_pseudo_labels(scores, epoch=0)
    assert torch.equal(fixed.prior, torch.full((6,), 0.5))
    with pytest.raises(ConfigError, match="6 classes"):
        build("csl", priors=[0.5] * 4).prepare(torch.tensor(Y))


# ----------------------------------------------------------------------------- SPA
@pytest.mark.parametrize("eta", [0.05, 0.3, 0.6, 0.95])
def test_spa_is_strictly_proper_its_inverse_link_recovers_the_probability(eta):
    loss = build("spa")
    xs = torch.linspace(-12, 12, 240001, dtype=torch.float64)
    pos = -torch.nn.functional.logsigmoid(loss.k_pos * (xs - loss.b_pos)) / loss.zeta_pos
    neg = -torch.nn.functional.logsigmoid(-loss.k_neg * (xs - loss.b_neg)) / loss.zeta_neg
    x_star = xs[torch.argmin(eta * pos + (1 - eta) * neg)]
    assert float(loss.probabilities(x_star.float())) == pytest.approx(eta, abs=2e-3)
    # the plain sigmoid of the minimiser is not the probability (why the inverse link is needed)
    if eta < 0.9:
        assert abs(float(torch.sigmoid(x_star)) - eta) > 0.05


def test_spa_probabilities_are_monotone_and_finite():
    loss = build("spa")
    x = torch.linspace(-1e4, 1e4, 10001)
    p = loss.probabilities(x)
    assert torch.isfinite(p).all() and (p.diff() >= 0).all() and p[0] < 1e-6 and p[-1] > 1 - 1e-6


def test_spa_unknown_negative_option():
    ref = np.where(Y == 1, -lsig(X), -lsig(-3 * (X - 1)) / 5).mean()
    assert value(build("spa", unknown="negative")) == pytest.approx(ref, abs=1e-6)


# ----------------------------------------------------------------------------- partial BCE / curriculum
def test_pbce_without_normalisation_is_bce():
    assert value(build("pbce", normalize=False)) == pytest.approx(value(build("bce")), abs=1e-7)


def test_curriculum_proportion_steps_label_the_easiest_unknowns():
    rng = np.random.default_rng(2)
    obs = rng.choice([-1, 0, 1], size=(40, 6), p=[0.1, 0.8, 0.1]).astype(np.int8)
    scores = torch.tensor(rng.normal(size=(40, 6)) * 3, dtype=torch.float32)
    loss = build("curriculum", threshold=0.25, start_epoch=2, every=2)
    loss.prepare(torch.tensor(obs))
    assert [loss.step_of(e) for e in range(6)] == [0, 1, 0, 2, 0, 3]
    assert loss.update_pseudo_labels(scores, epoch=0) == 0
    u = int((obs == 0).sum())
    for epoch, step in ((1, 1), (3, 2), (5, 3), (9, 5)):
        n = loss.update_pseudo_labels(scores, epoch=epoch)
        assert n == round(min(1.0, 0.25 * step) * u)
        pseudo = loss.pseudo.numpy()
        assert not (pseudo[obs != 0]).any()  # known labels are never pseudo-labelled
        chosen = pseudo != 0
        s = scores.numpy()
        assert np.array_equal(pseudo[chosen], np.where(s[chosen] > 0, 1, -1))
        if 0 < n < u:  # the easiest: every chosen |x| >= every unchosen unknown |x|
            assert np.abs(s[chosen]).min() >= np.abs(s[(obs == 0) & ~chosen]).max()
    # the loss is partial BCE (Durand's normalisation) on known + pseudo labels
    merged = np.where(obs == 0, loss.pseudo.numpy(), obs)
    x = scores.numpy()
    g = -40 / 9 * (merged != 0).mean(1, keepdims=True) + 49 / 9
    ref = (np.where(merged == 1, -lsig(x), np.where(merged == -1, -lsig(-x), 0.0)) * g).mean()
    assert value(loss, x, obs) == pytest.approx(ref, abs=1e-5)
    fresh = build("curriculum")
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.pseudo, loss.pseudo)


def test_curriculum_score_strategy():
    obs = np.zeros((3, 4), np.int8)
    obs[0, 0] = 1
    loss = build("curriculum", strategy="score", threshold=1.0)
    loss.prepare(torch.tensor(obs))
    s = torch.tensor([[-5.0, 0.5, 2.0, -1.5], [0.9, -0.9, 1.1, 0.0], [3.0, -3.0, 0.2, -0.2]])
    assert loss.update_pseudo_labels(s, epoch=0) == 5
    expected = np.array([[0, 0, 1, -1], [0, 0, 1, 0], [1, -1, 0, 0]], np.int8)
    assert np.array_equal(loss.pseudo.numpy(), expected)


# ----------------------------------------------------------------------------- mixing
def test_logic_mix_label_rule():
    parts = torch.tensor([[[1, -1, 0, -1, 0], [-1, -1, -1, 0, 0]]], dtype=torch.int8)
    assert logic_mix_labels(parts).tolist() == [[1, -1, 0, 0, 0]]
    used = torch.tensor([[True, False]])
    assert logic_mix_labels(parts, used).tolist() == [[1, -1, 0, -1, 0]]


def test_logic_mix_inputs_are_means_of_the_parts_and_labels_follow_them():
    torch.manual_seed(0)
    b, c = 12, 5
    inputs = torch.eye(b)  # row j of the mix shows which rows took part
    obs = torch.tensor(np.random.default_rng(0).choice([-1, 0, 1], size=(b, c)), dtype=torch.int8)
    x, y = logic_mix(inputs, obs, MixSection("logicmix", p=1.0, k_min=2, k_max=3))
    for i in range(b):
        parts = torch.nonzero(x[i]).flatten()
        weights = x[i][parts]
        assert x[i, i] > 0 and torch.isclose(x[i].sum(), torch.tensor(1.0))
        # k in {2, 3} parts (a row may be drawn twice): every weight is a multiple of 1/2 or of 1/3
        assert all(any(abs(w * k - round(w * k)) < 1e-6 for k in (2, 3)) for w in weights.tolist())
        expected = logic_mix_labels(obs[parts].unsqueeze(0))[0]  # repeating a part changes no label
        assert torch.equal(y[i], expected)
    x0, y0 = logic_mix(inputs, obs, MixSection("logicmix", p=0.0))
    assert torch.equal(x0, inputs) and torch.equal(y0, obs)


@pytest.mark.parametrize("name", ["bce", "an"])
def test_mixup_soft_target_loss_is_the_soft_bce(name):
    torch.manual_seed(1)
    obs = torch.tensor(Y)
    x, t, lam = mixup_pme(torch.tensor(X, dtype=torch.float32), obs, MixSection("mixup", alpha=0.75))
    assert (lam >= 0.75).all() and (lam <= 1).all()
    logits = torch.tensor(np.random.default_rng(3).normal(size=Y.shape), dtype=torch.float32)
    got = float(SoftTargetLoss(build(name), t)(logits, obs))
    z, tt = logits.numpy(), t.numpy()
    soft = -(tt * lsig(z) + (1 - tt) * lsig(-z))
    unknown = 0.0 if name == "bce" else -lsig(-z)
    assert got == pytest.approx(np.where(Y != 0, soft, unknown).mean(), abs=1e-6)


def test_mixer_refuses_what_it_cannot_mix():
    with pytest.raises(ConfigError, match="state"):
        Mixer(MixSection("logicmix"), build("ll_cp"))
    with pytest.raises(ConfigError, match="independent"):
        Mixer(MixSection("mixup"), build("csl"))
    with pytest.raises(ConfigError, match="own training step"):
        Mixer(MixSection("logicmix"), build("an"), method_name="scpnet", own_training_step=True)
    Mixer(MixSection("logicmix"), build("csl"))
    Mixer(MixSection("mixup"), build("spa"))


@pytest.mark.parametrize("section, match", [
    ({"name": "cutmix"}, "must be one of"), ({"name": "mixup", "p": 0.5}, "mix.p"),
    ({"name": "logicmix", "k_min": 4}, "k_min"), ({"p": 0.5}, "not read"),
    ({"name": "logicmix", "k": 2}, "unknown config key 'mix.k'")])
def test_mix_section_errors(section, match):
    with pytest.raises(ConfigError, match=match):
        parse_mix(section)


def test_mix_section_defaults():
    assert parse_mix(None) is None and parse_mix({"name": "none"}) is None
    assert parse_mix({"name": "logicmix"}) == MixSection("logicmix", p=1.0, k_min=2, k_max=3)
    assert parse_mix({"name": "mixup"}).alpha == 0.75


# ----------------------------------------------------------------------------- CFT
def test_cft_section_defaults_and_errors():
    assert parse_cft(None) is None and parse_cft({"variant": "none"}) is None
    assert parse_cft({}) == CFTSection()
    assert parse_cft({"variant": "ga", "epochs": 3}).epochs == 3
    for section, match in [({"variant": "sgd"}, "variant"), ({"epoch": 3}, "did you mean epochs"),
                           ({"epochs": 2.5}, "integer"), ({"loss": "nope"}, "unknown loss"),
                           ({"crossover": 2}, "crossover must be <= 1"), ({"elitism": 50}, "elitism")]:
        with pytest.raises((ConfigError, MlrkitError), match=match):
            parse_cft(section)


def _scene_problem(scene):
    rows = np.random.default_rng(0).permutation(len(scene["Y_train"]))  # the file is sorted by class
    x = scene["X_train"][rows].astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = scene["Y_train"][rows]
    obs = make_observed(y[:800], "partial:0.3", seed=0)
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], y.shape[1])
    with torch.no_grad():
        head.weight.mul_(0.1)
    return torch.tensor(x[:800]), obs, torch.tensor(x[800:]), y[800:], head


@pytest.mark.parametrize("variant", ["bp", "ga"])
def test_cft_never_lowers_validation_ap_and_tunes_rows_on_real_data(scene, variant):
    z_tr, obs, z_va, y_va, head = _scene_problem(scene)
    before = copy.deepcopy(head)
    spec = CFTSection(variant=variant, epochs=6, patience=6, lr=1e-2, batch_size=64, population=16)
    names = [f"c{i}" for i in range(6)]
    obs[:, 5] = np.where(obs[:, 5] == 1, 0, obs[:, 5])  # class 5: no known positive -> skipped
    records = category_wise_finetune(spec, head, z_tr, obs, z_va, y_va, None, seed=0, class_names=names)
    assert records[5]["status"] == "skipped" and "training positive" in records[5]["reason"]
    assert torch.equal(head.weight[5], before.weight[5]) and head.bias[5] == before.bias[5]
    tuned = [r for r in records if r["status"] == "tuned"]
    assert tuned, records
    from mlrkit.metrics import average_precision

    ap_after = average_precision((z_va @ head.weight.T + head.bias).detach().numpy(), y_va)
    for c, r in enumerate(records[:5]):
        assert r["val_ap_after"] >= r["val_ap_before"]
        assert ap_after[c] == pytest.approx(r["val_ap_after"], abs=1e-5)
    changed_bias = [c for c, r in enumerate(records) if r["status"] == "tuned" and head.bias[c] != before.bias[c]]
    assert changed_bias  # the whole row is tuned, bias included (mlcpl's GA never changes the bias)


def test_cft_refuses_a_model_without_linear_classifier():
    class NoHead(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(MlrkitError, match="linear classifier"):
        head_inputs(NoHead(), lambda: np.zeros((2, 2)))


@pytest.mark.slow
def test_train_with_csl_logicmix_and_cft_end_to_end_and_resume(tmp_path):
    flags = {"out": str(tmp_path / "run"), "data": {"name": "scene"}, "labels": {"protocol": "partial:0.3"},
             "method": {"name": "linear"}, "loss": {"name": "csl"},
             "train": {"epochs": 2, "batch_size": 128, "lr": 1e-3}}
    cfg = build_config(flags=flags, sets=["mix.name=logicmix", "cft.variant=bp", "cft.epochs=5", "cft.lr=1e-3"])
    from mlrkit.engine.trainer import train

    res = train(cfg, quiet=True)
    assert res["cft"]["classes_tuned"] + res["cft"]["classes_kept"] == 6
    assert res["val_map"] >= res["cft"]["val_map_before"]
    detail = json.loads((tmp_path / "run" / "cft.json").read_text())
    assert [r["class"] for r in detail["classes"]] == list(res["per_class_ap"])
    again = train(copy.deepcopy(cfg), resume=True, quiet=True)  # finished run: CFT is not applied twice
    assert again["test_map"] == res["test_map"] and again["val_map"] == res["val_map"]
    cfg2 = build_config(flags={**flags, "out": str(tmp_path / "run2"), "loss": {"name": "spa"}},
                        sets=["mix.name=mixup", "cft.variant=ga", "cft.epochs=2", "cft.population=10"])
    res2 = train(cfg2, quiet=True)
    assert 0 < res2["test_map"] <= 1 and res2["cft"]["spec"]["variant"] == "ga"
    # a spa run reports probabilities through the loss's inverse link: predict, evaluate, results.json
    from mlrkit.engine.inference import evaluate_run, load_run, predict_inputs

    run = load_run(tmp_path / "run2")
    with np.load(builtin_path("scene.npz")) as z:
        rows = z["X_test"][:20].astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    _, probs = predict_inputs(run, [tmp_path / "rows.npy"])
    logits = run.built.model.eval()(torch.tensor(rows)).detach().double()
    from mlrkit.engine.calibration import link_logits

    # calibration works on the logit of spa's own link (sigmoid of it = spa's probability) ...
    z = link_logits("spa", dict(run.cfg.loss.params), logits.numpy())
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), build("spa").probabilities(logits).numpy(), rtol=1e-6,
                               atol=1e-9)
    # ... and predict returns the run's calibration applied to it, not a sigmoid of the raw logits
    np.testing.assert_allclose(probs, run.calibrated(logits.numpy()), rtol=1e-6, atol=1e-9)
    assert not np.allclose(probs, torch.sigmoid(logits).numpy(), atol=1e-3)
    ev = evaluate_run(tmp_path / "run2", splits=("test",))
    assert ev["test"]["ece"] == pytest.approx(res2["test_metrics"]["ece"], abs=1e-9)
    assert ev["test"]["map"] == pytest.approx(res2["test_map"], abs=1e-9)
    with pytest.raises(ConfigError, match="independent"):
        train(build_config(flags={**flags, "out": str(tmp_path / "run3")}, sets=["mix.name=mixup"]), quiet=True)


def test_losses_that_ignore_unknowns_declare_it():
    """``ignores_unknowns`` follows each loss's own treatment of unknowns (their loss is 0 exactly then)."""
    from mlrkit.losses import LOSSES

    assert {n for n in LOSSES.names() if LOSSES.get(n).ignores_unknowns} == {"pbce", "curriculum", "spa"}
    assert build("spa").ignores_unknowns and not build("spa", unknown="negative").ignores_unknowns
    assert build("focal", unknown="ignore").ignores_unknowns and not build("focal").ignores_unknowns
    g = torch.Generator().manual_seed(0)
    logits, unknown = torch.randn(4, 3, generator=g), torch.zeros(4, 3, dtype=torch.int8)
    cases = [("pbce", {}), ("spa", {}), ("focal", {"unknown": "ignore"}), ("an", {}), ("spa", {"unknown": "negative"})]
    for name, params in cases:
        loss = build(name, **params)
        matrix, _ = loss.loss_matrix(logits, unknown, index=None, epoch=0)
        assert bool((matrix == 0).all()) == loss.ignores_unknowns, (name, params)


@pytest.mark.parametrize("loss, protocol, warned", [("pbce", "single-positive", True), ("an", "single-positive", False),
                                                     ("pbce", "partial:0.3", False)])
def test_train_warns_when_a_loss_that_ignores_unknowns_sees_no_negative(tmp_path, loss, protocol, warned):
    from mlrkit.engine.trainer import train

    cfg = build_config(flags={"method": {"name": "linear"}, "data": {"name": "scene"}, "out": str(tmp_path / "r"),
                              "labels": {"protocol": protocol}, "loss": {"name": loss},
                              "train": {"epochs": 1, "progress": False}})
    train(cfg, quiet=True)
    warnings = json.loads((tmp_path / "r" / "run.json").read_text())["warnings"]
    assert any("no known negative" in w and "unknown=negative" in w for w in warnings) == warned


def test_demo_leaves_out_the_losses_that_ignore_unknowns():
    from mlrkit.engine.demo import default_losses, left_out_losses

    assert set(left_out_losses()) == {"pbce", "curriculum", "spa"}
    assert not set(default_losses()) & set(left_out_losses()) and {"an", "csl", "focal", "em"} <= set(default_losses())
