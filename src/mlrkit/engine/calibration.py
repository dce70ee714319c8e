"""Calibrated scores and decision thresholds, fitted on the validation split of a run.

* **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017),
  per entry of the multi-label output, with a shift (Platt scaling, Platt 1999) unless
  ``calibration.bias: false``: :math:`p_{ic} = \\sigma((z_{ic} - b) / T)` with

  .. math:: (T^*, b^*) = \\arg\\min_{T>0,\\,b} \\sum_{(i,c)\\ \\text{known}} -y_{ic}\\log p_{ic}
            - (1-y_{ic})\\log(1-p_{ic}).

  The objective is convex in :math:`(1/T, -b/T)`, solved by Newton's method on standardised
  logits. One increasing map for all classes keeps every ranking, so mAP is unchanged; only the
  probabilities move. The shift matters when every raw score saturates on one side (zero-shot
  CLIP: :math:`s\\cos(f, t) \\approx 20\\ldots35` for every class, so :math:`\\sigma \\approx 1`):
  a temperature alone can then only push all probabilities towards 0.5.
* **Per-class thresholds**: for each class the threshold on the calibrated probability that
  maximises that class's F1 on validation (known entries only); a class without a validation
  positive keeps the global threshold. ``policy: global`` uses one threshold for every class.
* **ECE** (expected calibration error, :func:`mlrkit.metrics.expected_calibration_error`) of the
  validation and test probabilities before and after scaling is reported.

The result is ``calibration.json`` in the run directory; ``evaluate`` and ``predict`` read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.errors import ConfigError, MlrkitError

FILE = "calibration.json"
#: a validation score above 0.99 or below 0.01 counts as saturated; above this share of the known
#: entries the run is warned that the raw scores saturate (temperature scaling then matters)
SATURATED_SHARE = 0.5
#: the smallest slope of the calibrated logit per standard deviation of the validation logits (T <= 100 sd)
SLOPE_MIN = 0.01


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _known(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if z.shape != y.shape:
        raise MlrkitError(f"scores {z.shape} and targets {y.shape} differ in shape")
    keep = np.ones(z.shape, bool) if mask is None else np.asarray(mask, bool)
    return z[keep], y[keep]


#: calibration's scores of a loss with its own link are kept in [-27.63, 27.63]: probabilities in [1e-12, 1 - 1e-12]
LINK_BOUND = float(np.log((1 - 1e-12) / 1e-12))


def link_logits(loss_name: str, loss_params: dict, logits) -> np.ndarray:
    """The scores calibration works on: the logits, or for a loss with its own inverse link (``spa``) the
    logit of that link's probability (``loss.link``, clipped to :data:`LINK_BOUND`), so that ``sigmoid``
    of them is the loss's probability. ``mlrkit export`` puts the same map into the exported model."""
    import torch

    import mlrkit.losses.zoo  # noqa: F401 - registers every loss
    from mlrkit.losses import LOSSES

    z = np.asarray(logits, np.float64)
    cls = LOSSES.get(loss_name)
    if not hasattr(cls, "link"):
        return z
    return np.clip(cls(**loss_params).link(torch.from_numpy(z)).numpy(), -LINK_BOUND, LINK_BOUND)


def fit_temperature(logits, targets, mask=None, iters: int = 100) -> float:
    """:math:`T^*` of the module docstring (1.0 when there is nothing to fit)."""
    z, y = _known(logits, targets, mask)
    if z.size == 0 or y.min() == y.max():
        return 1.0

    def nll(b: float) -> float:
        s = b * z
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    beta = 1.0
    for _ in range(iters):
        p = sigmoid(beta * z)
        g = float(np.mean((p - y) * z))
        h = float(np.mean(p * (1 - p) * z * z))
        if h <= 1e-12:
            break
        step = g / h
        new = beta - step
        while new <= 0:  # stay in the domain; the objective is convex, so halving converges
            step /= 2
            new = beta - step
        f0 = nll(beta)
        while nll(new) > f0 + 1e-15 and abs(step) > 1e-12:
            step /= 2
            new = beta - step
        if abs(new - beta) < 1e-10 * max(1.0, beta):
            beta = new
            break
        beta = new
    return float(1.0 / beta)


