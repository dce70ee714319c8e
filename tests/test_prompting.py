"""Prompt learning for partial labels: DualCoOp, PositiveCoOp, NegativeCoOp and the vision-only baseline.

Everything runs on the ``tiny`` CLIP (ViT, 32 px, D = 64) and a few real fashion-mosaic images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlrkit import losses, vl
from mlrkit.config import build_config
from mlrkit.errors import MlrkitError
from mlrkit.methods.base import TaskInfo, build_method
from mlrkit.models.prompt_learner import (
    PromptLearner,
    RegionPromptModel,
    count_parameters,
    encode_prompts,
    transfer_state,
)
from mlrkit.models.region import aggregate, logit_to_pair_probability, region_logits

from .conftest import run_cli

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
METHODS = ("dualcoop", "positivecoop", "negativecoop", "baseline")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    return vl.load("tiny").freeze()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


def method_cfg(method_name: str, out=None, cache=None, **over):
    flags = {"out": str(out) if out else None, "seed": 0,
             "data": {"name": "fashion-mosaic", "image_size": 32, "limit_train": 40, "options": {"limit_test": 16}},
             "labels": {"protocol": "partial:0.5"}, "method": {"name": method_name},
             "loss": {"name": "asl", "gamma_pos": 1.0, "gamma_neg": 2.0, "unknown": "ignore"},
             "train": {"epochs": 1, "batch_size": 16, "lr": 0.01, "optimizer": "sgd", "progress": False},
             "vl": {"model": "tiny"}, "features": {"cache_views": 2, "cache_dir": str(cache) if cache else None}}
    for k, v in over.items():
        flags[k] = {**flags.get(k, {}), **v} if isinstance(v, dict) else v
    return build_config(flags=flags)


# --------------------------------------------------------------------------- prompt learner
def test_prompt_learner_shapes_csc_and_shared(tiny):
    width = tiny.token_embedding.embedding_dim
    csc = PromptLearner(tiny, NAMES, n_ctx=16, csc=True)
    shared = PromptLearner(tiny, NAMES, n_ctx=16, csc=False)
    assert csc.ctx.shape == (10, 16, width) and shared.ctx.shape == (16, width)
    assert abs(float(csc.ctx.detach().std()) - 0.02) < 0.003
    for pl in (csc, shared):
        emb, tokens = pl()
        assert emb.shape == (10, tokens.shape[1], width)
        assert tokens.shape[1] < tiny.context_length  # cut after the last EOT
        assert [k for k, _ in pl.named_parameters()] == ["ctx"]
        assert list(pl.state_dict()) == ["ctx"]  # SOT/name/EOT embeddings are rebuilt, not saved
    # shared: every class sees the same context rows
    emb, _ = shared()
    assert torch.equal(emb[0, 1:17], emb[5, 1:17])


@pytest.mark.parametrize("csc", [True, False])
def test_chunked_checkpointed_text_encoding_equals_one_pass(tiny, csc):
    """Many classes: chunks of 3 (checkpointed with autograd) give the one-pass values and gradients."""
    names = [f"class number {i}" for i in range(10)]
    torch.manual_seed(0)
    pl = PromptLearner(tiny, names, n_ctx=4, csc=csc)
    weights = torch.randn(10, tiny.embed_dim)
    results = {}
    for chunk in (0, 3, 10, 64):
        pl.ctx.grad = None
        t = encode_prompts(tiny, pl, chunk)
        (t * weights).sum().backward()
        results[chunk] = (t.detach().clone(), pl.ctx.grad.clone())
    for chunk in (3, 10, 64):
        assert torch.allclose(results[chunk][0], results[0][0], atol=1e-5)
        assert torch.allclose(results[chunk][1], results[0][1], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # no autograd: plain chunks, same values
        assert torch.allclose(encode_prompts(tiny, pl, 3), results[0][0], atol=1e-5)
    # slices of the prompt tensor are the rows of the whole one
    whole, tokens = pl()
    part, part_tokens = pl(3, 7)
    assert torch.equal(part, whole[3:7]) and torch.equal(part_tokens, tokens[3:7])


def test_chunked_text_encoding_keeps_no_text_activations(tiny):
    """What autograd keeps for the backward pass: with checkpointed chunks, the text transformer's
    activations are not stored (they are recomputed), so saved memory stops growing with the classes."""
    from torch.autograd.graph import saved_tensors_hooks

    def saved_bytes(n_classes: int, chunk: int) -> int:
        pl = PromptLearner(tiny, [f"class number {i}" for i in range(n_classes)], n_ctx=4, csc=True)
        storages: dict[int, int] = {}  # a tensor saved twice (or a view of a saved one) is counted once

        def pack(t):
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            encode_prompts(tiny, pl, chunk).sum()
        frozen = {p.untyped_storage().data_ptr() for p in tiny.parameters()}
        return sum(n for ptr, n in storages.items() if ptr not in frozen)

    one_pass_40, one_pass_80 = saved_bytes(40, 0), saved_bytes(80, 0)
    chunked_80 = saved_bytes(80, 8)
    assert one_pass_80 > 1.9 * one_pass_40  # unchunked: the activations grow with C
    context_80 = 80 * 4 * tiny.token_embedding.embedding_dim * 4
    assert chunked_80 <= context_80  # checkpointed: only the learned context itself is kept
    assert chunked_80 < one_pass_80 / 20


def test_text_chunk_is_a_method_option(tmp_path):
    cfg = method_cfg("dualcoop", method={"text_chunk": 3})
    method = build_method(cfg)
    model = method.build_model(TaskInfo(class_names=NAMES, input_kind=method.input_kind, image_size=32))
    assert model.positive.prompt.text_chunk == 3 and model.negative.prompt.text_chunk == 3
    with pytest.raises(Exception, match="text_chunk"):
        build_method(method_cfg("dualcoop", method={"text_chunk": -1}))


def test_word_init_reproduces_the_word_embeddings(tiny):
    pl = PromptLearner(tiny, NAMES, init="a photo of a", csc=True)
    ids = tiny.tokenize(["a photo of a"])[0][1:5]
    assert pl.n_ctx == 4
    expected = tiny.token_embedding(ids).detach()
    assert torch.equal(pl.ctx[3], expected)
    # the learned path equals plain text encoding of the same words
    emb, tokens = pl()
    learned = tiny.encode_text_from_embeddings(emb, tokens)
    plain = tiny.encode_text([f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(learned, plain, atol=1e-5, rtol=1e-5)


def test_only_prompts_and_embeddings_are_trainable_and_frozen_clip_is_marked():
    for method in METHODS:
        cfg = method_cfg(method)
        model = build_method(cfg).build_model(TaskInfo(NAMES, "images"))
        assert model.vl.frozen is True
        trainable = {k for k, p in model.named_parameters() if p.requires_grad}
        assert trainable and not any(k.startswith("vl.") for k in trainable)
        counts = count_parameters(model)
        d, w = model.vl.embed_dim, model.vl.token_embedding.embedding_dim
        expected = {"dualcoop": 2 * 10 * 16 * w, "positivecoop": 10 * 16 * w + 10 * d,
                    "negativecoop": 10 * 16 * w + 10 * d, "baseline": 2 * 10 * d + 2 * 10}[method]
        assert counts["trainable_params"] == expected, method
        assert counts["total_params"] == expected + sum(p.numel() for p in model.vl.parameters())


def test_text_initialised_embeddings(tiny):
    cfg = method_cfg("positivecoop")
    cfg.method.params["embed_init"] = "text"
    model = build_method(cfg).build_model(TaskInfo(NAMES, "images"))
    w = model.negative.embedding.weight.detach()
    text = model.vl.class_text_embeddings(NAMES, ("a photo without a {}.",))
    torch.testing.assert_close(torch.nn.functional.normalize(w, dim=-1), text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.norm(dim=-1), torch.full((10,), 64 ** 0.5))
    cfg.method.params["embed_init"] = "zeros"
    with pytest.raises(Exception, match="embed_init"):
        build_method(cfg)


def test_prompt_too_long_is_a_clear_error(tiny):
    with pytest.raises(MlrkitError, match="longer than the text context"):
        PromptLearner(tiny, NAMES, n_ctx=30)


# --------------------------------------------------------------------------- region aggregation and loss
def test_region_aggregation_on_hand_values():
    # two regions, one class: x_0 along t+, x_1 along t-
    dense = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B=1, HW=2, D=2]
    t = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # positive, negative feature of the class
    r = region_logits(dense, t, scale=20.0)  # cosines [[1, 0], [0, 1]] * 20
    torch.testing.assert_close(r, torch.tensor([[[20.0, 0.0], [0.0, 20.0]]]))
    s_pos, s_neg = aggregate(r[:, :1], r[:, 1:], output_scale=5.0)
    w = torch.softmax(torch.tensor([20.0, 0.0]), 0)  # weights of the positive branch pool both
    torch.testing.assert_close(s_pos, 5 * (w * torch.tensor([20.0, 0.0])).sum().reshape(1, 1))
    torch.testing.assert_close(s_neg, 5 * (w * torch.tensor([0.0, 20.0])).sum().reshape(1, 1))
    s_pos2, s_neg2 = aggregate(r[:, :1], r[:, 1:], weights="separate")
    torch.testing.assert_close(s_neg2, s_pos2)  # each branch pooled on its own peak: symmetric here


def test_difference_logit_equals_the_two_way_softmax():
    g = torch.Generator().manual_seed(0)
    s_pos, s_neg = torch.randn(6, 5, generator=g) * 10, torch.randn(6, 5, generator=g) * 10
    torch.testing.assert_close(torch.sigmoid(s_pos - s_neg), logit_to_pair_probability(s_pos, s_neg))


def reference_asl_on_pairs(pairs, y, gamma_neg=2.0, gamma_pos=1.0, clip=0.05, eps=1e-6):
    """DualCoOp's ASL on [B, 2, C] (neg, pos) logits, y in {1, 0, -1 = unknown}, summed; focusing detached."""
    prob = torch.softmax(pairs, dim=1)
    p_pos, p_neg, y = prob[:, 1].reshape(-1), prob[:, 0].reshape(-1), y.reshape(-1).float()
    keep = y != -1
    p_pos, p_neg, y = p_pos[keep], p_neg[keep], y[keep]
    p_neg = (p_neg + clip).clamp(max=1)
    ce = y * torch.log(p_pos.clamp(min=eps)) + (1 - y) * torch.log(p_neg.clamp(min=eps))
    with torch.no_grad():
        pt = p_pos * y + p_neg * (1 - y)
        w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -(ce * w).sum()


