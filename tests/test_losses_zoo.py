"""The loss zoo: every loss against its formula computed independently in numpy (float64),
numerical safety at saturated logits, and the behaviour of the stateful losses."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from mlrkit.errors import ConfigError
from mlrkit.losses import LOSSES, build

ALL_LOSSES = [
    "bce", "an", "an_ls", "n_ls", "wan", "l1r", "l2r", "epr", "role", "em", "entmin", "focal",
    "asl", "hill", "splc", "em_apl", "ll_r", "ll_ct", "ll_cp", "csl", "spa", "pbce", "curriculum",
]

# A hand-made batch: 4 images x 6 classes, every observed value, logits on both sides of 0 and of
# SPLC's threshold logit(0.6) = 0.405.
X = np.array(
    [
        [2.0, -1.5, 0.3, -0.7, 1.2, -2.5],
        [-0.4, 0.9, -3.0, 2.6, 0.1, 0.6],
        [1.7, -0.2, 0.8, -1.1, -2.2, 3.1],
        [-2.8, 1.4, -0.6, 0.45, 2.2, -0.05],
    ]
)
Y = np.array(
    [
        [1, 0, 0, -1, 0, 0],
        [0, 1, -1, 0, 0, 0],
        [1, 0, 1, 0, -1, 0],
        [0, 0, 0, 0, 1, -1],
    ],
    dtype=np.int8,
)
B, C = X.shape
IDX = np.arange(B)


# ----------------------------------------------------------------------------- numpy references
def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def lsig(x):
    return -np.logaddexp(0.0, -x)  # log sigmoid(x)


def ent(x):
    p = sig(x)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def ref_an(x, y):
    return np.where(y == 1, -lsig(x), -lsig(-x))


def ref_focal_margin(x, m=1.0, g=2.0):
    pm = sig(x - m)
    return -((1 - pm) ** g) * np.log(pm)


def ref_focal_neg(x, g=2.0):
    return -(sig(x) ** g) * np.log(1 - sig(x))


def ref_epr_reg(p, k):
    return (p.sum(1).mean() - k) ** 2 / p.shape[1] ** 2


REFERENCES = {
    "bce": lambda x, y: np.where(y == 1, -lsig(x), np.where(y == -1, -lsig(-x), 0.0)).mean(),
    "an": lambda x, y: ref_an(x, y).mean(),
    "an_ls": lambda x, y: np.where(
        y == 1, -(0.9 * lsig(x) + 0.1 * lsig(-x)), -(0.9 * lsig(-x) + 0.1 * lsig(x))
    ).mean(),
    "n_ls": lambda x, y: (
        lambda t: -(t * lsig(x) + (1 - t) * lsig(-x))
    )(np.where(y == 1, 1.1, -0.1)).mean(),
    "wan": lambda x, y: np.where(
        y == 1, -lsig(x), np.where(y == 0, -lsig(-x) / (x.shape[1] - 1), -lsig(-x))
    ).mean(),
    "l1r": lambda x, y: ref_an(x, y).mean() + 0.01 * np.abs(x).mean(),
    "l2r": lambda x, y: ref_an(x, y).mean() + 0.01 * (x**2).mean(),
    "em": lambda x, y: np.where(y == 1, -lsig(x), np.where(y == 0, -0.1 * ent(x), -lsig(-x))).mean(),
    "entmin": lambda x, y: np.where(y == 1, -lsig(x), np.where(y == 0, 0.1 * ent(x), -lsig(-x))).mean(),
    "focal": lambda x, y: np.where(
        y == 1, -((1 - sig(x)) ** 2) * lsig(x), -(sig(x) ** 2) * lsig(-x)
    ).mean(),
    "asl": lambda x, y: (
        lambda pm: np.where(y == 1, -lsig(x), -(pm**4) * np.log(1 - pm))
    )(np.maximum(sig(x) - 0.05, 0.0)).mean(),
    "hill": lambda x, y: np.where(y == 1, ref_focal_margin(x), (1.5 - sig(x)) * sig(x) ** 2).mean(),
    # spa: unknowns ignored; zeta+=1, k+=1, b+=0, zeta-=5, k-=3, b-=1
    "spa": lambda x, y: np.where(y == 1, -lsig(x), np.where(y == -1, -lsig(-3 * (x - 1)) / 5, 0.0)).mean(),
    # pbce: Durand's g(rho) = alpha rho + beta with g(0.1) = 5, g(1) = 1
    "pbce": lambda x, y: (np.where(y == 1, -lsig(x), np.where(y == -1, -lsig(-x), 0.0))
                          * (-40 / 9 * (y != 0).mean(1, keepdims=True) + 49 / 9)).mean(),
    # curriculum before any pseudo-label = pbce
    "curriculum": lambda x, y: (np.where(y == 1, -lsig(x), np.where(y == -1, -lsig(-x), 0.0))
                                * (-40 / 9 * (y != 0).mean(1, keepdims=True) + 49 / 9)).mean(),
}


def t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


def run(loss, x=X, y=Y, idx=IDX, epoch=0):
    return float(loss(t(x), t(y, torch.int8), index=torch.as_tensor(idx), epoch=epoch).detach())


def prepared(name, observed=Y, **hp):
    loss = build(name, **hp)
    loss.prepare(t(observed, torch.int8))
    return loss


# ----------------------------------------------------------------------------- registry
def test_every_loss_is_registered_with_a_description():
    import mlrkit.losses.zoo  # noqa: F401

    names = LOSSES.names()
    for n in ALL_LOSSES:
        assert n in names
        entry = LOSSES.entry(n)
        assert entry.description and "\n" not in entry.description
        assert entry.obj.__doc__ and "math::" in entry.obj.__doc__, f"{n}: docstring needs the formula"


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_unknown_hyper_parameter_is_a_config_error(name):
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        build(name, not_a_parameter=1)


def test_bad_hyper_parameter_values_are_config_errors():
    for name, hp in [("an_ls", {"eps": 0.7}), ("n_ls", {"rate": 0.1}), ("asl", {"clip": 1.5}),
                     ("splc", {"tau": 1.2}), ("ll_r", {"delta_rel": 5}), ("em_apl", {"warmup_epochs": 10}),
                     ("epr", {"expected_num_pos": -1.0}), ("role", {"lr_mult": 0}),
                     ("focal", {"alpha": 1.5}), ("focal", {"unknown": "positive"}), ("csl", {"clip": 1.0}),
                     ("csl", {"priors": [1.5]}), ("spa", {"k_neg": 0}), ("spa", {"unknown": "x"}),
                     ("pbce", {"gamma": 0}), ("curriculum", {"strategy": "x"}),
                     ("curriculum", {"threshold": 0.0}), ("curriculum", {"start_epoch": 0})]:
        with pytest.raises(ConfigError):
            build(name, **hp)


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_value_matches_numpy_formula(name):
    loss = prepared(name)
    assert run(loss) == pytest.approx(REFERENCES[name](X, Y), abs=1e-5)


def test_wan_gamma_from_classes_and_explicit():
    x, y = X[:, :4], Y[:, :4]
    assert run(build("wan"), x, y) == pytest.approx(REFERENCES["wan"](x, y), abs=1e-5)
    ref = np.where(Y == 1, -lsig(X), np.where(Y == 0, -0.5 * lsig(-X), -lsig(-X))).mean()
    assert run(build("wan", gamma=0.5)) == pytest.approx(ref, abs=1e-5)


def test_epr_value_and_k_resolution():
    loss = build("epr", expected_num_pos=2.0)
    m = np.where(Y == 1, -lsig(X), np.where(Y == -1, -lsig(-X), 0.0)).mean()
    assert run(loss) == pytest.approx(m + ref_epr_reg(sig(X), 2.0), abs=1e-5)
    # k estimated from the known entries when there are known negatives: C * #pos / #known
    est = prepared("epr")
    assert est.k_source == "estimated"
    assert est.k == pytest.approx(C * (Y == 1).sum() / (Y != 0).sum())
    # single positive, no negatives: Cole's COCO value, with a warning
    sp = prepared("epr", observed=np.clip(Y, 0, 1))
    with pytest.warns(UserWarning, match="expected_num_pos"):
        assert sp.k == 2.9
    assert sp.k_source == "default"


def test_splc_switches_at_change_epoch():
    loss = build("splc")
    unk_hi = (Y == 0) & (sig(X) > 0.6)
    assert unk_hi.any() and ((Y == 0) & (sig(X) <= 0.6)).any()
    before = np.where(Y == 1, ref_focal_margin(X), ref_focal_neg(X)).mean()
    after = np.where((Y == 1) | unk_hi, ref_focal_margin(X), ref_focal_neg(X)).mean()
    assert run(loss, epoch=0) == pytest.approx(before, abs=1e-5)
    assert run(loss, epoch=1) == pytest.approx(after, abs=1e-5)
    assert run(loss, epoch=7) == pytest.approx(after, abs=1e-5)
    late = build("splc", change_epoch=3)
    assert run(late, epoch=2) == pytest.approx(before, abs=1e-5)
    assert run(late, epoch=3) == pytest.approx(after, abs=1e-5)
    assert not build("splc").stateful  # decided from the current prediction: no index needed


def test_role_value_init_and_trainable_table():
    loss = prepared("role", expected_num_pos=1.5)
    q_all = loss.estimates().double().numpy()
    # Cole's initialisation
    assert np.allclose(q_all[Y == 1], 0.995, atol=1e-6) and np.allclose(q_all[Y == -1], 0.005, atol=1e-6)
    assert ((q_all[Y == 0] > 0.4) & (q_all[Y == 0] < 0.6)).all()
    q = q_all[IDX]
    p = sig(X)
    obs_f = np.where(Y == 1, -lsig(X), np.where(Y == -1, -lsig(-X), 0.0))
    obs_g = np.where(Y == 1, -np.log(q), np.where(Y == -1, -np.log(1 - q), 0.0))
    cross_f = -(q * lsig(X) + (1 - q) * lsig(-X))
    cross_g = -(p * np.log(q) + (1 - p) * np.log(1 - q))
    ref = (0.5 * (obs_f + obs_g) + 0.5 * (cross_f + cross_g)).mean()
    ref += 0.5 * (ref_epr_reg(p, 1.5) + ref_epr_reg(q, 1.5))
    assert run(loss) == pytest.approx(ref, abs=1e-5)
    # the table is a parameter with its lr multiplier, it learns, and it is checkpointed
    assert [n for n, _ in loss.named_parameters()] == ["estimator_logits"]
    assert loss.lr_mult == 10.0 and loss.optimizer_param_groups(1e-4)[0]["lr"] == pytest.approx(1e-3)
    x = t(X).requires_grad_()
    loss(x, t(Y, torch.int8), index=torch.arange(B)).backward()
    assert loss.estimator_logits.grad is not None and loss.estimator_logits.grad.abs().sum() > 0
    fresh = build("role", expected_num_pos=1.5)
    fresh.load_state_dict(loss.state_dict())
    assert run(fresh) == pytest.approx(run(loss), abs=1e-7)
    assert build("role", linear_init=True).linear_init


# ----------------------------------------------------------------------------- numerical safety
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_finite_value_and_gradient_at_saturated_logits(name):
    x = t([[100.0, -100.0, 100.0, -100.0, 100.0, -100.0], [-100.0, 100.0, 0.0, 100.0, -100.0, 50.0]])
    y = t([[1, 1, 0, 0, -1, -1], [0, -1, 1, 0, 0, 0]], torch.int8)
    loss = build(name, **({"expected_num_pos": 2.0} if name in ("epr", "role") else {}))
    loss.prepare(y)
    if name == "em_apl":
        loss.update_pseudo_labels(t([[100.0, -100.0, -100.0, -50.0, 0.0, 0.0], [-100.0] * 6]), epoch=8)
        assert loss.pseudo_negative.any()
    if name == "role":
        loss.set_estimates(t([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.5, 1.0, 0.0, 1.0]]))
    for epoch in (0, 5):
        xg = x.clone().requires_grad_()
        value = loss(xg, y, index=torch.arange(2), epoch=epoch)
        value.backward()
        assert torch.isfinite(value), f"{name}: loss {value} at epoch {epoch}"
        assert torch.isfinite(xg.grad).all(), f"{name}: gradient {xg.grad} at epoch {epoch}"
        for p in loss.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------- stateful losses
def _permutation_invariant(loss_a, x, y, perm, epoch):
    loss_b = copy.deepcopy(loss_a)
    va = loss_a(t(x), t(y, torch.int8), index=torch.arange(len(x)), epoch=epoch)
    vb = loss_b(t(x[perm]), t(y[perm], torch.int8), index=torch.as_tensor(perm), epoch=epoch)
    assert float(va.detach()) == pytest.approx(float(vb.detach()), abs=1e-6)
    for (ka, sa), (kb, sb) in zip(loss_a.state_dict().items(), loss_b.state_dict().items()):
        assert ka == kb and torch.equal(sa, sb), ka


@pytest.mark.parametrize("name", ["role", "em_apl", "ll_cp", "curriculum"])
def test_state_is_keyed_by_index(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 10)) * 2
    y = np.zeros((8, 10), np.int8)
    y[np.arange(8), rng.integers(0, 10, 8)] = 1
    loss = prepared(name, observed=y, **({"expected_num_pos": 2.0} if name == "role" else {}))
    if name == "em_apl":
        loss.update_pseudo_labels(t(rng.normal(size=(8, 10))), epoch=6)
    if name == "curriculum":
        assert loss.update_pseudo_labels(t(rng.normal(size=(8, 10))), epoch=2) > 0
    perm = rng.permutation(8)
    _permutation_invariant(loss, x, y, perm, epoch=2)
    # and a different index really reads different rows
    if name != "ll_cp":
        other = run(loss, x, y, perm, epoch=2)
        assert other != pytest.approx(run(loss, x, y, np.arange(8), epoch=2))


def test_stateful_losses_need_index_and_prepare():
    for name in ("role", "em_apl", "ll_cp", "curriculum"):
        with pytest.raises(RuntimeError, match="prepare"):
            build(name)(t(X), t(Y, torch.int8), index=torch.arange(B))
        loss = prepared(name)
        with pytest.raises(ValueError, match="index"):
            loss(t(X), t(Y, torch.int8))
        with pytest.raises(IndexError):
            loss(t(X), t(Y, torch.int8), index=torch.arange(B) + 100)


def _ll_data(seed=1, b=16, c=50):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, c)) * 2
    y = np.zeros((b, c), np.int8)
    y[np.arange(b), rng.integers(0, c, b)] = 1
    y[rng.random((b, c)) < 0.1] = -1
    y[np.arange(b), rng.integers(0, c, b)] = 1
    return x, y


def _ll_reference(x, y, k, mode):
    an = ref_an(x, y)
    cand = np.flatnonzero((y == 0).ravel())
    top = cand[np.argsort(-an.ravel()[cand])[:k]]
    sel = np.zeros(x.size, bool)
    sel[top] = True
    sel = sel.reshape(x.shape)
    m = np.where(sel, 0.0 if mode == "R" else -lsig(x), an)
    return m.mean(), sel


@pytest.mark.parametrize(
    "name,mode,epoch,expected_k",
    [
        ("ll_r", "R", 0, 0), ("ll_r", "R", 1, 4), ("ll_r", "R", 3, 12),  # ceil(800 * e * 0.5 %)
        ("ll_ct", "Ct", 1, 2), ("ll_ct", "Ct", 3, 5),  # ceil(800 * e * 0.2 %)
        ("ll_cp", "Cp", 0, 0), ("ll_cp", "Cp", 1, 1), ("ll_cp", "Cp", 4, 1),  # ceil(800 * 0.1 %)
    ],
)
def test_large_loss_selects_exactly_the_expected_entries(name, mode, epoch, expected_k):
    x, y = _ll_data()
    loss = prepared(name, observed=y)
    assert loss.num_selected(x.size, epoch) == expected_k
    value = run(loss, x, y, np.arange(len(x)), epoch)
    ref, sel = _ll_reference(x, y, expected_k, mode)
    assert value == pytest.approx(ref, abs=1e-5)
    assert int(loss.last_selected.sum()) == expected_k
    assert np.array_equal(loss.last_selected.numpy(), sel)
    assert not (loss.last_selected.numpy() & (y != 0)).any()  # only unknown entries are candidates


def test_large_loss_count_is_capped_by_unknowns_and_exact_on_round_numbers():
    loss = build("ll_r")
    assert loss.num_selected(200, 3) == 3  # 200 * 3 * 0.005 is 3.0000000000000004 in floating point
    y = np.ones((2, 3), np.int8)
    y[0, 0] = 0
    run(loss, X[:2, :3], y, np.arange(2), epoch=150)  # fraction 0.75 of 6 entries, one unknown
    assert int(loss.last_selected.sum()) == 1


def test_ll_cp_flips_persist_and_are_checkpointed():
    x, y = _ll_data(b=8, c=25)
    idx = np.arange(8) + 10
    n_rows = 30
    obs_all = np.zeros((n_rows, 25), np.int8)
    obs_all[idx] = y
    loss = prepared("ll_cp", observed=obs_all, delta_rel=0.02)  # ceil(200 * 2 %) = 4 per batch
    run(loss, x, y, idx, epoch=1)
    flipped = loss.corrected.clone()
    assert int(flipped.sum()) == 4 and flipped[idx].sum() == 4
    assert loss.num_corrected() == 4
    # persists: at epoch 0 (nothing selected) the flipped entries are now positives
    sel = flipped[idx].numpy()
    expected = np.where(sel, -lsig(x), ref_an(x, y)).mean()
    assert run(loss, x, y, idx, epoch=0) == pytest.approx(expected, abs=1e-5)
    # a second step adds 4 new ones (accumulates) ...
    run(loss, x, y, idx, epoch=1)
    assert int(loss.corrected.sum()) == 8 and bool((loss.corrected & flipped).sum() == 4)
    # ... and lives in the state dict: a fresh loss restored from it behaves identically
    sd = loss.state_dict()
    assert "corrected" in sd and int(sd["corrected"].sum()) == 8
    fresh = build("ll_cp", delta_rel=0.02)
    fresh.load_state_dict(sd)
    assert run(fresh, x, y, idx, epoch=0) == pytest.approx(run(loss, x, y, idx, epoch=0), abs=1e-7)
    # evaluation never changes the corrections
    loss.eval()
    before = loss.corrected.clone()
    run(loss, x, y, idx, epoch=3)
    assert torch.equal(before, loss.corrected)


def test_ll_cp_is_not_ll_ct():
    """Regression: the reference code compared the scheme name with `is`, so LL-Cp ran as LL-Ct."""
    x, y = _ll_data()
    ct, cp = prepared("ll_ct", observed=y, delta_rel=0.01), prepared("ll_cp", observed=y, delta_rel=0.01)
    assert type(ct) is not type(cp) and cp.stateful and not ct.stateful
    idx = np.arange(len(x))
    # same selection on the first step (8 entries: ceil(800 * 1 %) each) ...
    assert run(ct, x, y, idx, 1) == pytest.approx(run(cp, x, y, idx, 1), abs=1e-7)
    # ... but only LL-Cp remembers it: repeated steps diverge, and LL-Cp keeps a state
    assert run(cp, x, y, idx, 1) != pytest.approx(run(ct, x, y, idx, 1), abs=1e-4)
    assert int(cp.corrected.sum()) == 16 and "corrected" not in ct.state_dict()
    # LL-Ct grows with the epoch, LL-Cp does not
    assert ct.num_selected(800, 3) == 24 and cp.num_selected(800, 3) == 8


def test_em_apl_soft_negatives_are_the_lowest_scoring_unknowns():
    rng = np.random.default_rng(3)
    n, c = 12, 3
    y = np.zeros((n, c), np.int8)
    y[[0, 1, 2, 3], [0, 1, 2, 0]] = 1  # U = (10, 11, 11)
    y[5, 1] = -1  # a known negative: never pseudo-labelled; U = (10, 10, 11)
    scores = rng.normal(size=(n, c))
    scores[0, 0] = -50.0  # lowest score of class 0 but a known positive: never chosen
    loss = prepared("em_apl", observed=y, alpha=0.1, beta=0.5, neg_proportion=0.5, warmup_epochs=2,
                    num_epochs=4)
    assert [loss.target_fraction(e) for e in range(5)] == [0.0, 0.25, 0.5, 0.5, 0.5]
    assert loss.update_pseudo_labels(t(scores), epoch=0) == 0  # still warming up
    added = loss.update_pseudo_labels(t(scores), epoch=1)
    unknown_counts = (y == 0).sum(0)
    expected_counts = np.floor(0.25 * unknown_counts).astype(int)  # (2, 2, 2)
    assert added == expected_counts.sum()
    pn = loss.pseudo_negative.numpy().copy()
    for j in range(c):
        cand = np.flatnonzero(y[:, j] == 0)
        lowest = cand[np.argsort(scores[cand, j])[: expected_counts[j]]]
        assert set(np.flatnonzero(pn[:, j])) == set(lowest)
    assert np.allclose(loss.soft_target.numpy()[pn], sig(scores)[pn], atol=1e-6)
    assert loss.update_pseudo_labels(t(scores), epoch=1) == 0  # idempotent for one epoch
    # epoch 2: grows to half of each class's unknowns, keeping the earlier ones
    loss.update_pseudo_labels(t(scores + 0.1), epoch=2)
    assert (loss.pseudo_negative.numpy().sum(0) == np.floor(0.5 * unknown_counts)).all()
    assert (loss.pseudo_negative.numpy() >= pn).all()
    # the loss uses the soft targets, weighted by beta, and never touches `observed`
    idx = np.arange(n)
    pn2, s = loss.pseudo_negative.numpy(), loss.soft_target.double().numpy()
    x = rng.normal(size=(n, c))
    unk = np.where(pn2, -0.5 * (s * lsig(x) + (1 - s) * lsig(-x)), -0.1 * ent(x))
    ref = np.where(y == 1, -lsig(x), np.where(y == 0, unk, -lsig(-x))).mean()
    y_before = y.copy()
    assert run(loss, x, y, idx, epoch=3) == pytest.approx(ref, abs=1e-5)
    assert np.array_equal(y, y_before)
    # probabilities are accepted too
    other = prepared("em_apl", observed=y, neg_proportion=0.5, warmup_epochs=2, num_epochs=4)
    other.update_pseudo_labels(t(sig(scores)), epoch=1, logits=False)
    assert np.array_equal(other.pseudo_negative.numpy(), pn)
    with pytest.raises(ValueError, match="probabilities"):
        other.update_pseudo_labels(t(scores), epoch=2, logits=False)
    with pytest.raises(ValueError, match="whole training split"):
        other.update_pseudo_labels(t(scores[:5]), epoch=2)


def test_em_apl_trains_end_to_end_and_resumes_exactly():
    torch.manual_seed(0)
    n, d, c = 64, 8, 5
    feats = torch.randn(n, d)
    y = torch.zeros(n, c, dtype=torch.int8)
    y[torch.arange(n), torch.randint(0, c, (n,))] = 1
    model = torch.nn.Linear(d, c)
    loss = build("em_apl", warmup_epochs=1, num_epochs=3, beta=0.5)
    loss.prepare(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(3):
        for rows in torch.arange(n).split(16):
            value = loss(model(feats[rows]), y[rows], index=rows, epoch=epoch)
            opt.zero_grad()
            value.backward()
            opt.step()
            assert torch.isfinite(value)
        with torch.no_grad():
            loss.update_pseudo_labels(model(feats), epoch)
    assert loss.stats()["pseudo_negatives"] == int(sum(math.floor(0.9 * u) for u in (y == 0).sum(0).tolist()))
    resumed = build("em_apl", warmup_epochs=1, num_epochs=3, beta=0.5)
    resumed.load_state_dict(loss.state_dict())
    with torch.no_grad():
        out = model(feats)
    idx = torch.arange(n)
    assert float(resumed(out, y, index=idx, epoch=3)) == float(loss(out, y, index=idx, epoch=3))


def test_inputs_are_checked():
    loss = build("focal")
    with pytest.raises(ValueError):
        loss(t(X), t(Y[:, :3], torch.int8))
    with pytest.raises(TypeError):
        loss(t(X), t(Y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("em")(t(X), t(Y, torch.int8))


def test_bench_losses_smoke():
    from mlrkit.bench.losses import bench_losses, format_table

    rows = bench_losses(batch=8, classes=5, repeats=2)
    names = [r["name"] for r in rows]
    assert names[0] == "bce" and set(ALL_LOSSES) <= set(names)
    assert all(r["ms"] > 0 and math.isfinite(r["ratio"]) for r in rows)
    assert "| em_apl | yes |" in format_table(rows)
    cpu_rows = bench_losses(batch=8, classes=5, repeats=1, clock="cpu")
    assert all(r["clock"] == "cpu" for r in cpu_rows)
    with pytest.raises(ValueError, match="clock"):
        bench_losses(clock="gpu")
