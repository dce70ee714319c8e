"""Query strategies: which unknown (image, class) entries an annotator should answer next.

A strategy maps a :class:`Pool` (the trained model's probabilities over the candidate images,
their observed labels and the entries that may be asked) to a score per entry; higher means
"ask first". :func:`select` turns scores into a budget of distinct unknown entries, optionally
batched per image. Every strategy is deterministic given the pool and a seeded generator.

Notation: ``p_ic`` the model's probability that class ``c`` is present in image ``i``;
``n_c`` (``n⁺_c``) the number of known labels (known positives) of class ``c`` in the pool;
``E_β(n) = (1 − βⁿ) / (1 − β)`` the *effective number* of ``n`` samples (Cui et al., "Class-Balanced
Loss Based on Effective Number of Samples", CVPR 2019): the marginal value of one more label of a
class shrinks as the class accumulates labels, and saturates at ``1 / (1 − β)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlrkit.errors import MlrkitError
from mlrkit.registry import Registry

EPS = 1e-6


@dataclass
class Pool:
    """What a strategy sees: rows are the candidate images (the run's training split).

    ``probs`` float [N, C] model probabilities; ``observed`` int8 [N, C] (+1/0/−1);
    ``candidates`` bool [N, C], the entries that may be asked (unknown ones; in a simulation
    also restricted to entries whose hidden truth exists); ``vl_scores`` float [N, C], the
    zero-shot VL scores (cosine similarities or logits) when a VL model is configured.
    """

    probs: np.ndarray
    observed: np.ndarray
    candidates: np.ndarray
    class_names: list[str]
    vl_scores: np.ndarray | None = None
    threshold: float = 0.5
    beta: float = 0.99

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float64)
        self.observed = np.asarray(self.observed, dtype=np.int8)
        self.candidates = np.asarray(self.candidates, dtype=bool)
        shape = self.probs.shape
        if self.probs.ndim != 2 or self.observed.shape != shape or self.candidates.shape != shape:
            raise MlrkitError(f"pool arrays disagree: probs {shape}, observed {self.observed.shape}, "
                              f"candidates {self.candidates.shape}")
        if len(self.class_names) != shape[1]:
            raise MlrkitError(f"pool has {shape[1]} classes but {len(self.class_names)} class names")
        if (self.candidates & (self.observed != 0)).any():
            raise MlrkitError("a candidate entry is already known (candidates must be unknown entries)")
        if not np.isfinite(self.probs).all() or self.probs.min() < 0 or self.probs.max() > 1:
            raise MlrkitError("model probabilities must be finite and in [0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise MlrkitError(f"decision threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.beta < 1.0:
            raise MlrkitError(f"beta must be in (0, 1), got {self.beta}")
        if self.vl_scores is not None:
            self.vl_scores = np.asarray(self.vl_scores, dtype=np.float64)
            if self.vl_scores.shape != shape:
                raise MlrkitError(f"VL scores {self.vl_scores.shape} != probabilities {shape}")


StrategyFn = Callable[[Pool, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    fn: StrategyFn
    reference: str
    needs_vl: bool = False


STRATEGIES: Registry[Strategy] = Registry("strategy")


def strategy(name: str, description: str, reference: str, needs_vl: bool = False):
    def deco(fn: StrategyFn) -> StrategyFn:
        STRATEGIES.add(name, Strategy(fn, reference, needs_vl), description)
        return fn

    return deco


def effective_number(n: np.ndarray, beta: float) -> np.ndarray:
    """``E_β(n) = (1 − βⁿ) / (1 − β)`` (Cui et al. 2019); ``E_β(0) = 0``, ``E_β(1) = 1``."""
    return (1.0 - np.power(beta, np.asarray(n, dtype=np.float64))) / (1.0 - beta)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """``H(p) = −p log₂ p − (1 − p) log₂(1 − p)`` in bits (0 at p ∈ {0, 1})."""
    q = np.clip(p, EPS, 1 - EPS)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


@strategy("random", "the control: unknown entries in uniformly random order (seeded)",
          "passive sampling, the baseline of every active-learning comparison (Settles, 'Active Learning "
          "Literature Survey', Univ. Wisconsin TR 1648, 2009)")
def _random(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    return rng.random(pool.probs.shape)


@strategy("uncertainty", "probability nearest the decision threshold t: 1 - |p - t| / max(t, 1 - t)",
          "uncertainty sampling (Lewis & Gale, 'A Sequential Algorithm for Training Text Classifiers', "
          "SIGIR 1994), per (image, class) entry")
def _uncertainty(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    t = pool.threshold
    return 1.0 - np.abs(pool.probs - t) / max(t, 1.0 - t)


def class_counts(pool: Pool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: known labels ``n_c``, known positives ``n⁺_c`` and estimated prevalence ``π̂_c``.

    ``π̂_c`` is the mean model probability over the pool's rows, clipped to ``[1/N, 1 − 1/N]``.
    """
    obs = pool.observed
    n_known = (obs != 0).sum(axis=0)
    n_pos = (obs == 1).sum(axis=0)
    n = max(len(obs), 1)
    prevalence = np.clip(pool.probs.mean(axis=0), 1.0 / n, 1.0 - 1.0 / n) if len(obs) else np.full(obs.shape[1], 0.5)
    return n_known, n_pos, prevalence


@strategy("expected-gain",
          "entropy of the answer x class rarity / effective number of the class's known labels",
          "s_ic = H(p_ic) * (-log pi_c) / E_beta(1 + n_c): expected information of the answer (Settles 2009, "
          "sec. 3) weighted towards rare classes (self-information of a positive, -log of the estimated "
          "prevalence pi_c) and towards classes with few known labels (effective number, Cui et al. CVPR 2019)")
def _expected_gain(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    n_known, _, prevalence = class_counts(pool)
    weight = -np.log(prevalence) / effective_number(1 + n_known, pool.beta)
    return binary_entropy(pool.probs) * weight[None, :]


@strategy("positive-gain",
          "expected new positives, each worth more for classes with few known positives: p / E_beta(1 + n+_c)",
          "s_ic = p_ic / E_beta(1 + n+_c): the expected number of new known positives of class c, valued "
          "by the diminishing marginal value of a class's positives (effective number, Cui et al. CVPR "
          "2019); aimed at positive-only labels, where missing positives are what hurts (Cole et al. CVPR 2021)")
def _positive_gain(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    _, n_pos, _ = class_counts(pool)
    return pool.probs / effective_number(1 + n_pos, pool.beta)[None, :]


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """Per column, the rank of each row scaled to [0, 1] (ties get their mean rank)."""
    n = len(scores)
    if n <= 1:
        return np.zeros_like(scores, dtype=np.float64)
    out = np.empty(scores.shape, dtype=np.float64)
    for c in range(scores.shape[1]):
        col = scores[:, c]
        order = np.argsort(col, kind="stable")
        ranks = np.empty(n, dtype=np.float64)
        ranks[order] = np.arange(n, dtype=np.float64)
        uniq, inverse = np.unique(col, return_inverse=True)  # mean rank of tied values
        if len(uniq) < n:
            sums = np.bincount(inverse, weights=ranks)
            ranks = (sums / np.bincount(inverse))[inverse]
        out[:, c] = ranks / (n - 1)
    return out


@strategy("vl-disagreement",
          "where the trained model and the VL model's zero-shot scores disagree most (per-class rank gap)",
          "query-by-committee (Seung, Opper & Sompolinsky, 'Query by Committee', COLT 1992) with a committee "
          "of two: the trained model and the zero-shot VL model. Their scales differ (a sigmoid vs CLIP "
          "cosines), so each votes with its per-class percentile rank r over the pool: s_ic = |r_model - r_vl|",
          needs_vl=True)
def _vl_disagreement(pool: Pool, rng: np.random.Generator) -> np.ndarray:
    if pool.vl_scores is None:
        raise MlrkitError("strategy vl-disagreement needs zero-shot scores from a VL model")
    return np.abs(percentile_ranks(pool.probs) - percentile_ranks(pool.vl_scores))


def score_pool(name: str, pool: Pool, seed: int) -> np.ndarray:
    """The strategy's scores [N, C]; entries that are not candidates get −inf."""
    strat = STRATEGIES.get(name)
    if strat.needs_vl and pool.vl_scores is None:
        raise MlrkitError(f"strategy {name!r} needs a VL model's zero-shot scores: the run's dataset must have "
                          "images and vl.model must name a VL model (--vl-model)")
    rng = np.random.default_rng(seed)
    scores = np.asarray(strat.fn(pool, rng), dtype=np.float64)
    if scores.shape != pool.probs.shape or not np.isfinite(scores).all():
        raise MlrkitError(f"strategy {name!r} returned bad scores (shape {scores.shape})")
    return np.where(pool.candidates, scores, -np.inf)


def parse_budget(value: str | float | int, pool_entries: int) -> int:
    """A budget as a count (``500``) or as a fraction of all pool entries (``0.02``, written with a dot)."""
    text = str(value).strip()
    try:
        num = float(text)
    except ValueError:
        raise MlrkitError(f"budget must be a count (500) or a fraction of all entries (0.02), got {value!r}") from None
    if any(ch in text for ch in ".eE"):
        if not 0.0 < num < 1.0:
            raise MlrkitError(f"a fractional budget must be in (0, 1), got {value!r}")
        return max(1, int(round(num * pool_entries)))
    if num < 1:
        raise MlrkitError(f"budget must be a positive count or a fraction in (0, 1), got {value!r}")
    return int(num)


def select(scores: np.ndarray, budget: int, *, per_image: int | None = None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The top ``budget`` entries by score, as (rows, cols), best first; ``−inf`` entries are never chosen.

    Ties are broken by a seeded random key, so the result is deterministic. With ``per_image=k``
    the budget is spent on whole images: each image is valued by the sum of its ``k`` best
    candidate scores and gets those ``k`` questions (fewer if it has fewer candidates, and the last
    image may get fewer to fit the budget), since one annotator look at an image answers several classes.
    """
    if budget < 1:
        raise MlrkitError(f"budget must be at least 1, got {budget}")
    tie = np.random.default_rng(seed).random(scores.shape)
    valid = np.isfinite(scores)
    if per_image is None:
        flat = np.flatnonzero(valid.ravel())
        order = np.lexsort((tie.ravel()[flat], -scores.ravel()[flat]))[:budget]
        rows, cols = np.unravel_index(flat[order], scores.shape)
        return rows.astype(np.int64), cols.astype(np.int64)
    if per_image < 1:
        raise MlrkitError(f"--per-image must be at least 1, got {per_image}")
    k = min(per_image, scores.shape[1])
    safe = np.where(valid, scores, -np.inf)
    col_order = np.lexsort((tie, -safe), axis=1)[:, :k]  # per row: best candidate classes first
    top = np.take_along_axis(safe, col_order, axis=1)
    top_valid = np.isfinite(top)
    n_valid = top_valid.sum(axis=1)
    value = np.where(top_valid, top, 0.0).sum(axis=1)
    value = np.where(n_valid > 0, value, -np.inf)
    row_tie = np.random.default_rng(seed + 1).random(len(scores))
    row_order = np.lexsort((row_tie, -value))
    rows_out: list[int] = []
    cols_out: list[int] = []
    for r in row_order:
        if len(rows_out) >= budget or n_valid[r] == 0:
            break
        for j in range(k):
            if not top_valid[r, j] or len(rows_out) >= budget:
                break
            rows_out.append(int(r))
            cols_out.append(int(col_order[r, j]))
    return np.asarray(rows_out, dtype=np.int64), np.asarray(cols_out, dtype=np.int64)


def strategy_help() -> str:
    """One line per strategy (for ``--help`` and ``mlrkit list strategies``)."""
    return "; ".join(f"{e.name}: {e.description}" for e in STRATEGIES.list())
