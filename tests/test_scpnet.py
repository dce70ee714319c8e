"""SCPNet (Ding et al., CVPR 2023): structured prior, GCN, PESSL terms, training, ablation switches,
resume, config validation, ``analyze prior`` and the bench. Runs on ``tiny`` / ``tiny:rn`` at 32-64 px
and a few real fashion-mosaic images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mlrkit import losses, vl
from mlrkit.config import build_config
from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.methods.base import TaskInfo, build_method
from mlrkit.methods.scpnet import (
    binary_kl,
    calibrate,
    class_thresholds,
    confident_set,
    consistency_loss,
    consistency_targets,
    distillation_loss,
    learning_status,
    parse_options,
    scpnet_step,
    update_status,
)
from mlrkit.models.scpnet import (
    CLIPImageEncoder,
    GraphConvolution,
    SemanticAssociation,
    cached_structured_prior,
    prior_from_features,
    reweight,
    structured_prior,
    topk_mask,
)

from .conftest import run_cli

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(autouse=True)
def _one_thread(tmp_path_factory, monkeypatch):
    """One intra-op thread (shared CI machine); caches in a temporary directory."""
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return vl.load("tiny").freeze()


def scp_cfg(out=None, spec: str = "tiny", size: int = 32, scpnet: dict | None = None, loss: str = "splc", **over):
    flags = {"out": str(out) if out else None, "seed": 0,
             "data": {"name": "fashion-mosaic", "image_size": size, "limit_train": 24, "options": {"limit_test": 8}},
             "labels": {"protocol": "single-positive"}, "method": {"name": "scpnet"}, "loss": {"name": loss},
             "train": {"epochs": 1, "batch_size": 8, "lr": 1e-4, "progress": False},
             "vl": {"model": spec}, "scpnet": {"confident_k": 3, **(scpnet or {})}}
    for k, v in over.items():
        flags[k] = {**flags.get(k, {}), **v} if isinstance(v, dict) else v
    if flags["method"]["name"] != "scpnet":  # only method scpnet reads the scpnet section (others: an error)
        flags.pop("scpnet")
    return build_config(flags=flags)


# ---------------------------------------------------------------------------- structured prior (eqs. 1-4)
def _unit(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_prior_hand_computed_three_classes():
    # cos(t1,t2)=0.6, cos(t1,t3)=0, cos(t2,t3)=0.8
    t = torch.stack([_unit(1.0, 0.0), _unit(0.6, 0.8), _unit(0.0, 1.0)])
    p = prior_from_features(t, k=None, s=0.2, tau=0.2)
    np.testing.assert_allclose(p.similarity, [[1, .6, 0], [.6, 1, .8], [0, .8, 1]], atol=1e-6)
    # eq. 3: diagonal 1-s, neighbours share s in proportion to the similarity
    want_rew = [[0.8, 0.2, 0.0], [0.2 * 0.6 / 1.4, 0.8, 0.2 * 0.8 / 1.4], [0.0, 0.2, 0.8]]
    np.testing.assert_allclose(p.reweighted, want_rew, atol=1e-6)
    # eq. 4: softmax of A'/tau' over the kept entries
    row0 = [math.exp(4.0), math.exp(1.0), math.exp(0.0)]
    np.testing.assert_allclose(p.prior[0], [v / sum(row0) for v in row0], rtol=1e-5)
    row1 = [math.exp(want_rew[1][j] / 0.2) for j in range(3)]
    np.testing.assert_allclose(p.prior[1], [v / sum(row1) for v in row1], rtol=1e-5)
    # K = 2: each row keeps itself and its nearest class only
    p2 = prior_from_features(t, k=2, s=0.2, tau=0.2)
    assert p2.mask.tolist() == [[True, True, False], [False, True, True], [False, True, True]]
    e = math.exp(4.0) + math.exp(1.0)
    np.testing.assert_allclose(p2.prior[0], [math.exp(4.0) / e, math.exp(1.0) / e, 0.0], rtol=1e-5)
    np.testing.assert_allclose(p2.prior[1], [0.0, math.exp(4.0) / e, math.exp(1.0) / e], rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5, None])
def test_prior_rows_sum_to_one_topk_sparse_diagonal_weight(k):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(7, 16, generator=g)
    p = prior_from_features(t, k=k, s=0.3, tau=0.5)
    np.testing.assert_allclose(p.prior.sum(dim=1), np.ones(7), atol=1e-6)
    nz = (p.prior > 0).sum(dim=1)
    assert (nz <= (7 if k is None else k)).all() and (p.mask.sum(dim=1) == (7 if k is None else k)).all()
    assert p.mask.diagonal().all() and (p.prior[~p.mask] == 0).all()
    np.testing.assert_allclose(p.reweighted.diagonal(), np.full(7, 0.7), atol=1e-6)  # 1 - s before the softmax
    off = p.reweighted.clone().fill_diagonal_(0).sum(dim=1)
    for i in range(7):  # neighbours share s (0 when no kept neighbour has a positive similarity)
        assert off[i] == pytest.approx(0.3, abs=1e-6) or off[i] == 0
    if k == 1:
        np.testing.assert_allclose(p.prior, torch.eye(7), atol=1e-7)


def test_negative_similarities_carry_no_weight():
    sim = torch.tensor([[1.0, -0.5, 0.4], [-0.5, 1.0, -0.2], [0.4, -0.2, 1.0]])
    rew = reweight(sim, topk_mask(sim, None), 0.2)
    assert rew[0, 1] == 0 and rew[0, 2] == pytest.approx(0.2)
    assert rew[1].tolist() == pytest.approx([0.0, 0.8, 0.0])  # no positive neighbour: only the diagonal


def test_prior_parameters_are_validated():
    t = torch.randn(4, 8)
    for kw in ({"k": 0, "s": 0.2, "tau": 0.2}, {"k": None, "s": 1.5, "tau": 0.2}, {"k": None, "s": 0.2, "tau": 0}):
        with pytest.raises(ConfigError):
            prior_from_features(t, **kw)


def test_structured_prior_of_a_vl_model_is_cached(tiny, tmp_path):
    a = structured_prior(tiny, NAMES, k=4, s=0.2, tau=0.2)
    assert a.shape == (10, 10)
    p = cached_structured_prior(tiny, NAMES, k=4, s=0.2, tau=0.2, cache_dir=tmp_path)
    files = list((tmp_path / "scpnet-prior").glob("*.pt"))
    assert len(files) == 1
    torch.testing.assert_close(p.prior, a)
    again = cached_structured_prior(tiny, NAMES, k=4, s=0.2, tau=0.2, cache_dir=tmp_path)
    torch.testing.assert_close(again.prior, a)
    other = cached_structured_prior(tiny, NAMES, k=5, s=0.2, tau=0.2, cache_dir=tmp_path)
    assert len(list((tmp_path / "scpnet-prior").glob("*.pt"))) == 2 and not torch.equal(other.prior, a)


# ---------------------------------------------------------------------------- GCN (eqs. 6-7)
def test_gcn_shapes_residual_and_one_layer():
    torch.manual_seed(0)
    h0, adj = torch.randn(5, 8), torch.softmax(torch.randn(5, 5), dim=1)
    sam = SemanticAssociation(8, layers=3)
    assert [tuple(layer.weight.shape) for layer in sam.layers] == [(8, 16), (16, 16), (16, 8)]
    z = sam(h0, adj)
    assert z.shape == (5, 8)
    torch.testing.assert_close(z, h0 + sam.propagate(h0, adj))  # Z* = H0 + HL
    with torch.no_grad():
        for layer in sam.layers:
            layer.weight.zero_()
    torch.testing.assert_close(sam(h0, adj), h0)
    one = SemanticAssociation(8, layers=1)
    torch.testing.assert_close(one(h0, adj), h0 + adj @ h0 @ one.layers[0].weight)  # no activation after the last
    two = SemanticAssociation(8, layers=2, hidden=4)
    w0, w1 = two.layers[0].weight, two.layers[1].weight
    torch.testing.assert_close(two(h0, adj), h0 + adj @ torch.nn.functional.leaky_relu(adj @ h0 @ w0, 0.2) @ w1)
    assert isinstance(two.layers[0], GraphConvolution)
    with pytest.raises(MlrkitError):
        sam(h0, torch.eye(4))


# ---------------------------------------------------------------------------- PESSL (eqs. 8-13)
def test_learning_status_and_thresholds_hand_computed():
    sel = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.uint8)
    # sigma = [3, 1, 0]; K N - sum = 2*4 - 4 = 4 > max sigma 3 -> beta = sigma / 4, at least 1/C
    beta = learning_status(sel, confident_k=2)
    np.testing.assert_allclose(beta, [0.75, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(class_thresholds(beta, 0.9), [0.9 * 0.75 / 1.25, 0.18, 0.18], rtol=1e-6)
    np.testing.assert_allclose(class_thresholds(beta, 0.9, "linear"), [0.675, 0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(learning_status(torch.zeros(4, 3, dtype=torch.uint8), 2), [1 / 3] * 3)
    # K N - sum below max sigma: normalised by the most learned class
    np.testing.assert_allclose(learning_status(torch.ones(4, 3, dtype=torch.uint8), 1), [1.0, 1.0, 1.0])


def test_confident_set_targets_and_status_update():
    p = torch.tensor([[0.6, 0.5, 0.1], [0.3, 0.1, 0.2], [0.5, 0.1, 0.05]])
    omega, m = confident_set(p, torch.tensor([0.54, 0.18, 0.18]), confident_k=2)
    assert omega.tolist() == [[True, True, False], [False, False, True], [False, False, False]]
    assert m.tolist() == [True, True, False]
    obs = torch.tensor([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=torch.int8)
    q = consistency_targets(omega, obs)
    assert q.tolist() == [[1, 1, 0], [1, 0, 1], [0, 0, 0]]
    assert consistency_targets(torch.ones(1, 2, dtype=torch.bool), torch.tensor([[-1, 0]])).tolist() == [[0, 1]]
    sel = torch.full((5, 3), 7, dtype=torch.uint8)
    update_status(sel, torch.tensor([4, 0, 2]), q)
    assert sel[4].tolist() == [1, 1, 0] and sel[0].tolist() == [1, 0, 1] and sel[2].tolist() == [7, 7, 7]


def _bce(q: float, x: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(q * math.log(p) + (1 - q) * math.log(1 - p))


def test_consistency_loss_hand_computed():
    x = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = consistency_loss(x, q, torch.tensor([True, False]))
    assert float(got) == pytest.approx((_bce(1, 2.0) + _bce(0, -1.0)) / 4, rel=1e-6)
    both = consistency_loss(x, q, torch.tensor([True, True]))
    assert float(both) == pytest.approx((_bce(1, 2) + _bce(0, -1) + _bce(0, 0.5) + _bce(1, 0)) / 4, rel=1e-6)


def test_calibration_and_distillation_hand_computed():
    a = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]])
    p = torch.tensor([[0.2, 0.4, 0.8]])
    np.testing.assert_allclose(calibrate(p, a), [[0.3, 0.4, 0.55]], rtol=1e-6)  # p~ = A* p
    lg = math.log(0.6 / 0.4)  # sigma(lg) = 0.6
    kl = 0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4)
    assert float(binary_kl(torch.tensor([0.3]), torch.tensor([lg]))) == pytest.approx(kl, rel=1e-5)
    assert float(binary_kl(torch.tensor([0.0]), torch.tensor([lg]))) == pytest.approx(-math.log(0.4), rel=1e-5)
    assert float(binary_kl(torch.tensor([0.6]), torch.tensor([lg]))) == pytest.approx(0.0, abs=1e-6)
    x = torch.tensor([[lg, 0.0], [1.0, -1.0]])
    tgt = torch.tensor([[0.3, 0.5], [0.2, 0.9]])
    got = distillation_loss(x, tgt, torch.tensor([True, False]))
    assert float(got) == pytest.approx(kl / 4, rel=1e-5)  # KL(0.5 || 0.5) = 0; the second image is masked


def test_total_loss_is_equation_14(tiny):
    method, model = _built(tiny, {})
    batch = next(iter(method.make_loader(_data(method).train, _data(method).observed_train, 8, train=True, seed=0)))
    loss, terms = scpnet_step(model, batch, losses.build("splc"), 1, method.options)
    want = terms["cls"] + 0.125 * terms["cst"] + 0.125 * terms["dstl"]
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    assert terms["cst"] > 0 and terms["dstl"] >= 0
    assert int(model.selected.sum()) > 0  # the status state was updated at the batch's rows


# ---------------------------------------------------------------------------- model and method
_DATA: dict = {}


def _data(method):
    from mlrkit.engine.run_data import prepare_run_data

    key = method.cfg.data.image_size
    if key not in _DATA:
        _DATA[key] = prepare_run_data(method.cfg)
    return _DATA[key]


def _built(tiny, scpnet: dict, spec: str = "tiny", size: int = 32, loss: str = "splc"):
    cfg = scp_cfg(spec=spec, size=size, scpnet=scpnet, loss=loss)
    method = build_method(cfg)
    data = _data(method)
    method.prepare_data(data, device="cpu", progress=False)
    model = method.build_model(TaskInfo(list(data.class_names), "images", image_size=size))
    method.init_from_train(model, data, None, device="cpu")
    return method, model


def test_image_encoder_is_a_trainable_copy(tiny):
    enc = CLIPImageEncoder(tiny)
    assert all(p.requires_grad for p in enc.parameters())
    assert not any(p.requires_grad for p in tiny.parameters())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), tiny.encode_image(x))  # same weights, same features
    enc(x).sum().backward()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    assert not torch.allclose(enc(x), tiny.encode_image(x))  # the frozen model is untouched


def test_static_and_dynamic_graphs_agree_at_initialisation(tiny):
    _, model = _built(tiny, {"graph_sam": "dynamic", "graph_pessl": "dynamic", "k": 4})
    with torch.no_grad():
        dyn = model.graph("sam")
    torch.testing.assert_close(dyn, model.prior, atol=1e-4, rtol=1e-4)  # context starts as "a photo of a"


ABLATIONS = {
    "cmp-only": {"sam": False, "pessl": "none"},
    "sam": {"sam": True, "pessl": "none"},
    "pessl": {"sam": False, "pessl": "both"},
    "cst-only": {"pessl": "cst"},
    "dstl-only": {"pessl": "dstl"},
    "dynamic": {"graph_sam": "dynamic", "graph_pessl": "dynamic", "k": 5},
    "reweighted-gcn-clip-tau-all": {"gcn_graph": "reweighted", "tau": "clip", "dstl_on": "all", "cutout": 0.0,
                                    "randaugment": None, "threshold_mapping": "linear"},
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_each_ablation_switch_builds_and_trains_a_step(tiny, name):
    method, model = _built(tiny, ABLATIONS[name])
    data = _data(method)
    loader = method.make_loader(data.train, data.observed_train, 8, train=True, seed=0)
    batch = next(iter(loader))
    assert ("strong" in batch) == (method.options.pessl != "none")
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model.prompt.ctx.detach().clone()
    loss = method.training_step(model, batch, losses.build("splc"), 1).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.prompt.ctx.grad is not None and model.prompt.ctx.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.prompt.ctx)
    assert (model.sam is None) == (not method.options.sam)
    assert method.classifier_parameters(model) == ([] if model.sam is None else list(model.sam.parameters()))


def test_resnet_tower_trains_a_step(tiny):
    method, model = _built(tiny, {}, spec="tiny:rn", size=64)
    batch = next(iter(method.make_loader(_data(method).train, _data(method).observed_train, 4, train=True, seed=0)))
    assert batch["inputs"].shape == batch["strong"].shape == (4, 3, 64, 64)
    loss = method.training_step(model.train(), batch, losses.build("splc"), 0).loss
    loss.backward()
    assert any(p.grad is not None for p in model.image_encoder.parameters())


def test_clip_finetune_baseline_trains_a_step(tiny):
    cfg = scp_cfg(loss="an", method={"name": "clip-finetune"})
    method = build_method(cfg)
    data = _data(method)
    model = method.build_model(TaskInfo(list(data.class_names), "images", image_size=32))
    batch = next(iter(method.make_loader(data.train, data.observed_train, 8, train=True, seed=0)))
    loss = method.training_step(model, batch, losses.build("an"), 0).loss
    loss.backward()
    assert model.classifier.weight.grad is not None


# ---------------------------------------------------------------------------- training, checkpoints
def test_one_epoch_training_run(tmp_path):
    from mlrkit.engine.inference import evaluate_run
    from mlrkit.engine.trainer import train

    out = tmp_path / "run"
    res = train(scp_cfg(out, train={"ema": 0.9, "keep_last": True}), quiet=True)  # last.pt: the loss state too
    assert 0.0 <= res["test_map"] <= 1.0 and (out / "scpnet_prior.npz").is_file()
    ck = torch.load(out / "last.pt", weights_only=True)
    keys = list(ck["model"])
    assert not any(k.startswith("vl.") for k in keys), "the frozen text side must stay out of checkpoints"
    assert not any(k.startswith("vl.") for k in ck["ema"]["shadow"]), "... and out of the weight EMA"
    assert ck["model"]["selected"].shape == (ck["task"]["extras"]["scpnet_train_rows"], 10)
    assert int(ck["model"]["selected"].sum()) > 0
    info = json.loads((out / "run.json").read_text())["method_info"]
    assert info["trainable_params"]["sam"] > 0 and info["options"]["pessl"] == "both"
    assert evaluate_run(out)["val"]["map"] == pytest.approx(res["val_map"])  # eval = the weak (eval) view


def test_learning_status_state_survives_checkpoint_and_resume(tmp_path, monkeypatch):
    from mlrkit.engine import trainer as tr

    straight = tmp_path / "straight"
    tr.train(scp_cfg(straight, train={"epochs": 2, "keep_last": True}), quiet=True)
    killed = tmp_path / "killed"
    original = tr.Trainer._train_epoch

    def dies_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self, epoch)

    monkeypatch.setattr(tr.Trainer, "_train_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        tr.train(scp_cfg(killed, train={"epochs": 2, "keep_last": True}), quiet=True)
    after_one = torch.load(killed / "last.pt", weights_only=True)["model"]["selected"]
    assert int(after_one.sum()) > 0
    monkeypatch.setattr(tr.Trainer, "_train_epoch", original)
    tr.train(scp_cfg(killed, train={"epochs": 2, "keep_last": True}), resume=True, quiet=True)
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(killed / "last.pt", weights_only=True)["model"]
    assert torch.equal(a["selected"], b["selected"]) and torch.equal(a["prompt.ctx"], b["prompt.ctx"])
    assert json.loads((straight / "results.json").read_text()) == json.loads((killed / "results.json").read_text())


# ---------------------------------------------------------------------------- config validation
def test_bad_scpnet_keys_and_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"scpnet\.gcn_layer .*did you mean gcn_layers"):
        build_method(scp_cfg(scpnet={"gcn_layer": 2}))
    bad = [{"pessl": "half"}, {"graph_sam": "learned"}, {"k": 0}, {"s": 2}, {"tau": 0}, {"tau": "big"},
           {"sam": "yes"}, {"weak_scale": [0.5]}, {"randaugment": [3]}, {"template": "a photo"},
           {"lambda_cst": -1}, {"confident_k": 0}, {"threshold": 1.5}, {"cutout": 1.0}, {"text_chunk": -2}]
    for section in bad:
        with pytest.raises(ConfigError, match="scpnet"):
            parse_options(section)
    with pytest.raises(ConfigError, match="splc"):
        build_method(scp_cfg(loss="an"))
    build_method(scp_cfg(loss="an", scpnet={"require_splc": False}))
    with pytest.raises(ConfigError, match="hyper-parameter"):
        build_method(scp_cfg(method={"name": "scpnet", "k": 3}))  # SCPNet's keys live in `scpnet`, not `method`
    assert parse_options(None).as_dict() == parse_options({}).as_dict()


def test_distributed_loaders_are_refused(tiny):
    method, _ = _built(tiny, {})
    with pytest.raises(MlrkitError, match="distributed"):
        method.make_loader(_data(method).train, None, 8, train=True, seed=0, shard=(0, 2))


# ---------------------------------------------------------------------------- CLI and bench
def test_analyze_prior_writes_a_png(tmp_path):
    out = tmp_path / "prior.png"
    r = run_cli("analyze", "prior", "--vl-model", "tiny", "--dataset", "fashion-mosaic", "--k", "4",
                "--out", str(out), "--json", str(tmp_path / "prior.json"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((tmp_path / "prior.json").read_text())
    a = np.array(rep["prior"])
    assert a.shape == (10, 10) and np.allclose(a.sum(axis=1), 1) and ((a > 0).sum(axis=1) <= 4).all()
    assert "Ankle boot" in r.stdout


def test_bench_scpnet_runs_on_tiny():
    from mlrkit.bench.scpnet import bench_scpnet, format_table

    rows = bench_scpnet(vl_spec="tiny:rn", image_size=64, batch=4, classes=12, repeats=1)
    ratio = next(r for r in rows if "ratio" in r)
    assert ratio["ratio"] > 0 and "within_3x" in ratio
    assert "scpnet" in format_table(rows)


def test_state_grows_when_no_training_split_was_described(tiny):
    from mlrkit.methods.scpnet import build_scpnet_model

    model = build_scpnet_model(tiny, NAMES, parse_options({"confident_k": 2}), train_rows=0).train()
    assert model.selected.shape == (0, 10)
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randn(3, 3, 32, 32, generator=g), "strong": torch.randn(3, 3, 32, 32, generator=g),
             "observed": torch.tensor([[1] + [0] * 9] * 3, dtype=torch.int8), "index": torch.tensor([0, 5, 2])}
    loss, _ = scpnet_step(model, batch, losses.build("splc"), 0, parse_options({}))
    assert torch.isfinite(loss) and model.selected.shape == (6, 10) and model.selected[5, 0] == 1


def test_chunked_text_side_gives_the_same_step(tiny):
    """scpnet.text_chunk (checkpointed chunks of class prompts) changes memory, not the result."""
    from mlrkit.methods.scpnet import build_scpnet_model

    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randn(3, 3, 32, 32, generator=g), "strong": torch.randn(3, 3, 32, 32, generator=g),
             "observed": torch.tensor([[1] + [0] * 9] * 3, dtype=torch.int8), "index": torch.tensor([0, 1, 2])}
    grads = {}
    for chunk in (0, 3):
        opts = parse_options({"confident_k": 2, "text_chunk": chunk})
        model = build_scpnet_model(tiny, NAMES, opts, train_rows=3, seed=0).train()
        assert model.prompt.text_chunk == chunk
        loss, _ = scpnet_step(model, batch, losses.build("splc"), 0, opts)
        loss.backward()
        grads[chunk] = (float(loss.detach()), model.prompt.ctx.grad.clone())
    assert grads[0][0] == pytest.approx(grads[3][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[3][1], rtol=1e-3, atol=1e-6)
