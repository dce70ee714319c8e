"""Registry-driven contract tests: every registered loss and method, not a hand-written list.

A new ``@LOSSES.register`` / ``@METHODS.register`` entry is picked up here automatically (as timm's
tests parametrise over ``list_models()``); the only exclusions are the explicit, commented ones below.

* losses (fast): forward/backward on real labels, the state round trip through ``state_dict``, one
  optimiser step, the declared hooks (``run_context``, ``needs_epoch_scores``);
* methods (``slow``, one short real run each): a one-epoch Trainer run on real data, then the
  checkpoint round trip: the reloaded best checkpoint scores the test split to the same mAP.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

import mlrkit.losses.zoo  # noqa: F401 - registers every loss
from mlrkit import losses
from mlrkit.methods import METHODS
from mlrkit.methods.base import register_all

register_all()

# Explicit exclusions (name -> why). Empty: every registered loss and method is covered.
LOSS_EXCLUSIONS: dict[str, str] = {}
METHOD_EXCLUSIONS: dict[str, str] = {}

# What a method needs beyond what it declares (input_kind, uses_model, uses_vl), each with its reason:
METHOD_LOSS = {
    "vlpl": "vlpl",  # VLPL trains with its own loss (it sets the loss's pseudo-labels)
    "scpnet": "splc",  # SCPNet's L_cls is SPLC (Ding et al.; scpnet.require_splc)
}
METHOD_EPOCHS = {"zeroshot": 0}  # zero-shot trains nothing: an evaluation-only run


def _real_labels(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features and labels of the built-in ``emotions`` set (real music clips): x [n, 72], targets, observed."""
    from mlrkit.data import load_dataset
    from mlrkit.labels import make_observed

    ds = load_dataset("emotions")
    x = torch.from_numpy(np.asarray(ds.trainval.features[:n], np.float32))
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    t = ds.trainval.targets[:n]
    obs = make_observed(t, "partial:0.5", seed)
    return x, torch.from_numpy(t.astype(np.int64)), torch.from_numpy(obs)


@pytest.mark.parametrize("name", [n for n in losses.LOSSES.names() if n not in LOSS_EXCLUSIONS])
def test_every_loss_meets_the_contract(name):
    check_loss_contract(name)


def check_loss_contract(name: str) -> None:
    """The loss contract for registered loss ``name`` (also used on docs/extending.md's example)."""
    torch.manual_seed(0)
    x, _, observed = _real_labels()
    n, c = observed.shape
    index = torch.arange(n)
    loss = losses.build(name)
    loss.prepare(observed)
    head = torch.nn.Linear(x.shape[1], c)

    # forward/backward: a finite scalar with finite gradients for the logits
    logits = head(x)
    value = loss(logits, observed, index=index, epoch=0)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()

    # one optimiser step over the model and the loss's own parameters (ROLE's label table)
    params = list(head.parameters()) + list(loss.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    opt.zero_grad()
    loss(head(x), observed, index=index, epoch=1).backward()
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))

    # declared hooks: scores of the whole split for pseudo-labelling losses
    if loss.needs_epoch_scores:
        loss.update_pseudo_labels(head(x).detach(), 1)
    loss.on_epoch_end(1)

    # state round trip: a fresh loss given the state computes the same value
    again = losses.build(name)
    again.prepare(observed)
    again.load_state_dict(loss.state_dict())
    probe = head(x).detach()
    torch.testing.assert_close(again(probe, observed, index=index, epoch=2),
                               loss(probe, observed, index=index, epoch=2))

    # run context: a constructor argument the engine fills must be declared, and vice versa
    accepted = set(inspect.signature(type(loss).__init__).parameters)
    for key in ("expected_num_pos", "num_epochs"):
        assert (key in accepted) == (key in type(loss).run_context), (name, key)
    assert set(type(loss).run_context) <= accepted


def test_every_loss_and_method_is_covered():
    """The exclusions name registered entries only (a stale exclusion is an error)."""
    assert set(LOSS_EXCLUSIONS) <= set(losses.LOSSES.names())
    assert set(METHOD_EXCLUSIONS) <= set(METHODS.names())
    assert set(METHOD_LOSS) | set(METHOD_EPOCHS) <= set(METHODS.names())


def method_flags(name: str, out: str) -> dict:
    """A minimal real run for method ``name``, from what the method declares."""
    cls = METHODS.get(name)
    flags: dict = {"seed": 0, "out": out, "method": {"name": name}, "loss": {"name": METHOD_LOSS.get(name, "an")},
                   "labels": {"protocol": "single-positive"},
                   "train": {"epochs": METHOD_EPOCHS.get(name, 1), "batch_size": 8, "lr": 1e-3, "progress": False}}
    if cls.input_kind == "features" and not cls.uses_vl:
        flags["data"] = {"name": "emotions"}  # real features
    else:  # real photos: fashion-mosaic, small
        flags["data"] = {"name": "fashion-mosaic", "image_size": 32, "limit_train": 24,
                         "options": {"limit_test": 16}}
        if cls.uses_vl:
            flags["vl"] = {"model": "tiny"}
        if cls.uses_model:  # vlpl uses both: a VL model for pseudo-labels and an image model to train
            flags["model"] = {"name": "smallcnn", "width": 4, "depth": 2}
    return flags


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in METHODS.names() if n not in METHOD_EXCLUSIONS])
def test_every_method_trains_and_reloads(name, tmp_path):
    from mlrkit.config import build_config
    from mlrkit.engine.inference import evaluate_run
    from mlrkit.engine.trainer import train

    cfg = build_config(flags=method_flags(name, str(tmp_path / "run")))
    assert cfg.method.name == name
    res = train(cfg, quiet=True)
    assert 0.0 <= res["test_map"] <= 1.0
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if cfg.train.epochs else []
    assert len(rows) == cfg.train.epochs and all(np.isfinite(r["train_loss"]) for r in rows)
    again = evaluate_run(tmp_path / "run", splits=("test",))  # best.pt reloaded from config.yaml alone
    assert again["test"]["map"] == pytest.approx(res["test_map"], abs=1e-6)


@pytest.mark.slow
def test_a_linear_probe_on_images_reloads(tmp_path):
    """A features method on an image dataset (frozen-backbone features): evaluate attaches them again."""
    from mlrkit.config import build_config
    from mlrkit.engine.inference import evaluate_run
    from mlrkit.engine.trainer import train

    flags = method_flags("linear", str(tmp_path / "run"))
    flags["data"] = {"name": "fashion-mosaic", "image_size": 32, "limit_train": 24, "options": {"limit_test": 16}}
    flags["model"] = {"name": "smallcnn", "width": 4, "depth": 2}
    res = train(build_config(flags=flags), quiet=True)
    assert evaluate_run(tmp_path / "run", splits=("test",))["test"]["map"] == pytest.approx(res["test_map"], abs=1e-6)
