"""The sub-commands. Each handler parses nothing itself: it maps flags to a config or a call."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from mlrkit.cli.main import add_command


def register(sub) -> None:
    p = add_command(sub, "list", "list registered datasets, protocols, losses or methods",
                    "mlrkit list losses", cmd_list)
    p.add_argument("kind", nargs="?", default="all",
                   choices=["all", "datasets", "protocols", "losses", "methods", "backbones", "vl-backends"])

    p = add_command(sub, "prepare",
                    "make observed labels from a protocol, save them with their SHA-256, print statistics",
                    "mlrkit prepare --dataset scene --labels single-positive --seed 0 --out scene-sp0.npz", cmd_prepare)
    p.add_argument("--dataset", required=True, help="registry name or features:PATH.npz")
    p.add_argument("--root", help="dataset directory (datasets stored on disk)")
    p.add_argument("--labels", default="full", help="observation protocol, e.g. single-positive, partial:0.3")
    p.add_argument("--seed", type=int, default=0, help="observation seed")
    p.add_argument("--out", help="where to write the observed labels (.npz); omitted: statistics only")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset adapter option, e.g. --option difficult=unknown (see docs/datasets.md)")

    p = add_command(sub, "train",
                    "train a method with a loss on observed labels; select on validation, test once",
                    "mlrkit train --dataset yeast --method linear --loss an --labels single-positive "
                    "--seed 0 --epochs 20 --out runs/yeast-an\n  "
                    "mlrkit train --config configs/demo/mlp.yaml --dataset scene --set train.lr=1e-3 --out runs/s\n  "
                    "mlrkit train --out runs/yeast-an --resume", cmd_train)
    add_train_flags(p)

    p = add_command(sub, "evaluate", "metrics (mAP, CF1/OF1, P@k/R@k) of a run's best checkpoint on val and test",
                    "mlrkit evaluate runs/yeast-an", cmd_evaluate)
    p.add_argument("run", help="run directory")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for CF1/OF1")
    p.add_argument("--k", type=int, default=3, help="k of P@k / R@k")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add_command(sub, "predict", "class probabilities for new inputs (feature files or images)",
                    "mlrkit predict runs/yeast-an new_rows.npy --format csv", cmd_predict)
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="+", help="feature files (.npy/.npz/.csv) or images, as the run's method takes")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--threshold", type=float, default=0.5, help="probability above which a label is predicted")
    p.add_argument("--output", help="write here instead of standard output")

    p = add_command(sub, "demo", "single-positive vs full labels on built-in real data: table + bar plot",
                    "mlrkit demo --out demo_out", cmd_demo)
    p.add_argument("--out", default="demo_out", help="output directory (table, plot, runs)")
    p.add_argument("--datasets", default="scene,yeast", help="comma-separated built-in datasets")
    p.add_argument("--losses", default="", help="comma-separated losses (default: the demo's set)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")

    vl = sub.add_parser("vl", help="vision-language model tools (pretrain)", description="vision-language model tools")
    vsub = vl.add_subparsers(dest="vl_command", metavar="VL_COMMAND")
    p = add_command(vsub, "pretrain", "train the built-in mosaic-clip contrastively on fashion-mosaic captions",
                    "mlrkit vl pretrain --steps 2400 --batch-size 256 --lr 1e-3 --seed 0 --out mosaic_clip_raw.pt",
                    cmd_vl_pretrain)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--eval-every", type=int, default=200, help="zero-shot test mAP every N steps (0 = off)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="mosaic_clip_raw.pt", help="raw checkpoint to write")

    p = add_command(sub, "bench", "benchmarks: metrics, losses",
                    "mlrkit bench metrics\n  mlrkit bench losses --classes 1000", cmd_bench)
    p.add_argument("what", choices=["metrics", "losses"])
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML (configs/...); flags and --set override it")
    p.add_argument("--dataset", help="registry name or features:PATH.npz")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--method", help="method name (mlrkit list methods)")
    p.add_argument("--loss", help="loss name (mlrkit list losses)")
    p.add_argument("--labels", help="observation protocol or a .npz from `mlrkit prepare`")
    p.add_argument("--seed", type=int, help="run seed (also the observation seed unless labels.seed is set)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--out", help="run directory")
    p.add_argument("--vl-model", help="vision-language model spec for CLIP-based methods (vl.model; "
                   "default mosaic-clip), e.g. openclip:ViT-B-16@/models/vitb16.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.optimizer=sgd --set loss.alpha=0.2")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and report them")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def train_config_from_args(args: argparse.Namespace):
    from mlrkit.config import RunConfig, build_config

    if args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        saved = Path(args.out) / "config.yaml"
        cfg = RunConfig.load(saved)
        given = [f for f in ("config", "dataset", "method", "loss", "labels", "seed", "epochs", "batch_size", "lr",
                             "vl_model")
                 if getattr(args, f, None) is not None] + (["--set"] if args.set else [])
        if given:
            from mlrkit.errors import ConfigError

            raise ConfigError(f"--resume continues {saved} as saved; drop {', '.join(given)}")
        return cfg
    flags = {
        "seed": args.seed,
        "out": args.out,
        "data": {"name": args.dataset, "root": args.root, "skip_bad_images": True if args.skip_bad_images else None},
        "labels": {"protocol": args.labels},
        "method": {"name": args.method} if args.method else None,
        "loss": {"name": args.loss} if args.loss else None,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
        "vl": {"model": args.vl_model},
    }
    return build_config(args.config, flags, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from mlrkit.engine.trainer import train

    cfg = train_config_from_args(args)
    results = train(cfg, resume=args.resume, quiet=args.quiet)
    print(json.dumps({"out": cfg.out, "val_map": results["val_map"], "test_map": results["test_map"],
                      "best_epoch": results["best_epoch"]}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import mlrkit.data.datasets  # noqa: F401
    import mlrkit.losses.zoo  # noqa: F401
    import mlrkit.methods.fixed_features  # noqa: F401
    import mlrkit.methods.image  # noqa: F401
    from mlrkit.data import DATASETS
    from mlrkit.labels import PROTOCOLS
    from mlrkit.losses import LOSSES
    from mlrkit.methods import METHODS
    from mlrkit.models.backbones import BACKBONES
    from mlrkit.vl import VL_BACKENDS

    regs = {"datasets": DATASETS, "protocols": PROTOCOLS, "losses": LOSSES, "methods": METHODS,
            "backbones": BACKBONES, "vl-backends": VL_BACKENDS}
    kinds = list(regs) if args.kind == "all" else [args.kind]
    for kind in kinds:
        entries = regs[kind].list()
        print(f"{kind}:")
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.description}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mlrkit.config import parse_set
    from mlrkit.data import load_dataset
    from mlrkit.labels import label_stats, observe

    ds = load_dataset(args.dataset, args.root, **parse_set(args.option))
    tv = ds.trainval
    obs = observe(tv.targets, args.labels, args.seed, ds.name, ds.class_names, known=tv.known)
    print(f"dataset {ds.name}: {len(tv)} official-train images (validation = 20% of them), "
          f"{len(ds.test)} test, {ds.num_classes} classes")
    print("ground truth (official train):")
    print(_indent(label_stats(tv.targets if tv.known is None else _gt_as_observed(tv), ds.class_names).format()))
    print(f"observed labels ({args.labels}, seed {args.seed}):")
    print(_indent(label_stats(obs.observed, ds.class_names).format()))
    print(f"sha256 {obs.sha256}")
    if args.out:
        path = obs.save(args.out)
        print(f"wrote {path}")
    return 0


def _gt_as_observed(split):
    import numpy as np

    return np.where(split.known, np.where(split.targets == 1, 1, -1), 0).astype(np.int8)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import evaluate_run

    res = evaluate_run(args.run, threshold=args.threshold, k=args.k)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    keys = [k for k in res["test"] if k not in ("n_classes_scored", "n_classes_skipped")]
    print(f"{'split':<6}" + "".join(f"{k:>9}" for k in keys))
    for split, m in res.items():
        print(f"{split:<6}" + "".join(f"{100 * m[k]:>9.2f}" for k in keys))
    skipped = res["test"]["n_classes_skipped"]
    if skipped:
        print(f"(test mAP averages {res['test']['n_classes_scored']} classes; {skipped} without a positive skipped)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import load_run, predict_inputs

    run = load_run(args.run)
    ids, probs = predict_inputs(run, args.inputs)
    names = run.class_names
    fh = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "json":
            for i, row in zip(ids, probs):
                fh.write(json.dumps({"input": i, "scores": dict(zip(names, map(float, row))),
                                     "labels": [n for n, p in zip(names, row) if p >= args.threshold]}) + "\n")
        else:
            w = csv.writer(fh)
            w.writerow(["input", *names])
            for i, row in zip(ids, probs):
                w.writerow([i, *(f"{p:.6f}" for p in row)])
    finally:
        if args.output:
            fh.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mlrkit.demo import run_demo

    losses = [s for s in args.losses.split(",") if s] or None
    seeds = [int(s) for s in args.seeds.split(",") if s]
    run_demo(Path(args.out), datasets=args.datasets.split(","), losses=losses, seeds=seeds)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mlrkit.bench import run_bench

    run_bench(args.what, args)
    return 0


def cmd_vl_pretrain(args: argparse.Namespace) -> int:
    from mlrkit.pretraining import pretrain_mosaic_clip, save_pretrained

    model, config, result, history = pretrain_mosaic_clip(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        time_limit_s=None if args.time_limit is None else 60 * args.time_limit,
        eval_every=args.eval_every, device=args.device)
    save_pretrained(model, config, args.out, result=result, history=history, command=sys.argv, seed=args.seed)
    print(json.dumps({"out": args.out, "steps": result.steps, "seconds": round(result.seconds, 1),
                      "zeroshot_test_map": result.zeroshot_map}))
    return 0
