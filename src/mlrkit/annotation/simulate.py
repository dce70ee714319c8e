"""``mlrkit simulate-annotation``: annotation rounds on data with complete ground truth.

Round 0 trains the configured run on the protocol's observed labels (e.g. single-positive).
Each following round scores the previous round's model over the training split, asks the
strategy's ``budget`` best unknown entries, answers them from the hidden ground truth (only
entries whose truth is known can be asked), merges the answers exactly as ``apply-answers``
does and trains again from scratch on the enlarged labels. Every round is an ordinary run
directory (``round-<k>/``) trained on ``labels-round-<k>.npz``; ``queries-round-<k>.csv`` holds the
questions with their answers. ``rounds.json`` lists one object per round (round, entries known,
test mAP, ...); ``rounds.csv``, ``rounds.md`` and ``rounds.png`` show the same.

Everything is seeded: the observation (``labels.seed``, default the run seed), the training, the
random strategy and the tie-breaking, so a simulation is reproducible bit for bit on one machine.
A finished round is reused when the simulation is run again into the same directory (its observed
labels must then hash to the same value); an interrupted one is resumed.

:func:`simulate_grid` runs several strategies and seeds, sharing round 0 between the strategies
of a seed, and summarises mean ± std of test mAP per round with the paired difference to ``random``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.annotation.answers import merge_answers
from mlrkit.annotation.strategies import STRATEGIES, parse_budget
from mlrkit.config import RunConfig
from mlrkit.errors import MlrkitError
from mlrkit.labels import NEGATIVE, POSITIVE, ObservedLabels
from mlrkit.utils import derive_seed, write_json

log = logging.getLogger("mlrkit")


@dataclass
class SimulationSettings:
    strategy: str
    rounds: int
    budget: str  # a count or a fraction of the training split's entries
    per_image: int | None = None
    threshold: float = 0.5
    beta: float = 0.99
    device: str = "auto"

    def check(self) -> None:
        entry = STRATEGIES.entry(self.strategy)
        if self.rounds < 1:
            raise MlrkitError(f"--rounds must be at least 1, got {self.rounds}")
        parse_budget(self.budget, 1_000_000)  # syntax only; the pool size is known later
        if entry.obj.needs_vl:
            log.info("strategy %s uses the VL model vl.model for zero-shot scores", self.strategy)


def _train_round(cfg: RunConfig, expected_sha: str, quiet: bool) -> dict[str, Any]:
    """Train ``cfg`` into ``cfg.out``, or reuse/resume what an earlier invocation left there."""
    from mlrkit.engine.trainer import train

    out = Path(cfg.out or "")
    res_path = out / "results.json"
    if res_path.is_file():
        res = json.loads(res_path.read_text())
        if res.get("observed_sha256") != expected_sha:
            found = str(res.get("observed_sha256"))[:12]
            raise MlrkitError(f"{out} holds a run on other labels (observed sha256 {found}… != {expected_sha[:12]}…): "
                              "use another --out")
        return res
    return train(cfg, resume=(out / "config.yaml").is_file(), quiet=quiet)  # set up or interrupted: continue


def _save_labels(obs: ObservedLabels, path: Path) -> Path:
    if path.is_file():
        old = ObservedLabels.load(path)
        if old.sha256 != obs.sha256:
            raise MlrkitError(f"{path} holds other labels than this simulation makes: use another --out")
        return path
    return obs.save(path)


def _round_row(k: int, obs_train: np.ndarray, res: dict[str, Any], asked: int, new_pos: int, run: str) -> dict:
    known = int((obs_train != 0).sum())
    return {
        "round": k,
        "entries_known": known,
        "known_fraction": known / obs_train.size,
        "known_positives": int((obs_train == POSITIVE).sum()),
        "known_negatives": int((obs_train == NEGATIVE).sum()),
        "asked": asked,
        "new_positives": new_pos,
        "test_map": float(res["test_map"]),
        "val_map": float(res["val_map"]),
        "run": run,
    }


def simulate(base: RunConfig, settings: SimulationSettings, out_dir: str | Path, *,
             round0: str | Path | None = None, quiet: bool = True,
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run ``settings.rounds`` annotation rounds after round 0; returns (and writes) ``rounds.json``'s list."""
    from mlrkit.annotation.suggest import run_pool, suggest, write_queries
    from mlrkit.data import split_train_val
    from mlrkit.engine.run_data import load_run_dataset, resolve_observed

    settings.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    ds, _ = load_run_dataset(base)
    truth = ds.trainval.targets
    truth_known = ds.trainval.known if ds.trainval.known is not None else np.ones(truth.shape, dtype=bool)
    train_rows = split_train_val(ds.trainval, base.data.val_fraction, base.data.split_seed)[0].index
    obs = resolve_observed(base, ds)
    base_protocol = obs.protocol
    n_pool_entries = len(train_rows) * truth.shape[1]
    budget = parse_budget(settings.budget, n_pool_entries)

    def cfg_for(k: int, labels_path: Path, run_dir: Path) -> RunConfig:
        cfg = copy.deepcopy(base)
        cfg.labels.protocol = str(labels_path)
        cfg.labels.seed = None
        cfg.out = str(run_dir)
        return cfg

    rows: list[dict[str, Any]] = []
    run_dir = Path(round0) if round0 else out / "round-0"  # round 0 may be shared by several strategies
    labels_path = _save_labels(obs, run_dir.parent / "labels-round-0.npz")
    res = _train_round(cfg_for(0, labels_path, run_dir), obs.sha256, quiet)
    rows.append(_round_row(0, obs.observed[train_rows], res, 0, 0, str(run_dir)))
    say(f"round 0: {rows[-1]['entries_known']} entries known, test mAP {100 * res['test_map']:.2f}")
    for k in range(1, settings.rounds + 1):
        rp = run_pool(run_dir, with_vl=STRATEGIES.get(settings.strategy).needs_vl, threshold=settings.threshold,
                      beta=settings.beta, device=settings.device, candidates_mask=truth_known)
        if not np.array_equal(rp.rows, train_rows) or not np.array_equal(rp.pool.observed, obs.observed[train_rows]):
            raise MlrkitError(f"{run_dir}: its training split or labels differ from the simulation's")
        queries = suggest(rp, settings.strategy, budget, per_image=settings.per_image,
                          seed=derive_seed(base.seed, k, 21))
        q_rows = np.array([q.row for q in queries], dtype=np.int64)
        q_cols = np.array([rp.pool.class_names.index(q.cls) for q in queries], dtype=np.int64)
        answers = np.where(truth[q_rows, q_cols] == 1, POSITIVE, NEGATIVE)
        new, report = merge_answers(obs.observed, q_rows, q_cols, answers)
        if report.already_known:
            raise MlrkitError(f"round {k}: {report.already_known} suggested entries were already known")
        write_queries(out / f"queries-round-{k}.csv", queries, ["yes" if a == POSITIVE else "no" for a in answers])
        obs = ObservedLabels(observed=new, protocol=f"{base_protocol}+{settings.strategy}:{k}", seed=obs.seed,
                             dataset=obs.dataset, targets_sha256=obs.targets_sha256,
                             class_names=list(obs.class_names))
        labels_path = _save_labels(obs, out / f"labels-round-{k}.npz")
        run_dir = out / f"round-{k}"
        res = _train_round(cfg_for(k, labels_path, run_dir), obs.sha256, quiet)
        rows.append(_round_row(k, obs.observed[train_rows], res, len(queries), report.new_positive, str(run_dir)))
        say(f"round {k}: asked {len(queries)} ({report.new_positive} yes), {rows[-1]['entries_known']} entries "
            f"known, test mAP {100 * res['test_map']:.2f}")
    meta = {"strategy": settings.strategy, "budget_per_round": budget, "budget_arg": str(settings.budget),
            "per_image": settings.per_image, "pool_entries": n_pool_entries, "dataset": ds.name,
            "labels": base.labels.protocol, "method": base.method.name, "loss": base.loss.name, "seed": base.seed}
    write_rounds(out, rows, meta)
    return rows


