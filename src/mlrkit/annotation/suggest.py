"""``mlrkit suggest-labels``: rank a trained run's unknown training entries and write the questions.

The pool is the run's **training split** (the rows the model was fitted on; the validation split
is held out for model selection and the test split is never touched). Its unknown entries are
scored by a strategy (:mod:`mlrkit.annotation.strategies`) from the run's best checkpoint, and
the top ``budget`` go to ``queries.csv``: ``image`` (the dataset's id: the manifest path as
written, ``train/<row>`` for features files), ``row`` (row of the official training set, as in
``observed_labels.npz``), ``class``, ``probability``, ``score`` and an empty ``answer`` column for
the annotator; the filled file is what ``mlrkit apply-answers`` reads.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlrkit.annotation.strategies import STRATEGIES, Pool, parse_budget, score_pool, select
from mlrkit.config import RunConfig
from mlrkit.data import Split
from mlrkit.engine.run_data import RunData
from mlrkit.errors import MlrkitError

log = logging.getLogger("mlrkit")


@dataclass
class RunPool:
    """A run's training split scored by its best checkpoint, ready for a strategy."""

    pool: Pool
    ids: list[str]  # image ids of the pool rows
    rows: np.ndarray  # their rows in the official training set
    data: RunData  # the run's data (ground truth for simulations)


def zero_shot_scores(cfg: RunConfig, split: Split, class_names: list[str], device: torch.device | str) -> np.ndarray:
    """Cosine similarity [N, C] between each image and each class prompt of the configured VL model."""
    from mlrkit.features import FeatureStore
    from mlrkit.methods.vl_methods import load_vl, templates_of
    from mlrkit.vl.features import vl_image_features

    if split.images is None:
        raise MlrkitError("strategy vl-disagreement needs images: the run's dataset has features only, so no VL "
                          "model can look at its images")
    model = load_vl(cfg, device)
    feats = np.asarray(vl_image_features(model, split.images, store=FeatureStore(), device=device, progress=False,
                                         desc=f"{cfg.vl.model} features", seed=cfg.seed), dtype=np.float64)
    with torch.no_grad():
        text = model.class_text_embeddings(class_names, templates_of(cfg)).cpu().numpy()
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    return feats @ text.astype(np.float64).T


def run_pool(run_dir: str | Path, *, with_vl: bool = False, vl_model: str | None = None, threshold: float = 0.5,
             beta: float = 0.99, device: str = "auto", candidates_mask: np.ndarray | None = None) -> RunPool:
    """Score the training split of ``run_dir`` with its best checkpoint.

    ``candidates_mask`` (bool [N_trainval, C], over the official training set) further restricts
    which unknown entries may be asked (a simulation passes the entries whose truth is known).
    """
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.run_data import prepare_run_data
    from mlrkit.labels import ObservedLabels

    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").is_file():
        raise MlrkitError(f"{run_dir} has no best.pt: train the run to the end first")
    run = load_run(run_dir, device=device)
    if vl_model:
        run.cfg.vl.model = vl_model
    data = prepare_run_data(run.cfg)
    saved = run_dir / "observed_labels.npz"
    if saved.is_file():
        sha = ObservedLabels.load(saved).sha256
        if sha != data.observed.sha256:
            raise MlrkitError(f"{saved} differs from the labels the run's config makes now ({sha[:12]}… vs "
                              f"{data.observed.sha256[:12]}…): was a labels file changed after training?")
    run.built.method.prepare_data(data, device=run.device, progress=False)
    logits = run.scores(data.train).astype(np.float64)
    probs = 1.0 / (1.0 + np.exp(-logits))
    observed = data.observed_train
    candidates = observed == 0
    if candidates_mask is not None:
        candidates &= np.asarray(candidates_mask, dtype=bool)[data.train.index]
    vl_scores = None
    if with_vl:
        vl_scores = zero_shot_scores(run.cfg, data.train, list(data.class_names), run.device)
    pool = Pool(probs=probs, observed=observed, candidates=candidates, class_names=list(data.class_names),
                vl_scores=vl_scores, threshold=threshold, beta=beta)
    return RunPool(pool, list(data.train.ids), np.asarray(data.train.index), data)


@dataclass
class Query:
    image: str
    row: int
    cls: str
    probability: float
    score: float


def suggest(rp: RunPool, strategy: str, budget: str | int | float, *, per_image: int | None = None,
            seed: int = 0) -> list[Query]:
    """The ``budget`` best questions of ``strategy`` over the pool's candidate entries, best first."""
    STRATEGIES.entry(strategy)
    pool = rp.pool
    n_budget = parse_budget(budget, pool.probs.size)
    available = int(pool.candidates.sum())
    if available == 0:
        raise MlrkitError("no unknown entry is left to ask about: every training label is known")
    if n_budget > available:
        log.warning("budget %d exceeds the %d unknown entries: all of them are suggested", n_budget, available)
    scores = score_pool(strategy, pool, seed)
    rows, cols = select(scores, n_budget, per_image=per_image, seed=seed)
    return [Query(rp.ids[r], int(rp.rows[r]), pool.class_names[c], float(pool.probs[r, c]), float(scores[r, c]))
            for r, c in zip(rows.tolist(), cols.tolist())]


QUERY_COLUMNS = ("image", "row", "class", "probability", "score", "answer")


def write_queries(path: str | Path, queries: list[Query], answers: list[str] | None = None) -> Path:
    """``queries.csv`` (``answer`` empty unless given, e.g. by a simulation)."""
    from mlrkit.utils import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(QUERY_COLUMNS)
            for k, q in enumerate(queries):
                w.writerow([q.image, q.row, q.cls, f"{q.probability:.6f}", f"{q.score:.6g}",
                            answers[k] if answers is not None else ""])
    return path