def test_asl_on_difference_logits_reproduces_the_reference_pair_loss():
    g = torch.Generator().manual_seed(3)
    b, c = 4, 6
    pairs = (torch.randn(b, 2, c, generator=g) * 2).requires_grad_(True)
    y_ref = torch.randint(-1, 2, (b, c), generator=g)  # reference: 1 pos, 0 neg, -1 unknown
    observed = torch.where(y_ref == 1, 1, torch.where(y_ref == 0, -1, 0)).to(torch.int8)
    ref = reference_asl_on_pairs(pairs, y_ref)
    ref.backward()
    grad_ref = pairs.grad.clone()
    pairs.grad = None
    asl = losses.build("asl", gamma_pos=1.0, gamma_neg=2.0, clip=0.05, unknown="ignore", detach_focusing=True)
    ours = asl(pairs[:, 1] - pairs[:, 0], observed) * (b * c)  # contract: mean over B x C entries
    ours.backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairs.grad, grad_ref, atol=1e-5, rtol=1e-5)


def test_asl_default_still_treats_unknowns_as_negatives():
    logits = torch.tensor([[0.3, -1.0, 2.0]])
    observed = torch.tensor([[1, 0, -1]], dtype=torch.int8)
    an = losses.build("asl")(logits, observed)
    as_neg = losses.build("asl")(logits, torch.tensor([[1, -1, -1]], dtype=torch.int8))
    ign = losses.build("asl", unknown="ignore")
    torch.testing.assert_close(an, as_neg)
    m, _ = ign.loss_matrix(logits, observed, index=None, epoch=0)
    assert m[0, 1] == 0 and m[0, 0] > 0 and m[0, 2] > 0


