"""The sub-commands. Each handler parses nothing itself: it maps flags to a config or a call."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from mlrkit.cli.common import add_command, add_device_argument, add_loop_arguments, command_device, loop_run_dir


def register(sub) -> None:
    p = add_command(sub, "list", "list registered datasets, protocols, losses or methods",
                    "mlrkit list losses", cmd_list)
    p.add_argument("kind", nargs="?", default="all",
                   choices=["all", "datasets", "protocols", "losses", "methods", "backbones", "vl-backends",
                            "strategies"], help="which registry to list (default: all)")

    p = add_command(sub, "prepare",
                    "make observed labels from a protocol, save them with their SHA-256, print statistics",
                    "mlrkit prepare --dataset scene --labels single-positive --seed 0 --out scene-sp0.npz\n  "
                    "mlrkit prepare --dataset manifest:my_photos.csv --labels observed --out mine.npz   "
                    "# your own partial labels", cmd_prepare)
    p.add_argument("--dataset", required=True, help="registry name, features:PATH.npz or manifest:PATH.csv")
    p.add_argument("--root", help="dataset directory (datasets stored on disk)")
    p.add_argument("--labels", default="full",
                   help="observation protocol, e.g. observed (the dataset's own labels), single-positive, partial:0.3")
    p.add_argument("--per-class", action="store_true",
                   help="print known positives/negatives per class (always on for partial ground truth)")
    p.add_argument("--export-features", metavar="F.npz",
                   help="datasets with features: also write a features file whose training labels are these "
                   "observed labels only (observed_train, no Y_train) - real-looking partial data, "
                   "usable as --dataset features:F.npz --labels observed")
    p.add_argument("--seed", type=int, default=0, help="observation seed")
    p.add_argument("--out", help="where to write the observed labels (.npz); omitted: statistics only")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset adapter option, e.g. --option difficult=unknown (see docs/datasets.md)")

    p = add_command(sub, "train",
                    "train a method with a loss on observed labels; select on validation, test once",
                    "mlrkit train --dataset yeast --method linear --loss an --labels single-positive "
                    "--seed 0 --epochs 20 --out runs/yeast-an\n  "
                    "mlrkit train --config configs/demo/mlp.yaml --dataset scene --set train.lr=1e-3 --out runs/s\n  "
                    "mlrkit train --out runs/yeast-an --resume\n  "
                    "mlrkit train --config configs/prompting/coco2014-dualcoop.yaml --vl-model openclip:RN101 "
                    "--dry-run", cmd_train)
    add_train_flags(p)
    p.add_argument("--dry-run", action="store_true",
                   help="build data, method and model, print one JSON line (trainable_params, total_params...) "
                   "and exit: nothing is trained or extracted")

    p = add_command(sub, "sweep",
                    "train methods over several label proportions; print the papers' table (CSV and Markdown too)",
                    "mlrkit sweep --config configs/prompting/fashion-mosaic-dualcoop.yaml "
                    "--methods dualcoop,positivecoop,negativecoop,baseline --labels partial:0.1,0.3,0.5,0.7,0.9 "
                    "--out runs/sweep\n  "
                    "mlrkit sweep --methods configs/prompting/voc2007-dualcoop.yaml,"
                    "configs/prompting/voc2007-positivecoop.yaml --root /data/VOCdevkit "
                    "--vl-model openclip:RN101@/models/RN101.pt --labels partial:0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 "
                    "--out runs/voc-sweep", cmd_sweep)
    add_train_flags(p)
    p.add_argument("--methods", help="comma-separated method names or recipe files (a name keeps the --config "
                   "recipe but not its method hyper-parameters; default: --method / the recipe's method)")
    p.add_argument("--seeds", help="comma-separated run seeds (default: --seed / the recipe's); cells average them")

    p = add_command(sub, "evaluate",
                    "metrics of a run's best checkpoint on val and test, over the known entries (mAP, micro/"
                    "weighted AP, AUROC, CF1/OF1, P@k/R@k, ECE, Hamming, Jaccard)",
                    "mlrkit evaluate runs/yeast-an\n  mlrkit evaluate runs/mine --per-class --json", cmd_evaluate)
    p.add_argument("run", help="run directory")
    p.add_argument("--threshold", type=float, default=None, help="one probability threshold for CF1/OF1, Hamming "
                   "loss and Jaccard (default: the run's per-class thresholds fitted on validation, calibration.json)")
    p.add_argument("--k", type=int, default=3, help="k of P@k / R@k")
    p.add_argument("--per-class", action="store_true",
                   help="print AP and the known positives/negatives of every test class (always on for partial data)")
    p.add_argument("--plots", metavar="DIR",
                   help="write the test split's PR and ROC curves per class and its reliability diagram (PNG + JSON)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_device_argument(p)

    p = add_command(sub, "predict", "calibrated class probabilities and labels for new inputs (images or feature "
                    "files)",
                    "mlrkit predict runs/yeast-an new_rows.npy --format csv\n  "
                    "mlrkit predict runs/photos photos/ --skip-bad-images --output preds.jsonl\n  "
                    "mlrkit predict runs/photos 'photos/**/*.jpg' --format json --threshold 0.5", cmd_predict)
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively for image files) or glob "
                   "patterns (quote them); feature files (.npy/.npz/.csv) for runs on fixed features")
    p.add_argument("--format", choices=["jsonl", "csv", "json"], default="jsonl",
                   help="jsonl: one JSON object per input; csv: one row per input (probabilities, then the labels "
                   "joined by |); json: one JSON array of those objects (skipped inputs: on standard error; the "
                   "thresholds: RUN/calibration.json)")
    p.add_argument("--threshold", type=float, default=None, help="one probability threshold for every class "
                   "(default: the run's per-class thresholds fitted on validation, calibration.json)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable image files and report them "
                   "(standard error) instead of failing")
    p.add_argument("--output", help="write here instead of standard output")
    add_device_argument(p)

    p = add_command(sub, "compare", "finished runs side by side: table (mAP, CF1/OF1, ECE, temperature) and plots "
                    "(learning curves, per-class test AP)",
                    "mlrkit compare demo_out/runs/* --out compare/\n  mlrkit compare runs/a runs/b --out cmp --json",
                    cmd_compare)
    p.add_argument("runs", nargs="+", help="run directories (with results.json)")
    p.add_argument("--out", default="compare", help="output directory: compare.md, compare.json, curves.png, "
                   "per_class_ap.png")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")

    p = add_command(sub, "export", "a run as a self-contained model for serving: preprocessed batch in, calibrated "
                    "probabilities out; checked against mlrkit's prediction (TorchScript 1e-5, ONNX 1e-4)",
                    "mlrkit export runs/photos --format torchscript\n  "
                    "mlrkit export runs/photos --format onnx --out model.onnx", cmd_export)
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript",
                   help="torchscript (torch.jit) or onnx (needs onnx + onnxruntime: pip install 'mlrkit[export]')")
    p.add_argument("--out", help="file to write (default RUN/model.ts or RUN/model.onnx); export.json-style "
                   "metadata goes next to it (<stem>.json)")

    p = add_command(sub, "demo", "single-positive vs full labels on built-in real data: table + bar plot",
                    "mlrkit demo --out demo_out", cmd_demo)
    p.add_argument("--out", default="demo_out", help="output directory (table, plot, runs)")
    p.add_argument("--datasets", default="scene,yeast", help="comma-separated built-in datasets")
    p.add_argument("--losses", default="", help="comma-separated losses (default: the demo's set)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: one per usable CPU, plus one per CPU other work keeps busy "
                   "at the start; 1 = all runs in this process)")

    p = add_command(sub, "pseudo-label",
                    "VLPL pseudo-labels from a VL model's temperature softmax; precision/recall vs ground truth",
                    "mlrkit pseudo-label --dataset fashion-mosaic --vl-model mosaic-clip --tau 0.03 --theta 0.3 "
                    "--out pl.npz", cmd_pseudo_label)
    p.add_argument("--dataset", required=True, help="dataset whose training (or test) images are pseudo-labelled")
    p.add_argument("--root", help="dataset directory (datasets stored on disk)")
    p.add_argument("--vl-model", default="mosaic-clip", help="VL model spec (mlrkit list vl-backends)")
    p.add_argument("--templates", default="single", help="single | ensemble | name")
    p.add_argument("--tau", type=float, default=0.03, help="softmax temperature")
    p.add_argument("--theta", type=float, default=0.3, help="pseudo-positive threshold")
    p.add_argument("--delta", type=float, default=0.0, help="fraction of lowest classes per image as negatives")
    p.add_argument("--split", choices=["trainval", "test"], default="trainval",
                   help="official training set (what training uses) or test set")
    p.add_argument("--labels", help="observation protocol: quality is then also reported on the unknown entries")
    p.add_argument("--seed", type=int, default=0,
                   help="observation seed (--labels) and seed of random-weight VL models")
    p.add_argument("--out", help="write the pseudo-labels (.npz)")
    add_device_argument(p)

    p = add_command(sub, "extract-features",
                    "run a frozen encoder once over a dataset's images (FeatureStore cache); optionally export "
                    "a features:FILE.npz",
                    "mlrkit extract-features --dataset fashion-mosaic --vl-model mosaic-clip --out fm-clip.npz\n  "
                    "mlrkit extract-features --dataset voc2007 --root /data/VOCdevkit --backbone resnet50 "
                    "--set model.weights=/models/r50.pth --out voc-r50.npz", cmd_extract_features)
    p.add_argument("--dataset", required=True, help="dataset whose images are encoded (both splits)")
    p.add_argument("--root", help="dataset directory (datasets stored on disk)")
    enc = p.add_mutually_exclusive_group(required=True)
    enc.add_argument("--vl-model", help="a VL image encoder (mlrkit list vl-backends)")
    enc.add_argument("--backbone", help="an image backbone (mlrkit list backbones)")
    p.add_argument("--dense", action="store_true", help="VL region/patch features [N, HW, D] (cache only)")
    p.add_argument("--l2-normalize", action="store_true",
                   help="divide every feature row by its L2 norm (recorded in --out: predict does the same)")
    p.add_argument("--image-size", type=int, help="input resolution (default: the encoder's own / data.image_size)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of random-weight encoders")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone config, e.g. --set model.weights=/models/r50.pth")
    p.add_argument("--out", help="write X_train, Y_train, X_test, Y_test, class_names (pooled features) and "
                   "feature_source (how they were made: encoder, weights hash, transform; docs/runs.md)")
    add_device_argument(p)

    vl = sub.add_parser("vl", help="vision-language model tools (pretrain, export, vocab)",
                        description="vision-language model tools", formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  mlrkit vl vocab --vl-model mosaic-clip --dataset voc2007\n  "
                        "mlrkit vl pretrain --steps 2400 --out mosaic_clip_raw.pt\n  "
                        "mlrkit vl export mosaic_clip_raw.pt --out mosaic_clip.pt")
    vsub = vl.add_subparsers(dest="vl_command", metavar="VL_COMMAND")
    p = add_command(vsub, "pretrain", "train the built-in mosaic-clip contrastively on fashion-mosaic captions",
                    "mlrkit vl pretrain --steps 2400 --batch-size 256 --lr 1e-3 --seed 0 --out mosaic_clip_raw.pt",
                    cmd_vl_pretrain)
    p.add_argument("--steps", type=int, default=2400, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=256, help="image-caption pairs per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up then cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, captions and batches")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--eval-every", type=int, default=200, help="zero-shot test mAP every N steps (0 = off)")
    add_device_argument(p)
    p.add_argument("--init", help="continue from a raw checkpoint of an earlier phase (new warm-up + cosine)")
    p.add_argument("--subset-prob", type=float, default=0.0,
                   help="probability that a caption names only a random subset of the present classes")
    p.add_argument("--multi-positive", action="store_true",
                   help="contrastive targets: every caption that truly describes the image (not only its own)")
    p.add_argument("--heldout-source", default=None,
                   help="train on mosaics of Fashion-MNIST photos NOT in the built-in fashion-mosaic, read from this "
                        "Fashion-MNIST directory (Debian: /usr/share/datasets/fashion-mnist); default: the built-in "
                        "training split")
    p.add_argument("--heldout-mosaics", type=int, default=20000, help="number of held-out mosaics (--heldout-source)")
    p.add_argument("--out", default="mosaic_clip_raw.pt", help="raw checkpoint to write")
    p.add_argument("--log-every", type=int, default=50, help="a metrics.jsonl row every N steps (and at each "
                   "zero-shot evaluation)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0 = off); the zero-shot "
                   "evaluations and the written checkpoint use the averaged weights")
    add_loop_arguments(p, "mosaic_clip_raw.run", "steps")

    p = add_command(vsub, "export", "write a raw `vl pretrain` checkpoint in the shipped format (fp16, sparse "
                    "token table, JSON sidecar)",
                    "mlrkit vl export mosaic_clip_raw.pt --out src/mlrkit/builtin/mosaic_clip.pt", cmd_vl_export)
    p.add_argument("raw", help="checkpoint written by `mlrkit vl pretrain`")
    p.add_argument("--out", required=True, help="where to write (mosaic_clip.pt + mosaic_clip.json)")
    p.add_argument("--name", default="mosaic-clip", help="model name recorded in the JSON sidecar")
    p = add_command(vsub, "vocab", "can a VL model's text side tell a class list apart? (mean/max pairwise cosine of "
                    "the class text embeddings, token coverage; docs/vl-backends.md)",
                    "mlrkit vl vocab --vl-model mosaic-clip --dataset fashion-mosaic\n  "
                    "mlrkit vl vocab --vl-model mosaic-clip --dataset voc2007\n  "
                    "mlrkit vl vocab --vl-model openclip:ViT-B-16@/models/vitb16.pt --classes cat,dog,sofa",
                    cmd_vl_vocab)
    p.add_argument("--vl-model", default="mosaic-clip", help="VL model spec (mlrkit list vl-backends)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset whose class names are checked (VOC/COCO work without files)")
    src.add_argument("--classes", help="comma-separated class names")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--templates", default="single", help="prompt templates: single | ensemble | name")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add_command(sub, "bench", "benchmarks: metrics, losses, features (cached vs recomputed encoder), "
                    "boostlu (inference cost), boostlu-ablation (fashion-mosaic table), scpnet (step vs fine-tuning), "
                    "throughput, classes, allocator (host-memory setting)",
                    "mlrkit bench metrics\n  mlrkit bench losses --classes 1000\n  mlrkit bench features\n  "
                    "mlrkit bench boostlu --batch 2 --repeats 10\n  "
                    "mlrkit bench boostlu-ablation --seeds 0,1,2 --out runs/boostlu-ablation\n  "
                    "mlrkit bench scpnet --vl-model openclip:RN50 --batch 8\n  "
                    "mlrkit bench throughput --batch 2   # every method, papers' backbones and resolutions\n  "
                    "mlrkit bench classes --methods dualcoop,scpnet   # step time/memory vs number of classes\n  "
                    "mlrkit bench classes --methods positivecoop --counts 1000,5000 --no-warmup --timeout 3000\n  "
                    "mlrkit bench allocator --methods dualcoop --classes 312   # host-memory setting: cost, saving\n  "
                    "mlrkit bench loop   # mlrkit's training loop vs a bare PyTorch loop (demo MLP, small CNN)\n  "
                    "mlrkit bench loader --image-size 448   # decode+resize img/s per worker vs the step rate\n  "
                    "mlrkit bench gpu --json gpu.json   # device machine: every method, AMP off/bf16, data wait\n  "
                    "mlrkit bench gpu --smoke   # the same code with small models (CPU check, not a figure)\n  "
                    "mlrkit bench demo --busy   # mlrkit demo's wall time idle vs with a busy core (alternated)",
                    cmd_bench)
    p.add_argument("what", choices=["metrics", "losses", "features", "prompts", "boostlu", "boostlu-ablation",
                                    "scpnet", "throughput", "classes", "allocator", "loop", "loader", "gpu", "demo"],
                   help="which benchmark (see above)")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--classes", type=int, default=None, help="number of classes (losses: 1000, boostlu: 80)")
    p.add_argument("--batch", type=int, default=None, help="batch size (losses: 256, prompts: 16)")
    p.add_argument("--vl-model", default="openclip:RN50", help="prompts: VL model (random weights are fine)")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (prompts: 224, boostlu: 448)")
    p.add_argument("--images", type=int, default=64, help="prompts: number of images")
    p.add_argument("--methods", default=None,
                   help="prompts (default: the four prompt methods), throughput/classes/gpu (default: all), "
                   "allocator (dualcoop): methods; loop: workloads (mlp,cnn)")
    p.add_argument("--repeats", type=int, default=None,
                   help="prompts: alternating epochs per path, fastest kept (2); boostlu: interleaved forwards (10); "
                   "allocator: alternating rounds (2); loop: alternated runs (3); loader: steps (3); gpu: steps (10); "
                   "demo: timed demos per condition (3)")
    p.add_argument("--out", default="runs/boostlu-ablation", help="boostlu-ablation: root of the run directories")
    p.add_argument("--seeds", default="0", help="boostlu-ablation: comma-separated seeds")
    p.add_argument("--epochs", type=int, default=None,
                   help="boostlu-ablation: epochs (recipe: 5); loop: epochs per run (mlp 30, cnn 2)")
    p.add_argument("--limit", type=int, default=None, help="loop: training mosaics of the cnn workload (1000)")
    p.add_argument("--model", default=None, help="loader: the model whose step rate is compared (resnet50)")
    p.add_argument("--smoke", action="store_true", help="gpu: small models and few steps; demo: the 2-run demo on "
                   "emotions (a check, not a figure)")
    p.add_argument("--busy", action="store_true", help="demo: also time it with one CPU-burning process pinned to "
                   "another core, alternating with the idle runs")
    add_device_argument(p)
    p.add_argument("--threads", type=int, default=None, help="boostlu, boostlu-ablation: torch CPU threads")
    p.add_argument("--counts", default=None, help="classes: comma-separated class counts (20,80,312,1000,5000)")
    p.add_argument("--timeout", type=float, default=600, help="classes, allocator: seconds per case process before "
                   "it is reported as not finished (classes: larger counts of that method are then skipped)")
    p.add_argument("--no-warmup", action="store_true",
                   help="classes: time the first step (no warm-up step; for steps of many minutes)")
    p.add_argument("--text-chunk", type=int, default=None,
                   help="classes: class prompts per checkpointed text pass (default: the methods' 256; 0 = one pass)")

    an = sub.add_parser("analyze", help="analyses of models and runs", description="analyses of models and runs",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  mlrkit analyze prior --vl-model mosaic-clip --dataset fashion-mosaic "
                        "--out prior.png\n  mlrkit analyze prompts --vl-model mosaic-clip --dataset fashion-mosaic\n  "
                        "mlrkit analyze pointing runs/fm-llr --json pointing.json")
    asub = an.add_subparsers(dest="analyze_command", metavar="ANALYSIS")
    p = add_command(asub, "prompts",
                    "cosine similarity of positive vs negative vs paraphrased class prompts in a VL text encoder "
                    "(PositiveCoOp's 'why negative prompts fail')",
                    "mlrkit analyze prompts --vl-model mosaic-clip --dataset fashion-mosaic\n  "
                    "mlrkit analyze prompts --vl-model mosaic-clip --dataset coco2014 --protocol templates",
                    cmd_analyze_prompts)
    p.add_argument("--vl-model", default="mosaic-clip", help="VL model spec")
    p.add_argument("--dataset", required=True, help="dataset whose class names are used (VOC/COCO work without files)")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--positive", default="a photo of a {}.", help="positive template")
    p.add_argument("--negative", default="a photo without a {}.", help="negative template")
    p.add_argument("--reference", default="a picture of a {}.", help="second positive template (paraphrase)")
    p.add_argument("--protocol", choices=["single", "templates"], default="single",
                   help="single: one positive/negative/paraphrase template per class; templates: many templates per "
                   "class (the PositiveCoOp poster's protocol; CLIP's 80 ImageNet templates and their negations)")
    p.add_argument("--templates", help="templates protocol: JSON of {positive, negative} pairs (default: the "
                   "built-in CLIP ImageNet 80)")
    p.add_argument("--seed", type=int, default=0, help="seed of random-weight VL models")
    p.add_argument("--json", help="also write the report (with per-class values) as JSON here")
    add_device_argument(p)
    p = add_command(asub, "pointing",
                    "CAM pointing game on a mosaic dataset (fashion-mosaic): does the CAM's arg-max fall in a "
                    "tile of the class? With/without BoostLU, chance level, attribution on/off the object",
                    "mlrkit analyze pointing runs/fm-llr runs/fm-full --json pointing.json", cmd_analyze_pointing)
    p.add_argument("runs", nargs="+", help="run directories trained with --method cam")
    p.add_argument("--split", choices=["val", "test"], default="test", help="split whose images are scored")
    p.add_argument("--limit", type=int, help="first N images of the split")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: each run's boostlu.alpha)")
    p.add_argument("--json", help="also write the results as JSON here")
    p = add_command(asub, "prior",
                    "SCPNet's structured semantic prior A* (CLIP text similarity, top-K, re-weighting s, softmax "
                    "tau') of a VL model for a dataset's classes, drawn as a heatmap PNG",
                    "mlrkit analyze prior --vl-model mosaic-clip --dataset fashion-mosaic --out prior.png",
                    cmd_analyze_prior)
    p.add_argument("--vl-model", default="mosaic-clip", help="VL model spec")
    p.add_argument("--dataset", required=True, help="dataset whose class names are used (VOC/COCO work without files)")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--k", type=int, help="top-K per row, the class itself included (default: all classes)")
    p.add_argument("--s", type=float, default=0.2, help="re-weighting: neighbours share s, the diagonal keeps 1-s")
    p.add_argument("--tau", type=float, default=0.2, help="softmax temperature tau'")
    p.add_argument("--template", default="a photo of a {}.", help="prompt template of the class text features")
    p.add_argument("--seed", type=int, default=0, help="seed of random-weight VL models")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--json", help="also write the report (with the matrix) as JSON here")
    add_device_argument(p)

    p = add_command(sub, "explain",
                    "class activation maps of a `cam` run as PNG overlays, without and with BoostLU, and the "
                    "attribution scores per class (scores.json)",
                    "mlrkit explain runs/fm-llr mosaic1.png mosaic2.png --classes Bag,Sneaker --out explain/",
                    cmd_explain)
    p.add_argument("run", help="run directory trained with --method cam")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--classes", help="comma-separated class names or indices (default: the top-k predicted)")
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image when --classes is not given")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: the run's boostlu.alpha)")
    p.add_argument("--out", default="explain", help="output directory (PNGs + scores.json)")
    add_device_argument(p)

    from mlrkit.cli.negation import register_negation

    register_negation(sub)
    from mlrkit.cli.annotation import register_annotation

    register_annotation(sub)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML (configs/...); flags and --set override it")
    p.add_argument("--dataset", help="registry name (mlrkit list datasets), manifest:FILE.csv|.jsonl for your own "
                   "images and labels (README 'Your own data'), or features:PATH.npz")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--method", help="method name (mlrkit list methods; default linear)")
    p.add_argument("--loss", help="loss name (mlrkit list losses; default: the method's own, e.g. vlpl -> vlpl, "
                   "scpnet -> splc, prompt methods -> asl, cam -> ll_r, linear/mlp/finetune -> an)")
    p.add_argument("--labels", help="observation protocol or a .npz from `mlrkit prepare`")
    p.add_argument("--seed", type=int, help="run seed (also the observation seed unless labels.seed is set)")
    p.add_argument("--epochs", type=int, help="training epochs (train.epochs; default 20, zeroshot 0); with "
                   "--resume: extend the run to this many epochs")
    p.add_argument("--batch-size", type=int, help="images or feature rows per step (train.batch_size; default 32)")
    p.add_argument("--lr", type=float, help="learning rate (train.lr; default 1e-3)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--vl-model", help="vision-language model spec for CLIP-based methods (vl.model; "
                   "default mosaic-clip), e.g. openclip:ViT-B-16@/models/vitb16.pt")
    p.add_argument("--cache-views", type=int, help="prompt methods: cached views per training image "
                   "(features.cache_views; 1 = the evaluation view only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.optimizer=sgd --set loss.alpha=0.2")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly as saved in its "
                   "config.yaml, from its last.pt (only --epochs may change: more epochs)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and report them")
    p.add_argument("--quiet", action="store_true", help="no progress output (console.log in the run keeps the lines)")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in RUN/tensorboard "
                   "(track.tensorboard; pip install 'mlrkit[track]')")
    p.add_argument("--mlflow", metavar="URI", help="also log to MLflow at this tracking URI, e.g. file:./mlruns "
                   "(track.mlflow; pip install 'mlrkit[track]')")


def train_config_from_args(args: argparse.Namespace):
    from mlrkit.config import build_config
    from mlrkit.errors import ConfigError

    if args.resume:
        from mlrkit.engine.rundir import check_out_path, saved_config

        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR: the run directory to continue")
        out = Path(args.out)
        check_out_path(out)
        if not out.is_dir():
            raise ConfigError(f"--resume: {out} does not exist; to start a new run there, drop --resume")
        cfg = saved_config(out)
        given = [f for f in ("config", "dataset", "root", "method", "loss", "labels", "seed", "batch_size", "lr",
                             "vl_model", "cache_views", "mlflow")
                 if getattr(args, f, None) is not None] + (["--set"] if args.set else []) + \
            (["--skip-bad-images"] if args.skip_bad_images else [])
        if given:
            raise ConfigError(f"--resume continues {out / 'config.yaml'} as saved (only --epochs may extend it); "
                              f"drop {', '.join(given)}")
        cfg.out = str(out)  # the run directory is the one given, wherever it was first written
        if args.epochs is not None:
            cfg.train.epochs = args.epochs
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
        "features": {"cache_views": getattr(args, "cache_views", None)},
        "track": {"tensorboard": True if getattr(args, "tensorboard", False) else None,
                  "mlflow": getattr(args, "mlflow", None)},
    }
    cfg = build_config(args.config, flags, args.set)
    from mlrkit.methods.base import method_class

    if not method_class(cfg.method.name).trains and not _epochs_given(args):
        cfg.train.epochs = 0  # a method that trains nothing (zeroshot) needs no --epochs
    return cfg


def _epochs_given(args: argparse.Namespace) -> bool:
    """Whether train.epochs was set explicitly: --epochs, --set train.epochs=..., or the recipe (with its bases)."""
    from mlrkit.config import load_recipe

    if args.epochs is not None or any(s.split("=", 1)[0].strip() == "train.epochs" for s in args.set):
        return True
    return bool(args.config) and "epochs" in (load_recipe(args.config).get("train") or {})


def cmd_train(args: argparse.Namespace) -> int:
    from mlrkit.engine.trainer import train

    cfg = train_config_from_args(args)
    if getattr(args, "dry_run", False):
        from mlrkit.methods.prompting import dry_run

        print(json.dumps(dry_run(cfg)))
        return 0
    results = train(cfg, resume=args.resume, quiet=args.quiet, extend=args.resume and args.epochs is not None)
    print(json.dumps({"out": cfg.out, "val_map": results["val_map"], "test_map": results["test_map"],
                      "best_epoch": results["best_epoch"]}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import mlrkit.data.datasets  # noqa: F401
    import mlrkit.losses.zoo  # noqa: F401
    from mlrkit.methods.base import register_all

    register_all()
    from mlrkit.annotation.strategies import STRATEGIES
    from mlrkit.data import DATASETS
    from mlrkit.labels import PROTOCOLS
    from mlrkit.losses import LOSSES
    from mlrkit.methods import METHODS
    from mlrkit.models.backbones import BACKBONES
    from mlrkit.vl import VL_BACKENDS

    regs = {"datasets": DATASETS, "protocols": PROTOCOLS, "losses": LOSSES, "methods": METHODS,
            "backbones": BACKBONES, "vl-backends": VL_BACKENDS, "strategies": STRATEGIES}
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
    from mlrkit.labels import label_stats, make_observed, observe
    from mlrkit.utils import write_json

    ds = load_dataset(args.dataset, args.root, **parse_set(args.option))
    tv = ds.trainval
    obs = observe(tv.targets, args.labels, args.seed, ds.name, ds.class_names, known=tv.known,
                  annotations=tv.annotations)
    print(f"dataset {ds.name}: {len(tv)} official-train images (validation = 20% of them), "
          f"{len(ds.test)} test, {ds.num_classes} classes")
    partial = tv.known is not None
    # partial ground truth is counted as observed labels: its known entries as +1/-1, the rest unknown
    gt_stats = label_stats(tv.targets if not partial else make_observed(tv.targets, "observed", 0, known=tv.known),
                           ds.class_names)
    print("ground truth (official train)" + (", partial: only known entries counted" if partial else "") + ":")
    print(_indent(gt_stats.format()))
    obs_stats = label_stats(obs.observed, ds.class_names)
    print(f"observed labels ({args.labels}, seed {args.seed}):")
    print(_indent(obs_stats.format(per_class=partial or args.per_class)))
    if ds.test.known is not None:
        print(f"test split: partial ground truth, {100 * float(ds.test.known.mean()):.2f}% of its entries known "
              "(test metrics score only those)")
    print(f"sha256 {obs.sha256}")
    if args.out:
        path = obs.save(args.out)
        stats_path = path.with_suffix(".stats.json")
        stats = {"ground_truth": gt_stats.as_dict(), "observed": obs_stats.as_dict(), "protocol": args.labels,
                 "seed": args.seed, "sha256": obs.sha256,
                 "test_known_fraction": None if ds.test.known is None else float(ds.test.known.mean())}
        write_json(stats_path, stats)
        print(f"wrote {path} and {stats_path}")
    if args.export_features:
        from mlrkit.data.datasets.features import save_partial_features

        print(f"wrote {save_partial_features(ds, obs.observed, args.export_features)} "
              "(training labels = the observed labels only)")
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import evaluate_run_report
    from mlrkit.metrics_groups import format_grouped

    # grouped: OpenImages (or boostlu.groups): mAP per annotation-count group
    res, grouped = evaluate_run_report(args.run, threshold=args.threshold, k=args.k, plots=args.plots,
                                       device=args.device)
    if args.json:
        print(json.dumps({**res, "grouped_map": grouped} if grouped else res, indent=2))
        return 0
    print(_format_evaluation(res, per_class=args.per_class))
    print("(thresholded metrics at " + (f"threshold {args.threshold}" if args.threshold is not None
                                        else "the run's per-class thresholds") + ", on probabilities after the run's "
          "temperature scaling; ece: expected calibration error of those probabilities)")
    if args.plots:
        print(f"wrote {', '.join(res['test'].get('plots', []))}")
    if grouped:
        print(f"classes grouped by number of training annotations (Group 1: fewest):\n{format_grouped(grouped)}")
    return 0


_NOT_PERCENT = ("n_classes_scored", "n_classes_skipped", "per_class", "unscored_classes", "known_fraction", "plots")


def _format_evaluation(res: dict, per_class: bool = False) -> str:
    """The metrics table (metric rows, split columns, in %), then what the test metrics rest on."""
    splits = list(res)
    keys = [k for k in res[splits[0]] if k not in _NOT_PERCENT]
    lines = [f"{'metric':<13}" + "".join(f"{s:>9}" for s in splits)]
    for k in keys:
        cells = ["      n/a" if res[s].get(k) is None else f"{100 * res[s][k]:>9.2f}" for s in splits]
        lines.append(f"{k:<13}" + "".join(cells))
    lines.append("(all metrics in %; ece and hamming_loss: lower is better)")
    for s in splits:
        m = res[s]
        known = m.get("known_fraction", 1.0)
        note = f"{s}: mAP averages {m['n_classes_scored']} classes"
        if known < 1.0:
            note += f"; partial ground truth, only the known {100 * known:.2f}% of the entries are scored"
        if m.get("unscored_classes"):
            names = m["unscored_classes"]
            note += f"; not scored (no known positive): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
        lines.append(note)
    test = res.get("test")
    if test and (per_class or test.get("known_fraction", 1.0) < 1.0):
        rows = test["per_class"]
        width = max(8, *(len(n) for n in rows))
        lines.append(f"test per class:\n  {'class':<{width}} {'AP':>7} {'known +':>8} {'known -':>8}")
        for name, r in rows.items():
            ap = "    n/a" if r["ap"] is None else f"{100 * r['ap']:>7.2f}"
            lines.append(f"  {name:<{width}} {ap} {r['known_positives']:>8} {r['known_negatives']:>8}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import load_run

    if args.output:
        from mlrkit.errors import MlrkitError

        out = Path(args.output)
        if out.is_dir():
            raise MlrkitError(f"--output {out} is a directory; give a file name")
        if not out.parent.is_dir():
            raise MlrkitError(f"--output {out}: folder {out.parent} does not exist")
    run = load_run(args.run, device=args.device)
    pred = run.predict(args.inputs, threshold=args.threshold, skip_bad_images=args.skip_bad_images)
    if pred.skipped:
        print(f"mlrkit: skipped {len(pred.skipped)} unreadable input(s): "
              + ", ".join(f"{i} ({why})" for i, why in pred.skipped), file=sys.stderr)
    names = pred.class_names
    fh = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115 - closed below
    try:
        if args.format == "jsonl":
            for rec in pred.records():
                fh.write(json.dumps(rec) + "\n")
        elif args.format == "json":  # one array of the jsonl objects
            json.dump(pred.records(), fh, indent=1)
            fh.write("\n")
        else:
            w = csv.writer(fh)
            w.writerow(["input", *names, "labels"])
            for rec in pred.records():
                w.writerow([rec["input"], *(f"{rec['scores'][n]:.6f}" for n in names), "|".join(rec["labels"])])
    finally:
        if args.output:
            fh.close()
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mlrkit.analysis.compare import compare_runs

    res = compare_runs(args.runs, args.out)
    if args.json:
        print((Path(args.out) / "compare.json").read_text(), end="")
    else:
        print(res["table"])
        print(f"(metrics in %) wrote {', '.join(res['files'])}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mlrkit.engine.export import export_run

    meta = export_run(args.run, args.format, args.out)
    print(json.dumps({k: meta[k] for k in ("format", "file", "max_abs_diff_vs_mlrkit")} | {"input": meta["input"]}))
    return 0


def cmd_vl_vocab(args: argparse.Namespace) -> int:
    from mlrkit.config import build_config
    from mlrkit.methods.vl_methods import templates_of
    from mlrkit.vl import load
    from mlrkit.vl.vocabulary import vocabulary_check

    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
    else:
        from mlrkit.methods.prompting import builtin_class_names

        names = builtin_class_names(args.dataset)
        if names is None or args.root:
            from mlrkit.data import load_dataset

            names = load_dataset(args.dataset, args.root).class_names
    cfg = build_config(flags={"vl": {"model": args.vl_model, "templates": args.templates}})
    rep = vocabulary_check(load(args.vl_model).freeze(), names, templates_of(cfg))
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2))
    else:
        print(("PASS: " if rep.passed else "FAIL: ") + rep.message())
        print("closest pairs: " + ", ".join(f"{a}/{b} {c:.4f}" for a, b, c in rep.closest_pairs))
    return 0 if rep.passed else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from mlrkit.engine.demo import run_demo

    losses = [s for s in args.losses.split(",") if s] or None
    seeds = [int(s) for s in args.seeds.split(",") if s]
    run_demo(Path(args.out), datasets=args.datasets.split(","), losses=losses, seeds=seeds, jobs=args.jobs)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mlrkit.bench import run_bench

    run_bench(args.what, args)
    return 0


def cmd_vl_pretrain(args: argparse.Namespace) -> int:
    from mlrkit.engine.loop import AMP_CHOICES, LoopRun, join_processes
    from mlrkit.vl.pretraining import (
        BUILTIN_TRAINED_ON,
        HELDOUT_TRAINED_ON,
        load_raw_checkpoint,
        pretrain_mosaic_clip,
        save_pretrained,
    )

    init_payload = load_raw_checkpoint(args.init) if args.init else None  # read safely before any training
    device, env = join_processes(args.device)
    if device.type == "cpu":
        command_device(args)  # the thread policy
    options = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   eval_every=args.eval_every, init=str(Path(args.init).resolve()) if args.init else None,
                   subset_prob=args.subset_prob, multi_positive=args.multi_positive,
                   heldout_source=str(Path(args.heldout_source).resolve()) if args.heldout_source else None,
                   heldout_mosaics_count=args.heldout_mosaics, amp=AMP_CHOICES[args.amp], ema=args.ema,
                   log_every=args.log_every)
    run = LoopRun(loop_run_dir(args), {**options, "out": str(Path(args.out).resolve())}, resume=args.resume,
                  command="mlrkit vl pretrain", resume_may_change=("time_limit_s",), env=env)
    done = run.finished_results()
    if done is not None:
        print(json.dumps(done))
        return 0
    model, config, result, history = pretrain_mosaic_clip(
        **options, time_limit_s=None if args.time_limit is None else 60 * args.time_limit, device=str(device),
        run=run, checkpoint_every_s=args.checkpoint_every)
    if args.heldout_source:
        trained_on = HELDOUT_TRAINED_ON.format(n=args.heldout_mosaics, seed=args.seed)
    else:
        trained_on = init_payload.get("trained_on", BUILTIN_TRAINED_ON) if init_payload else BUILTIN_TRAINED_ON
    summary = {"out": args.out, "steps": result.steps, "seconds": round(result.seconds, 1),
               "zeroshot_test_map": result.zeroshot_map}
    try:
        if env.is_main:
            save_pretrained(model, config, args.out, result=result, history=history, command=sys.argv,
                            seed=args.seed, init_payload=init_payload, trained_on=trained_on)
            print(json.dumps(summary))
        if result.steps == args.steps:  # stopped by --time-limit: last.pt stays, --resume continues
            run.finish(summary)
    finally:
        run.release()
    return 0


def warn_vocabulary(vl, names, templates) -> dict:
    """The VL-vocabulary check before a command builds on class-name text; a failure is a loud warning."""
    from mlrkit.vl.vocabulary import vocabulary_check

    rep = vocabulary_check(vl, list(names), tuple(templates))
    if not rep.passed:
        print(f"WARNING: {rep.message()}", file=sys.stderr)
    return rep.as_dict()


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from mlrkit.data import Split, load_dataset
    from mlrkit.errors import MlrkitError
    from mlrkit.features import FeatureStore
    from mlrkit.labels import make_observed
    from mlrkit.vl import load_frozen
    from mlrkit.vl.model import prompt_templates
    from mlrkit.vl.pseudo_labels import PseudoLabels, compute_vl_pseudo_labels, ids_sha256, pseudo_label_quality

    templates = prompt_templates(args.templates)
    ds = load_dataset(args.dataset, args.root)
    split: Split = ds.trainval if args.split == "trainval" else ds.test
    if split.images is None:
        raise MlrkitError(f"dataset {ds.name!r} has no images: pseudo-labels need a VL image encoder")
    device = command_device(args)
    vl = load_frozen(args.vl_model, seed=args.seed, device=device)
    warn_vocabulary(vl, ds.class_names, templates)
    labels = compute_vl_pseudo_labels(vl, split.images, ds.class_names, templates=templates, tau=args.tau,
                                      theta=args.theta, delta=args.delta, store=FeatureStore(), seed=args.seed,
                                      device=device, progress=True,
                                      desc=f"{args.vl_model} features")
    quality = {"all": pseudo_label_quality(labels, split.targets)}
    if args.labels:
        obs = make_observed(split.targets, args.labels, args.seed, known=split.known)
        quality["unknown_in_observed"] = pseudo_label_quality(labels, split.targets, obs)
    pl = PseudoLabels(labels=labels, vl_model=args.vl_model, tau=args.tau, theta=args.theta, delta=args.delta,
                      templates=args.templates, dataset=ds.name, split=args.split, ids_sha256=ids_sha256(split.ids),
                      quality=quality)
    print(json.dumps({"dataset": ds.name, "split": args.split, "n_images": len(split), "quality": quality,
                      "sha256": pl.sha256}, indent=2))
    if args.out:
        print(f"wrote {pl.save(args.out)}")
    return 0


def cmd_extract_features(args: argparse.Namespace) -> int:
    from mlrkit.config import build_config
    from mlrkit.data import load_dataset
    from mlrkit.engine import feature_source
    from mlrkit.errors import ConfigError, MlrkitError
    from mlrkit.features import FeatureStore

    if args.dense and (args.out or args.l2_normalize or not args.vl_model):
        raise ConfigError("--dense fills the feature cache with a VL model's region features only: it takes "
                          "--vl-model, and no --out or --l2-normalize (features files hold pooled features)")
    if args.vl_model and args.set:
        raise ConfigError(f"--set {args.set[0]}: --set configures a --backbone; a VL model is named by its spec alone")
    ds = load_dataset(args.dataset, args.root)
    if not ds.has_images:
        raise MlrkitError(f"dataset {ds.name!r} has no images to encode")
    splits = {"train": ds.trainval, "test": ds.test}
    device = command_device(args)
    if args.dense:
        from mlrkit.vl import load_frozen
        from mlrkit.vl.features import vl_image_features

        store = FeatureStore()
        model = load_frozen(args.vl_model, seed=args.seed, device=device)
        out = {name: vl_image_features(model, split.images, image_size=args.image_size, dense=True, store=store,
                                       batch_size=args.batch_size, seed=args.seed, device=device,
                                       desc=f"{args.vl_model} ({name})")
               for name, split in splits.items()}
    else:
        if args.vl_model:
            source = feature_source.vl_source(args.vl_model, seed=args.seed, image_size=args.image_size,
                                              l2_normalize=args.l2_normalize)
            store = FeatureStore()
        else:
            flags = {"seed": args.seed, "model": {"name": args.backbone},
                     "data": {"image_size": args.image_size} if args.image_size else {},
                     "train": {"batch_size": args.batch_size}}
            cfg = build_config(flags=flags, sets=args.set)
            source = feature_source.backbone_source(cfg, l2_normalize=args.l2_normalize)
            store = FeatureStore(cfg.section("features").cache_dir)
        # the identity (weights hash, transform) is what predict/export check when they encode new images
        source.update(feature_source.extract(source, splits, device=device, batch_size=args.batch_size,
                                             cache_dir=str(store.root), check=False))
        out = {name: split.features for name, split in splits.items()}
        source["dim"] = int(out["train"].shape[1])
    for name, arr in out.items():
        print(f"{name}: {tuple(arr.shape)} features cached under {store.root}")
    if args.out:
        np.savez(args.out, X_train=np.asarray(out["train"], np.float32), Y_train=ds.trainval.targets,
                 X_test=np.asarray(out["test"], np.float32), Y_test=ds.test.targets,
                 class_names=np.array(ds.class_names), feature_source=np.array(json.dumps(source)))
        print(f"wrote {args.out} (use it as --dataset features:{args.out}; it records its encoder, "
              f"{feature_source.describe_source(source)}, so runs on it also predict from images)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import copy

    from mlrkit.config import build_config
    from mlrkit.engine.sweep import format_table, is_recipe, parse_labels_list, run_sweep, write_tables
    from mlrkit.errors import ConfigError

    if not args.out:
        raise ConfigError("sweep needs --out DIR (one run directory per method and label proportion inside)")
    if args.resume:
        raise ConfigError("sweep resumes by itself (finished runs are reused, interrupted ones resumed): drop --resume")
    base = build_config(args.config, {"method": {"name": args.method} if args.method else None}, args.set)
    methods = [m.strip() for m in (args.methods or base.method.name).split(",") if m.strip()]
    labels = parse_labels_list(args.labels or base.labels.protocol)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed if args.seed is not None
                                                                          else base.seed]

    def make_config(method: str, lab: str, seed: int):
        ns = copy.copy(args)
        if is_recipe(method):
            ns.config, ns.method = method, None
        else:
            ns.method = method
        ns.labels, ns.seed, ns.out, ns.resume = lab, seed, None, False
        return train_config_from_args(ns)

    runs = run_sweep(make_config, methods, labels, seeds, args.out, quiet=args.quiet,
                     log=(lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    table = write_tables(runs, args.out)
    print(format_table(table))
    print(f"(test mAP %, wrote {Path(args.out) / 'sweep.csv'} and sweep.md)")
    return 0


def cmd_analyze_prompts(args: argparse.Namespace) -> int:
    from mlrkit.analysis.prompts import format_report, prompt_similarity
    from mlrkit.methods.prompting import builtin_class_names
    from mlrkit.utils import write_json
    from mlrkit.vl import load

    if args.templates and args.protocol != "templates":
        from mlrkit.errors import ConfigError

        raise ConfigError(f"--templates {args.templates} is read by --protocol templates only (got --protocol "
                          f"{args.protocol})")
    names = builtin_class_names(args.dataset)
    if names is None or args.root:
        from mlrkit.data import load_dataset

        names = load_dataset(args.dataset, args.root).class_names
    if args.protocol == "templates":
        from mlrkit.analysis.prompts import format_template_report, load_template_pairs, template_similarity

        list_name, pairs = load_template_pairs(args.templates)  # a bad file fails before the model is built
    vl = load(args.vl_model, seed=args.seed, device=command_device(args))
    if args.protocol == "templates":
        rep = template_similarity(vl, names, pairs=pairs, name=list_name)
        text = format_template_report(rep)
    else:
        rep = prompt_similarity(vl, names, positive=args.positive, negative=args.negative, reference=args.reference)
        text = format_report(rep)
    rep["dataset"] = args.dataset
    print(text)
    if args.json:
        write_json(args.json, rep)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from mlrkit.analysis.explain import explain_images, format_report

    classes = [c for c in args.classes.split(",") if c.strip()] if args.classes else None
    report = explain_images(args.run, args.images, classes=classes, top_k=args.top_k, out_dir=args.out,
                            alpha=args.alpha, device=args.device)
    print(format_report(report))
    print(f"wrote {Path(args.out) / 'scores.json'}")
    return 0


def cmd_analyze_pointing(args: argparse.Namespace) -> int:
    from mlrkit.analysis.pointing import format_pointing, pointing_of_run

    results = {r: pointing_of_run(r, split=args.split, limit=args.limit, alpha=args.alpha) for r in args.runs}
    print(format_pointing(results))
    print("chance: a uniformly random point; point(+B): arg-max of the upsampled CAM (with BoostLU) in a tile of "
          "the class; on/off-obj: mean CAM in the class's tiles / the other tiles (positives); absent: mean CAM "
          "of absent classes")
    if args.json:
        from mlrkit.utils import write_json

        write_json(args.json, {r: res.as_dict() for r, res in results.items()})
    return 0


def cmd_analyze_prior(args: argparse.Namespace) -> int:
    from mlrkit.analysis.prior import draw_prior, format_prior, prior_report
    from mlrkit.methods.prompting import builtin_class_names
    from mlrkit.utils import write_json
    from mlrkit.vl import load_frozen

    names = builtin_class_names(args.dataset)
    if names is None or args.root:
        from mlrkit.data import load_dataset

        names = load_dataset(args.dataset, args.root).class_names
    vl = load_frozen(args.vl_model, seed=args.seed, device=command_device(args))
    vocab = warn_vocabulary(vl, names, (args.template,))
    prior, rep = prior_report(vl, names, k=args.k, s=args.s, tau=args.tau, template=args.template, seed=args.seed)
    rep["dataset"] = args.dataset
    rep["vl_vocabulary"] = vocab
    title = f"{args.vl_model} on {args.dataset}: A* (K={rep['k']}, s={args.s}, tau'={args.tau})"
    if not vocab["passed"]:
        title += "\n(VL vocabulary check FAILED: the model cannot tell these classes apart)"
    path = draw_prior(prior.prior, names, args.out, title)
    print(format_prior(rep))
    print(f"wrote {path}")
    if args.json:
        write_json(args.json, rep)
    return 0


def cmd_vl_export(args: argparse.Namespace) -> int:
    from mlrkit.vl.pretraining import export_mosaic_clip

    meta = export_mosaic_clip(args.raw, args.out, name=args.name)
    size = Path(args.out).stat().st_size
    print(json.dumps({"out": args.out, "bytes": size, "zeroshot_test_map": meta["zeroshot_test_map"],
                      "phases": len(meta["phases"])}))
    return 0