def write_rounds(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``rounds.json`` (the list), ``simulation.json`` (settings), ``rounds.csv``, ``rounds.md``, ``rounds.png``."""
    write_json(out / "rounds.json", rows)
    write_json(out / "simulation.json", meta)
    with open(out / "rounds.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    lines = [f"{meta['dataset']}, {meta['labels']} then strategy {meta['strategy']} ({meta['budget_per_round']} "
             f"answers per round), {meta['method']} + {meta['loss']}, seed {meta['seed']}", "",
             "| round | entries known | known % | new positives | val mAP | test mAP |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['entries_known']} | {100 * r['known_fraction']:.2f} | {r['new_positives']} "
                     f"| {100 * r['val_map']:.2f} | {100 * r['test_map']:.2f} |")
    (out / "rounds.md").write_text("\n".join(lines) + "\n")
    plot_curves({meta["strategy"]: ([r["known_fraction"] for r in rows], [r["test_map"] for r in rows], None)},
                out / "rounds.png", f"{meta['dataset']}: {meta['strategy']}")


def plot_curves(curves: dict[str, tuple[list[float], list[float], list[float] | None]], path: Path,
                title: str) -> Path:
    """Test mAP (%) against the known fraction of training entries, one line per strategy (± std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y, err) in curves.items():
        xs, ys = 100 * np.asarray(x), 100 * np.asarray(y)
        style = {"color": "black", "ls": "--"} if name == "random" else {}
        ax.plot(xs, ys, marker="o", label=name, **style)
        if err is not None:
            e = 100 * np.asarray(err)
            ax.fill_between(xs, ys - e, ys + e, alpha=0.15, color=ax.lines[-1].get_color())
    ax.set_xlabel("known training entries (%)")
    ax.set_ylabel("test mAP (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- several strategies and seeds


def simulate_grid(base: RunConfig, strategies: list[str], seeds: list[int], settings: SimulationSettings,
                  out_dir: str | Path, *, quiet: bool = True,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every strategy for every seed (round 0 shared per seed); writes ``comparison.{json,md,csv,png}``."""
    out = Path(out_dir)
    for s in strategies:
        STRATEGIES.entry(s)
    say = progress or (lambda msg: None)
    results: dict[str, dict[int, list[dict]]] = {s: {} for s in strategies}
    for seed in seeds:
        cfg = copy.deepcopy(base)
        cfg.seed = seed
        for strat in strategies:
            say(f"seed {seed}, strategy {strat}")
            st = copy.copy(settings)
            st.strategy = strat
            results[strat][seed] = simulate(cfg, st, out / f"seed{seed}" / strat,
                                            round0=out / f"seed{seed}" / "round-0", quiet=quiet, progress=progress)
    summary = summarize(results)
    first = results[strategies[0]][seeds[0]]
    summary["meta"] = {"dataset": base.data.name, "labels": base.labels.protocol, "method": base.method.name,
                       "loss": base.loss.name, "seeds": seeds, "rounds": settings.rounds,
                       "budget_per_round": first[1]["asked"] if len(first) > 1 else None,
                       "per_image": settings.per_image}
    write_json(out / "comparison.json", summary)
    (out / "comparison.md").write_text(format_comparison(summary) + "\n")
    _write_comparison_csv(out / "comparison.csv", summary)
    curves = {s: (summary["strategies"][s]["known_fraction"], summary["strategies"][s]["mean"],
                  summary["strategies"][s]["std"]) for s in strategies}
    plot_curves(curves, out / "comparison.png",
                f"{base.data.name}, {base.labels.protocol} + rounds ({len(seeds)} seeds, mean ± std)")
    return summary


def summarize(results: dict[str, dict[int, list[dict]]]) -> dict[str, Any]:
    """Per strategy and round: mean/std of test mAP over seeds, and the paired difference to ``random``."""
    out: dict[str, Any] = {"strategies": {}}
    ref = results.get("random")
    for strat, by_seed in results.items():
        seeds = sorted(by_seed)
        maps = np.array([[r["test_map"] for r in by_seed[s]] for s in seeds])  # [S, R+1]
        known = np.array([[r["known_fraction"] for r in by_seed[s]] for s in seeds])
        entry: dict[str, Any] = {"seeds": seeds, "mean": maps.mean(0).tolist(), "std": maps.std(0).tolist(),
                                 "known_fraction": known.mean(0).tolist(), "per_seed": maps.tolist(),
                                 "new_positives": np.array([[r["new_positives"] for r in by_seed[s]]
                                                            for s in seeds]).mean(0).tolist()}
        if ref is not None and strat != "random":
            base = np.array([[r["test_map"] for r in ref[s]] for s in seeds])
            diff = maps - base
            entry["vs_random_mean"] = diff.mean(0).tolist()
            entry["vs_random_std"] = diff.std(0).tolist()
            entry["wins_vs_random"] = (diff > 0).sum(0).tolist()
        out["strategies"][strat] = entry
    return out


def format_comparison(summary: dict[str, Any]) -> str:
    """Markdown: test mAP (%) mean ± std per round and strategy; then the paired difference to random."""
    strats = list(summary["strategies"])
    first = summary["strategies"][strats[0]]
    n_rounds = len(first["mean"])
    lines = ["| round | known % | " + " | ".join(strats) + " |", "|---:|---:|" + "---:|" * len(strats)]
    for k in range(n_rounds):
        known = 100 * first["known_fraction"][k]
        cells = [f"{100 * summary['strategies'][s]['mean'][k]:.2f} ± {100 * summary['strategies'][s]['std'][k]:.2f}"
                 for s in strats]
        lines.append(f"| {k} | {known:.2f} | " + " | ".join(cells) + " |")
    others = [s for s in strats if "vs_random_mean" in summary["strategies"][s]]
    if others:
        n_seeds = len(first["seeds"])
        lines += ["", f"Paired difference to random (same seed), test mAP points, mean ± std (wins of {n_seeds}):", "",
                  "| round | " + " | ".join(others) + " |", "|---:|" + "---:|" * len(others)]
        for k in range(1, n_rounds):
            cells = []
            for s in others:
                e = summary["strategies"][s]
                cells.append(f"{100 * e['vs_random_mean'][k]:+.2f} ± {100 * e['vs_random_std'][k]:.2f} "
                             f"({e['wins_vs_random'][k]}/{n_seeds})")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_comparison_csv(path: Path, summary: dict[str, Any]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["strategy", "round", "known_fraction", "test_map_mean", "test_map_std", "vs_random_mean",
                    "vs_random_std", "new_positives_mean"])
        for s, e in summary["strategies"].items():
            for k in range(len(e["mean"])):
                w.writerow([s, k, f"{e['known_fraction'][k]:.6f}", f"{e['mean'][k]:.6f}", f"{e['std'][k]:.6f}",
                            f"{e['vs_random_mean'][k]:.6f}" if "vs_random_mean" in e else "",
                            f"{e['vs_random_std'][k]:.6f}" if "vs_random_std" in e else "",
                            f"{e['new_positives'][k]:.1f}"])