# --------------------------------------------------------------------------- training on cached features
@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_one_epoch_on_cached_features(method, tmp_path, cache_dir, monkeypatch):
    from mlrkit.engine.trainer import train

    res = train(method_cfg(method, tmp_path / "run", cache_dir), quiet=True)
    assert (tmp_path / "run" / "results.json").is_file()
    assert 0.0 <= res["test_map"] <= 1.0
    # checkpoints hold the learned tensors only: no CLIP weights inside
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["model"] and not any(k.startswith("vl.") for k in ck["model"])
    n_values = sum(v.numel() for v in ck["model"].values())
    clip_values = sum(p.numel() for p in vl.load("tiny").parameters())
    assert n_values < 0.05 * clip_values
    assert (tmp_path / "run" / "best.pt").stat().st_size < 4 * n_values + 200_000

    # the learned tensors initialise a model for another class list, by class name
    from mlrkit.methods.prompting import load_prompts

    sub = build_method(method_cfg(method)).build_model(TaskInfo(["Bag", "trouser"], "images"))
    how = load_prompts(sub, tmp_path / "run")
    assert how and set(how.values()) == {"by name"}
    first = next(k for k in ck["model"])
    torch.testing.assert_close(dict(sub.named_parameters())[first], ck["model"][first][[8, 1]])

    # with the features cached, training never runs the CLIP image tower
    def boom(*a, **k):
        raise AssertionError("encode_dense called during training on cached features")

    monkeypatch.setattr(vl.VisionLanguageModel, "encode_dense", boom)
    res2 = train(method_cfg(method, tmp_path / "run2", cache_dir), quiet=True)
    assert res2["test_map"] == pytest.approx(res["test_map"])  # same seed, same cache: same run


