"""``mlrkit suggest-labels``, ``apply-answers`` and ``simulate-annotation`` (thin: the work is in
:mod:`mlrkit.annotation`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlrkit.cli.common import add_command


def _strategy_lines() -> str:
    from mlrkit.annotation.strategies import STRATEGIES

    return "\n".join(f"  {e.name}: {e.description}" for e in STRATEGIES.list())


def register_annotation(sub) -> None:
    """Add the three annotation commands to the ``mlrkit`` sub-parsers."""
    strategies = _strategy_lines()
    p = add_command(sub, "suggest-labels",
                    "rank a trained run's unknown training labels by how useful an answer would be; write the top "
                    "N questions (image, class, probability, score, empty answer) as CSV",
                    "mlrkit suggest-labels runs/yeast-an --budget 500 --strategy uncertainty --out queries.csv\n  "
                    "mlrkit suggest-labels runs/mine --budget 0.02 --strategy positive-gain --per-image 3 "
                    f"--out queries.csv\nstrategies:\n{strategies}", cmd_suggest_labels)
    p.add_argument("run", help="run directory (trained with mlrkit train)")
    p.add_argument("--budget", required=True, help="number of questions, or a fraction of the training split's "
                   "entries (0.02)")
    p.add_argument("--strategy", default="uncertainty", help="query strategy (mlrkit list strategies)")
    p.add_argument("--per-image", type=int, default=None, metavar="K",
                   help="ask about K classes of each chosen image (cheaper for annotators)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold of 'uncertainty'")
    p.add_argument("--beta", type=float, default=0.99, help="beta of the effective number (expected-gain, "
                   "positive-gain)")
    p.add_argument("--vl-model", help="VL model of vl-disagreement (default: the run's vl.model)")
    p.add_argument("--seed", type=int, default=0, help="seed of 'random' and of tie-breaking")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="CSV to write (columns image,row,class,probability,score,answer)")

    p = add_command(sub, "apply-answers",
                    "merge yes/no answers into three-state labels: a manifest (positives/negatives columns), a "
                    "features .npz (observed_train) or an observed-label .npz; conflicts are errors",
                    "mlrkit apply-answers photos.csv queries.csv --out photos-round1.csv\n  "
                    "mlrkit apply-answers runs/yeast-an/observed_labels.npz queries.csv --out yeast-r1.npz  "
                    "# then: mlrkit train ... --labels yeast-r1.npz", cmd_apply_answers)
    p.add_argument("labels", help="manifest (.csv/.jsonl), features file (.npz) or observed labels (.npz)")
    p.add_argument("answers", help="CSV with image (or row), class, answer (yes/no; empty = not answered)")
    p.add_argument("--out", required=True, help="where to write the merged labels (a new file)")
    p.add_argument("--classes", help="manifests: class list file (one name per line), as the manifest's classes=")
    p.add_argument("--uncertain", default="unknown", choices=["unknown", "positive", "negative"],
                   help="dense manifests: what a -1 cell means, as the manifest's uncertain=")

    p = add_command(sub, "simulate-annotation",
                    "annotation rounds answered from the hidden ground truth: train, ask B entries chosen by a "
                    "strategy, retrain; rounds.json (round, entries known, test_map), table and plot",
                    "mlrkit simulate-annotation --dataset yeast --labels single-positive --method linear --loss an "
                    "--budget-per-round 0.02 --rounds 5 --strategy uncertainty --seed 0 --out runs/sim\n  "
                    "mlrkit simulate-annotation --dataset scene --labels single-positive --method linear --loss an "
                    "--budget-per-round 0.02 --rounds 5 --strategy random,uncertainty,expected-gain,positive-gain "
                    f"--seed 0,1,2 --out runs/sim-scene   # comparison.md\nstrategies:\n{strategies}",
                    cmd_simulate_annotation)
    p.add_argument("--config", help="recipe YAML of the run trained each round")
    p.add_argument("--dataset", help="dataset with complete (or known-masked) ground truth")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--labels", help="starting observation protocol (e.g. single-positive)")
    p.add_argument("--method", help="method (mlrkit list methods)")
    p.add_argument("--loss", help="loss (mlrkit list losses)")
    p.add_argument("--epochs", type=int, help="training epochs per round (train.epochs)")
    p.add_argument("--batch-size", type=int, help="batch size (train.batch_size)")
    p.add_argument("--lr", type=float, help="learning rate (train.lr)")
    p.add_argument("--vl-model", help="VL model (vl.model; used by VL methods and vl-disagreement)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--budget-per-round", required=True,
                   help="answers per round: a count, or a fraction of the training split's entries (0.02)")
    p.add_argument("--rounds", type=int, default=5, help="annotation rounds after round 0")
    p.add_argument("--strategy", default="uncertainty",
                   help="strategy, or several comma-separated (then a comparison); one of: "
                   + ", ".join(_strategy_names()))
    p.add_argument("--seed", default="0", help="run seed (also the observation seed), or several comma-separated")
    p.add_argument("--per-image", type=int, default=None, metavar="K", help="ask K classes per chosen image")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold of 'uncertainty'")
    p.add_argument("--beta", type=float, default=0.99, help="beta of the effective number")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no per-round lines")


def _strategy_names() -> list[str]:
    from mlrkit.annotation.strategies import STRATEGIES

    return STRATEGIES.names()


def _csv_list(text: str, what: str) -> list[str]:
    from mlrkit.errors import MlrkitError

    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise MlrkitError(f"{what}: nothing given")
    if len(set(items)) != len(items):
        raise MlrkitError(f"{what}: {text!r} repeats an entry")
    return items


def cmd_suggest_labels(args: argparse.Namespace) -> int:
    from mlrkit.annotation.strategies import STRATEGIES
    from mlrkit.annotation.suggest import run_pool, suggest, write_queries

    entry = STRATEGIES.entry(args.strategy)
    rp = run_pool(args.run, with_vl=entry.obj.needs_vl, vl_model=args.vl_model, threshold=args.threshold,
                  beta=args.beta, device=args.device)
    queries = suggest(rp, args.strategy, args.budget, per_image=args.per_image, seed=args.seed)
    write_queries(args.out, queries)
    images = len({q.row for q in queries})
    print(json.dumps({"out": args.out, "questions": len(queries), "images": images, "strategy": args.strategy,
                      "unknown_entries": int(rp.pool.candidates.sum())}))
    return 0


def cmd_apply_answers(args: argparse.Namespace) -> int:
    from mlrkit.annotation.answers import apply_answers

    report = apply_answers(args.labels, args.answers, args.out, classes=args.classes, uncertain=args.uncertain)
    print(json.dumps({"out": args.out, **report.as_dict()}))
    return 0


def cmd_simulate_annotation(args: argparse.Namespace) -> int:
    from mlrkit.annotation.simulate import SimulationSettings, format_comparison, simulate, simulate_grid
    from mlrkit.config import build_config
    from mlrkit.errors import MlrkitError

    strategies = _csv_list(args.strategy, "--strategy")
    try:
        seeds = [int(s) for s in _csv_list(args.seed, "--seed")]
    except ValueError:
        raise MlrkitError(f"--seed must be integers separated by commas, got {args.seed!r}") from None
    flags = {
        "seed": seeds[0],
        "data": {"name": args.dataset, "root": args.root},
        "labels": {"protocol": args.labels},
        "method": {"name": args.method} if args.method else None,
        "loss": {"name": args.loss} if args.loss else None,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "progress": False},
        "vl": {"model": args.vl_model},
    }
    base = build_config(args.config, flags, args.set)
    settings = SimulationSettings(strategy=strategies[0], rounds=args.rounds, budget=args.budget_per_round,
                                  per_image=args.per_image, threshold=args.threshold, beta=args.beta)
    for s in strategies:
        SimulationSettings(**{**settings.__dict__, "strategy": s}).check()
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(args.out)
    if len(strategies) == 1 and len(seeds) == 1:
        rows = simulate(base, settings, out, progress=say)
        print(json.dumps({"out": str(out), "rounds": [{k: r[k] for k in ("round", "entries_known", "test_map")}
                                                      for r in rows]}))
        return 0
    summary = simulate_grid(base, strategies, seeds, settings, out, progress=say)
    print(format_comparison(summary))
    print(f"(test mAP %; wrote {out / 'comparison.md'}, comparison.json, comparison.csv, comparison.png)")
    return 0