def fit_platt(logits, targets, mask=None, iters: int = 100) -> tuple[float, float]:
    """:math:`(T^*, b^*)` of the module docstring; ``(1, 0)`` when there is nothing to fit.

    The slope on standardised logits, :math:`\\mathrm{sd}(z)/T`, is kept at or above :data:`SLOPE_MIN`:
    on validation scores that do not rank the labels (or rank them backwards) the unconstrained optimum
    is :math:`T \\to \\infty` (or a negative T, which would reverse every ranking). :func:`uninformative`
    says when the bound was reached.
    """
    z, y = _known(logits, targets, mask)
    if z.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    mu, sd = float(z.mean()), float(z.std())
    if sd <= 0:
        return 1.0, 0.0
    u = (z - mu) / sd  # p = sigma(a u + c)

    def nll(a: float, c: float) -> float:
        s = a * u + c
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    rate = float(y.mean())
    a, c = 1.0, float(np.log(rate / (1 - rate)))
    for _ in range(iters):
        p = sigmoid(a * u + c)
        r, w = p - y, p * (1 - p)
        g = np.array([np.mean(r * u), np.mean(r)])
        h = np.array([[np.mean(w * u * u), np.mean(w * u)], [np.mean(w * u), np.mean(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        if a - step[0] < SLOPE_MIN:  # the bound binds: the slope to its floor, the shift by its own Newton step
            step = np.array([a - SLOPE_MIN, g[1] / h[1, 1]])
        f0, t = nll(a, c), 1.0
        while nll(a - t * step[0], c - t * step[1]) > f0 + 1e-15 and t > 1e-10:
            t /= 2
        if t <= 1e-10:
            break
        a, c = a - t * step[0], c - t * step[1]
        if np.abs(t * step).max() < 1e-10:
            break
    # sigma(a (z - mu) / sd + c) = sigma((z - b) / T)
    T = sd / a
    return float(T), float(mu - c * T)


def uninformative(T: float, logits, mask=None) -> bool:
    """Whether a fitted ``T`` sits at :func:`fit_platt`'s slope floor: the validation scores carry (almost) no
    ranking of the validation labels, and the calibrated probabilities are nearly constant."""
    z = np.asarray(logits, np.float64)
    z = z if mask is None else z[np.asarray(mask, bool)]
    return bool(z.size) and float(z.std()) / T <= SLOPE_MIN * (1 + 1e-6)


def best_f1_threshold(probs: np.ndarray, targets: np.ndarray) -> float | None:
    """The threshold on ``probs`` maximising F1 = 2TP / (2TP + FP + FN); None without a positive.

    The threshold is the midpoint between the lowest score predicted positive and the next lower
    score, so ties are never split and new scores equal to a chosen one are predicted positive.
    """
    p = np.asarray(probs, np.float64)
    t = np.asarray(targets, bool)
    n_pos = int(t.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-p, kind="stable")
    ps, ts = p[order], t[order]
    tp = np.cumsum(ts)
    k = np.arange(1, len(ps) + 1)
    last = np.r_[ps[1:] != ps[:-1], True]  # cut only after the last of a run of ties
    f1 = np.where(last, 2 * tp / (k + n_pos), -1.0)
    i = int(np.argmax(f1))
    lower = ps[i + 1] if i + 1 < len(ps) else 0.0
    return float((ps[i] + lower) / 2)


@dataclass
class Calibration:
    """What ``calibration.json`` holds (probabilities are ``sigmoid((logit - bias) / temperature)``)."""

    temperature: float = 1.0
    bias: float = 0.0
    thresholds: list[float] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    policy: str = "global"  # f1 | global
    global_threshold: float = 0.5
    fallback_classes: list[str] = field(default_factory=list)  # no validation positive: global threshold
    ece: dict[str, float] = field(default_factory=dict)  # val_before, val_after, test_before, test_after
    saturated_share: float = 0.0  # known validation entries with a raw probability > 0.99 or < 0.01
    uninformative: bool = False  # the temperature hit its bound: validation scores do not rank the labels
    n_bins: int = 15

    def probabilities(self, logits) -> np.ndarray:
        return sigmoid((np.asarray(logits, np.float64) - self.bias) / self.temperature)

    def threshold_array(self, override: float | None = None) -> np.ndarray:
        """Per-class thresholds (``override``: one global threshold instead)."""
        if override is not None:
            return np.full(len(self.class_names), float(override))
        return np.asarray(self.thresholds, np.float64)

    def decide(self, probs, override: float | None = None) -> np.ndarray:
        return np.asarray(probs) >= self.threshold_array(override)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = dict(zip(self.class_names, self.thresholds))
        return d

    def save(self, run_dir: str | Path) -> Path:
        from mlrkit.utils import write_json

        path = Path(run_dir) / FILE
        write_json(path, self.as_dict())
        return path

    @classmethod
    def load(cls, run_dir: str | Path, class_names: list[str]) -> Calibration:
        """The run's calibration; a run written before calibration existed gets T = 1 and 0.5 everywhere."""
        path = Path(run_dir) / FILE
        if not path.is_file():
            return cls(thresholds=[0.5] * len(class_names), class_names=list(class_names))
        d = json.loads(path.read_text())
        th = d.get("thresholds", {})
        missing = [c for c in class_names if c not in th]
        if missing:
            raise MlrkitError(f"{path}: no threshold for classes {missing[:5]}")
        d["thresholds"] = [float(th[c]) for c in class_names]
        d["class_names"] = list(class_names)
        known = {f.name for f in cls.__dataclass_fields__.values()}
        return cls(**{k: v for k, v in d.items() if k in known})


def calibrate(val_logits, val_targets, val_mask, class_names: list[str], *, policy: str = "f1",
              temperature: bool = True, bias: bool = True, global_threshold: float = 0.5,
              n_bins: int = 15) -> Calibration:
    """Fit the temperature and the thresholds on validation (module docstring)."""
    from mlrkit.metrics import expected_calibration_error

    if policy not in ("f1", "global"):
        raise ConfigError(f"calibration.thresholds must be 'f1' or 'global', got {policy!r}")
    if not 0.0 < global_threshold < 1.0:
        raise ConfigError(f"calibration.threshold must be in (0, 1), got {global_threshold}")
    z = np.asarray(val_logits, np.float64)
    y = np.asarray(val_targets)
    mask = None if val_mask is None else np.asarray(val_mask, bool)
    T, b = 1.0, 0.0
    if temperature and bias:
        T, b = fit_platt(z, y, mask)
    elif temperature:
        T = fit_temperature(z, y, mask)
    flat = temperature and bias and uninformative(T, z, mask)
    raw, cal = sigmoid(z), sigmoid((z - b) / T)
    known = np.ones(z.shape, bool) if mask is None else mask
    sat = float(((raw > 0.99) | (raw < 0.01))[known].mean()) if known.any() else 0.0
    thresholds, fallback = [], []
    for c, name in enumerate(class_names):
        th = None
        if policy == "f1":
            rows = known[:, c]
            th = best_f1_threshold(cal[rows, c], y[rows, c])
            if th is None:
                fallback.append(name)
        thresholds.append(global_threshold if th is None else th)
    ece = {"val_before": expected_calibration_error(raw, y, mask, n_bins),
           "val_after": expected_calibration_error(cal, y, mask, n_bins)}
    return Calibration(temperature=T, bias=b, thresholds=thresholds, class_names=list(class_names), policy=policy,
                       global_threshold=global_threshold, fallback_classes=fallback, ece=ece,
                       saturated_share=sat, n_bins=n_bins, uninformative=flat)