def test_cached_views_are_deterministic_per_seed_epoch_row(cache_dir):
    from mlrkit.data import load_dataset
    from mlrkit.methods.prompting import DenseBatches, ViewImages, train_view_transform

    tiny = vl.load("tiny")
    split = load_dataset("fashion-mosaic", limit_train=12, limit_test=2).trainval
    eval_tf = tiny.transform(train=False, image_size=32)
    train_tf = train_view_transform(tiny, 32, [0.5, 1.0], True)
    v1, v1b, v2 = (ViewImages(split, v, eval_tf, train_tf, seed=0) for v in (1, 1, 2))
    assert torch.equal(v1.load(3), v1b.load(3))  # same (seed, view, row): same augmented image
    assert not torch.equal(v1.load(3), v2.load(3))  # another view differs
    assert torch.equal(ViewImages(split, 0, eval_tf, train_tf, 0).load(3), eval_tf(split.images.load(3)))
    views = [np.full((12, 2, 3), k, np.float32) for k in range(3)]
    a = DenseBatches(views, split, None, 4, shuffle=True, seed=7)
    b = DenseBatches(views, split, None, 4, shuffle=True, seed=7)
    assert np.array_equal(a.view_of(0), b.view_of(0))
    assert not np.array_equal(a.view_of(0), a.view_of(1))
    assert set(np.unique(np.concatenate([a.view_of(e) for e in range(4)]))) == {0, 1, 2}
    a.set_epoch(1)
    for batch in a:  # every row gets the features of its view of the epoch
        rows = batch["index"].numpy()
        assert np.array_equal(batch["inputs"][:, 0, 0].numpy(), a.view_of(1)[rows].astype(np.float32))
    ev = DenseBatches(views, split, None, 4, shuffle=False, sample_views=False)
    assert (ev.view_of(3) == 0).all()


