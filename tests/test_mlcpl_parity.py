"""Numerical parity with mlcpl 0.1.7, the closest peer library (docs/comparison.md).

Two sources for mlcpl's numbers:

* ``tests/fixtures/mlcpl_parity.npz``: values and gradients computed with mlcpl 0.1.7 in a scratch
  virtual environment and committed (regenerate: ``/tmp/mlcpl-venv/bin/python
  tests/fixtures/make_mlcpl_parity.py``, see that file). These tests always run.
* mlcpl itself, when it is importable (it is in the ``[test]`` extra, so CI has it): the same cases
  are recomputed live, so a change in either library shows up.

Normalisation is aligned as the case says: mlcpl's ``reduction='mean'`` divides by the entries it does
not ignore (``known``: the known entries; ``selected``: known + unknown entries CSL keeps; ``all``: every
entry), mlrkit's losses by B x C. ``spa``: mlcpl evaluates the loss at the inverse link used as a logit.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit.engine.mixing import logic_mix_labels
from mlrkit.losses import build

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import mlcpl_cases as mc  # noqa: E402

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "mlcpl_parity.npz")
HAS_MLCPL = importlib.util.find_spec("mlcpl") is not None


def mlrkit_value_and_grad(name: str, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """mlrkit's loss for a case, rescaled to mlcpl's normalisation; and its gradient (same scale)."""
    _, _, loss_name, hp, norm = mc.CASES[name]
    loss = build(loss_name, **mc.resolve(hp))
    yt = torch.tensor(y)
    loss.prepare(yt)
    xt = torch.tensor(x, requires_grad=True)
    inp = xt
    if norm == "known-at-eta":
        inp = loss.probabilities(xt)
    value = loss(inp, yt, index=torch.arange(len(x)))
    if norm in ("known", "known-at-eta"):
        denom = float((y != 0).sum())
    elif norm == "selected":
        denom = float(loss.ignore_weights(inp.detach(), yt).sum())
    else:
        denom = float(y.size)
    scaled = value * (y.size / denom)
    scaled.backward()
    return float(scaled.detach()), xt.grad.numpy().copy()


@pytest.mark.parametrize("name", sorted(mc.CASES))
def test_values_and_gradients_match_mlcpl_fixture(name):
    assert np.array_equal(FIXTURE["X"], mc.X) and np.array_equal(FIXTURE["Y"], mc.Y), "fixture is stale"
    v, g = mlrkit_value_and_grad(name, mc.X, mc.Y)
    assert v == pytest.approx(float(FIXTURE[f"{name}/value"]), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(g, FIXTURE[f"{name}/grad"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(mc.CASES))
def test_finite_where_mlcpl_is_not_at_saturated_logits(name):
    """At |logit| >= 17 mlcpl's log(sigmoid) underflows (NaN/inf); mlrkit stays finite, and agrees where mlcpl is."""
    v, g = mlrkit_value_and_grad(name, mc.X_EXTREME, mc.Y_EXTREME)
    assert np.isfinite(v) and np.isfinite(g).all()
    ref_v, ref_g = float(FIXTURE[f"{name}/extreme_value"]), FIXTURE[f"{name}/extreme_grad"]
    if np.isfinite(ref_v):
        assert v == pytest.approx(ref_v, rel=1e-4, abs=1e-6)
    ok = np.isfinite(ref_g)
    np.testing.assert_allclose(g[ok], ref_g[ok], rtol=1e-3, atol=1e-6)


def test_mlcpl_is_not_finite_on_these_cases():
    """The fixture records the defects the comparison table reports (BCE/focal/CSL NaN or inf)."""
    bad = {n for n in mc.CASES if not (np.isfinite(FIXTURE[f"{n}/extreme_value"])
                                       and np.isfinite(FIXTURE[f"{n}/extreme_grad"]).all())}
    assert {"bce_ignore", "bce_negative", "focal_ignore", "focal_negative", "csl"} <= bad


def test_logic_mix_labels_match_mlcpl_fixture():
    parts = FIXTURE["logic_mix/parts"]
    assert np.array_equal(parts, mc.LOGIC_MIX_PARTS)
    ours = logic_mix_labels(torch.tensor(parts)).numpy()
    assert np.array_equal(ours, FIXTURE["logic_mix/labels"])


@pytest.mark.skipif(not HAS_MLCPL, reason="mlcpl not installed (pip install -e '.[test]' installs it)")
@pytest.mark.parametrize("name", sorted(mc.CASES))
def test_values_and_gradients_match_live_mlcpl(name):
    for x, y in ((mc.X, mc.Y), (mc.X * 0.5 + 0.3, np.roll(mc.Y, 1, axis=1))):
        ref_v, ref_g = mc.mlcpl_value_and_grad(name, x.astype(np.float32), y)
        v, g = mlrkit_value_and_grad(name, x.astype(np.float32), y)
        assert v == pytest.approx(ref_v, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not HAS_MLCPL, reason="mlcpl not installed (pip install -e '.[test]' installs it)")
def test_logic_mix_matches_live_mlcpl():
    rng = np.random.default_rng(5)
    for _ in range(30):
        parts = rng.choice([-1, 0, 1], size=(int(rng.integers(2, 5)), 9)).astype(np.int8)
        assert np.array_equal(logic_mix_labels(torch.tensor(parts[None]))[0].numpy(), mc.mlcpl_logic_mix(parts))