def test_text_features_cached_in_eval_and_refreshed_after_an_update():
    cfg = method_cfg("positivecoop")
    model = build_method(cfg).build_model(TaskInfo(NAMES, "images"))
    model.eval()
    x = torch.randn(2, 16, model.vl.embed_dim)
    with torch.no_grad():
        a = model(x)
        t1 = model.positive(model.vl)
        assert model.positive(model.vl) is t1  # cached
    with torch.no_grad():
        model.positive.prompt.ctx.normal_(0.0, 1.0)  # in place, as an optimizer step
        t2 = model.positive(model.vl)
        fresh = model.positive._features(model.vl)
        torch.testing.assert_close(t2, fresh)
        assert not torch.allclose(t1, t2)
        model.load_state_dict({**model.state_dict(), "positive.prompt.ctx": torch.zeros_like(t1[:1, :1])
                               .new_zeros(model.positive.prompt.ctx.shape)})
        torch.testing.assert_close(model.positive(model.vl), model.positive._features(model.vl))
        assert model(x).shape == a.shape


# --------------------------------------------------------------------------- transfer across class lists
def test_prompts_load_across_class_lists_by_name():
    def build(method, names, **params):
        cfg = method_cfg(method)
        cfg.method.params.update(params)
        return build_method(cfg).build_model(TaskInfo(names, "images"))

    src = build("positivecoop", NAMES)
    with torch.no_grad():
        for p in src.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("vl.")}
    sub = ["bag", "Sneaker", "T-shirt/top"]  # other order, other case
    dst = build("positivecoop", sub)
    how = transfer_state(dst, state, NAMES)
    assert set(how.values()) == {"by name"}
    idx = [8, 7, 0]
    assert torch.equal(dst.positive.prompt.ctx, src.positive.prompt.ctx[idx])
    assert torch.equal(dst.negative.embedding.weight, src.negative.embedding.weight[idx])
    with pytest.raises(MlrkitError, match="not in the saved list.*Umbrella"):
        transfer_state(build("positivecoop", ["Bag", "Umbrella"]), state, NAMES)
    # a shared context loads into any class list (and into class-specific contexts)
    shared = build("dualcoop", NAMES, csc=False)
    s_state = {k: v for k, v in shared.state_dict().items() if not k.startswith("vl.")}
    other = build("dualcoop", ["Umbrella", "Hat"], csc=False)
    assert set(transfer_state(other, s_state, NAMES).values()) == {"as is"}
    assert torch.equal(other.positive.prompt.ctx, shared.positive.prompt.ctx)
    csc = build("dualcoop", ["Umbrella", "Hat"])
    assert set(transfer_state(csc, s_state, NAMES).values()) == {"broadcast"}
    assert torch.equal(csc.negative.prompt.ctx[1], shared.negative.prompt.ctx)
    with pytest.raises(MlrkitError, match="class-specific"):
        transfer_state(other, {k: v for k, v in build("dualcoop", NAMES).state_dict().items()
                               if not k.startswith("vl.")}, NAMES)
    with pytest.raises(MlrkitError, match="another method"):
        transfer_state(build("baseline", NAMES), state, NAMES)


# --------------------------------------------------------------------------- CLI: dry run, sweep, analyze
def test_train_dry_run_prints_parameter_counts(tmp_path):
    r = run_cli("train", "--dataset", "fashion-mosaic", "--method", "dualcoop", "--vl-model", "tiny",
                "--set", "data.image_size=32", "--set", "data.limit_train=20", "--cache-views", "3",
                "--out", str(tmp_path / "never"), "--dry-run")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["trainable_params"] == 2 * 10 * 16 * 64
    assert out["total_params"] > out["trainable_params"] and out["checkpoint_values"] == out["trainable_params"]
    assert out["classes"] == 10 and out["cache_views"] == 3 and out["dense_grid"] == [4, 4]
    assert not (tmp_path / "never").exists()


def test_sweep_table_formatting_on_fake_results(tmp_path):
    from mlrkit.engine.sweep import SweepRun, column_name, format_table, parse_labels_list, run_name, write_tables

    labels = parse_labels_list("partial:0.1,0.5,0.9")
    assert labels == ["partial:0.1", "partial:0.5", "partial:0.9"]
    assert parse_labels_list("partial:0.1,single-positive") == ["partial:0.1", "single-positive"]
    assert [column_name(x) for x in labels] == ["10%", "50%", "90%"]
    assert run_name("dualcoop", "partial:0.1") == "dualcoop-partial0.1"
    runs = [SweepRun(m, lab, s, "x", v + 0.01 * s, 0.0, 0)
            for m, base in (("dualcoop", 0.70), ("positivecoop", 0.72))
            for lab, v in zip(labels, (base, base + 0.05, base + 0.1)) for s in (0, 1)]
    runs = [r for r in runs if not (r.method == "positivecoop" and r.labels == "partial:0.9")]
    table = write_tables(runs, tmp_path)
    text = format_table(table)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "10%", "50%", "90%", "Avg."]
    assert lines[1].split() == ["dualcoop", "70.5", "75.5", "80.5", "75.5"]
    assert lines[2].split() == ["positivecoop", "72.5", "77.5", "–", "–"]
    csv_rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert csv_rows[1] == "dualcoop,70.50,75.50,80.50,75.50"
    md = (tmp_path / "sweep.md").read_text()
    assert "| method | 10% | 50% | 90% | Avg. |" in md and "seeds: 0, 1" in md
    assert len((tmp_path / "sweep_runs.csv").read_text().splitlines()) == 1 + len(runs)


def test_sweep_cli_runs_and_reuses_finished_runs(tmp_path, cache_dir):
    args = ["sweep", "--dataset", "fashion-mosaic", "--methods", "baseline", "--labels", "partial:0.3,0.7",
            "--vl-model", "tiny", "--epochs", "1", "--set", "data.image_size=32", "--set", "data.limit_train=40",
            "--set", "data.options.limit_test=16", "--set", "loss.name=asl", "--set", "loss.unknown=ignore",
            "--set", f"features.cache_dir={cache_dir}", "--out", str(tmp_path / "sw"), "--quiet"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["method", "30%", "70%", "Avg."]
    assert (tmp_path / "sw" / "baseline-partial0.3" / "results.json").is_file()
    assert (tmp_path / "sw" / "sweep.csv").is_file() and (tmp_path / "sw" / "sweep.md").is_file()
    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout == r.stdout


def test_analyze_prompts_on_tiny(tmp_path, tiny):
    from mlrkit.analysis.prompts import prompt_similarity

    rep = prompt_similarity(tiny, NAMES)
    assert rep["classes"] == 10 and len(rep["per_class"]) == 10
    for key in ("pos_vs_neg", "pos_vs_pos"):
        s = rep[key]
        assert -1 <= s["min"] <= s["mean"] <= s["max"] <= 1 and s["std"] >= 0
    r = run_cli("analyze", "prompts", "--vl-model", "tiny", "--dataset", "voc2007", "--json", str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stderr
    assert "positive vs negative" in r.stdout and "positive vs positive" in r.stdout
    assert json.loads((tmp_path / "a.json").read_text())["classes"] == 20


def test_builtin_template_pairs_are_clips_80_with_a_negation_each():
    from mlrkit.analysis.prompts import load_template_pairs

    name, pairs = load_template_pairs()
    positives = [p for p, _ in pairs]
    assert name == "clip-imagenet-80" and len(pairs) == 80 and len(set(positives)) == 80
    assert {"a photo of a {}.", "a bad photo of a {}.", "itap of my {}.", "a {} in a video game."} <= set(positives)
    for p, n in pairs:
        assert p.count("{}") == n.count("{}") == 1 and p != n
        assert (" without " in n and " of " in p) or (n.startswith("no ") and " of " not in p)
    assert dict(pairs)["a photo of many {}."] == "a photo without any {}."


def test_analyze_prompts_templates_protocol_on_tiny(tmp_path, tiny, capsys):
    """Many templates per class: every value against a per-prompt re-computation on three classes x three pairs."""
    from mlrkit.analysis.prompts import template_similarity

    names, pairs = NAMES[:3], [("a photo of a {}.", "a photo without a {}."), ("art of the {}.", "art without the {}."),
                               ("a toy {}.", "no toy {}.")]
    rep = template_similarity(tiny, names, pairs=pairs, name="three")
    enc = {}

    def e(text):
        if text not in enc:
            enc[text] = tiny.encode_text([text], normalize=True)[0].float()
        return enc[text]

    pn = torch.tensor([[float(e(p.format(c)) @ e(q.format(c))) for p, q in pairs] for c in names])
    pp = torch.tensor([[float(e(pairs[i][0].format(c)) @ e(pairs[j][0].format(c))) for i in range(3)
                        for j in range(i + 1, 3)] for c in names])
    para = torch.tensor([[float(sum(e(pairs[i][0].format(c)) @ e(pairs[j][0].format(c)) for j in range(3) if j != i))
                          / 2 for i in range(3)] for c in names])
    assert rep["classes"] == 3 and rep["template_pairs"] == 3 and rep["prompts_per_class"] == 6
    assert rep["pos_vs_neg"]["mean"] == pytest.approx(float(pn.mean()), abs=1e-5)
    assert rep["pos_vs_neg"]["min"] == pytest.approx(float(pn.min()), abs=1e-5)
    assert rep["pos_vs_pos"]["mean"] == pytest.approx(float(pp.mean()), abs=1e-5)
    assert rep["neg_closer_than_paraphrase"] == pytest.approx(float((pn > para).double().mean()))
    assert [r["pos_vs_neg"] for r in rep["per_class"]] == pytest.approx(pn.mean(1).tolist(), abs=1e-5)
    pj = tmp_path / "pairs.json"
    pj.write_text(json.dumps({"name": "mine", "pairs": [{"positive": p, "negative": q} for p, q in pairs]}))
    from mlrkit.cli.main import main

    assert main(["analyze", "prompts", "--vl-model", "tiny", "--dataset", "fashion-mosaic", "--protocol", "templates",
                 "--json", str(tmp_path / "t.json")]) == 0
    stdout = capsys.readouterr().out
    assert "10 classes x 160 prompts" in stdout and "positive vs its negation (10 x 80 pairs)" in stdout
    out = json.loads((tmp_path / "t.json").read_text())
    assert (out["protocol"], out["template_pairs"], len(out["per_template"])) == ("templates", 80, 80)
    pj.write_text(json.dumps([{"positive": "a photo of a {}.", "negative": "a photo without a dog."}] * 2))
    assert main(["analyze", "prompts", "--vl-model", "tiny", "--dataset", "voc2007", "--protocol", "templates",
                 "--templates", str(pj)]) != 0
    err = capsys.readouterr().err
    assert "pair 0" in err and "pairs.json" in err


def test_rn101_trainable_counts_match_the_papers():
    """DualCoOp / PositiveCoOp / NegativeCoOp / Baseline with CLIP RN101 (random weights), default config."""
    import warnings

    from mlrkit.methods.prompting import COCO_CLASSES, builtin_class_names

    papers = {("coco", "dualcoop"): 1.3e6, ("coco", "positivecoop"): 730e3, ("coco", "negativecoop"): 730e3,
              ("coco", "baseline"): 80e3, ("voc", "dualcoop"): 0.3e6, ("voc", "positivecoop"): 170e3,
              ("voc", "negativecoop"): 170e3, ("voc", "baseline"): 20e3}
    classes = {"coco": list(COCO_CLASSES), "voc": builtin_class_names("voc2007")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for (ds, method), expected in papers.items():
            cfg = build_config(flags={"method": {"name": method}, "vl": {"model": "openclip:RN101"}})
            model = build_method(cfg).build_model(TaskInfo(classes[ds], "images"))
            n = count_parameters(model)["trainable_params"]
            assert abs(n - expected) <= 0.15 * expected, (ds, method, n, expected)
            assert isinstance(model, RegionPromptModel) == (method != "baseline")
    from mlrkit.vl import clear_frozen_cache

    clear_frozen_cache()  # do not keep RN101 in memory for the rest of the session
