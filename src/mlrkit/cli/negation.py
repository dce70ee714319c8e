"""``mlrkit negation …``: negated captions, NegationCLIP fine-tuning, negation benchmarks.

Registered by :func:`register_negation` (called from ``mlrkit.cli.commands.register``); the
library itself lives in :mod:`mlrkit.negation`. Each
sub-command accepts ``--config RECIPE.yaml``: the recipe's section named after the sub-command
(``captions:``, ``finetune:``, ``build-benchmark:``, ``eval:``) sets flag values (keys are the flag
names with ``_`` or ``-``); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlrkit.cli.common import (
    DEVICE_HELP,
    LayeredFlags,
    PlainFormatter,
    add_command,
    add_loop_arguments,
    command_device,
    loop_run_dir,
)
from mlrkit.errors import ConfigError, MlrkitError


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Every flag of the sub-command set from its default, the ``--config`` recipe's section, the command line."""
    return args.layered_flags.resolve(args)


def _add_llm_flags(f: LayeredFlags) -> None:
    f.add("--llm-config", help="YAML with base_url, model, timeout, max_retries... "
          "(configs/negation/llm.yaml); env MLRKIT_LLM_BASE_URL / MLRKIT_LLM_MODEL / MLRKIT_LLM_API_KEY also work")
    f.add("--llm-base-url", help="e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:8080/v1 (llama.cpp)")
    f.add("--llm-model", help="model name served at --llm-base-url")
    f.add("--mllm-model", help="multimodal model for verify=mllm (same server; default --llm-model)")
    f.add("--llm-timeout", type=float, help="seconds per request attempt")
    f.add("--llm-retries", type=int, help="retries per request (exponential back-off)")


def register_negation(sub: Any) -> None:
    """Add the ``negation`` command group to the top-level sub-parsers."""
    grp = sub.add_parser(
        "negation", help="negation-aware CLIP (NegationCLIP): negated captions, fine-tuning, benchmarks",
        description="Negation-aware CLIP (Park et al., 'Know No Better', 2025): negated captions, text-encoder "
        "fine-tuning, negation benchmarks. See docs/negation.md.",
        epilog="examples:\n"
        "  mlrkit negation captions --config configs/negation/fashion-mosaic.yaml "
        "--out runs/negclip/neg-context.jsonl\n"
        "  mlrkit negation finetune --config configs/negation/fashion-mosaic.yaml "
        "--captions runs/negclip/neg-context.jsonl --out runs/negclip/mosaic-negclip.pt\n"
        "  mlrkit negation build-benchmark --dataset fashion-mosaic --out runs/negclip/fm-negref.json\n"
        "  mlrkit negation eval --vl-model mosaic-clip --vl-model openclip:custom@runs/negclip/mosaic-negclip.pt "
        "--benchmark runs/negclip/fm-negref.json --dataset fashion-mosaic",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    nsub = grp.add_subparsers(dest="negation_command", metavar="NEGATION_COMMAND")

    p = add_command(
        nsub, "captions",
        "negated captions: P1 (absent objects proposed from co-occurrence / at random / by an LLM, verified by the "
        "annotations or a multimodal LLM) and P2 (VQA 'no' answers) -> JSONL",
        "mlrkit negation captions --dataset fashion-mosaic --proposer context --per-image 2 --out neg-context.jsonl\n  "
        "mlrkit negation captions --dataset fashion-mosaic --proposer random --out neg-random.jsonl\n  "
        "mlrkit negation captions --vqa vqa_train.json --captions coco_caps.jsonl --out neg-p2.jsonl\n  "
        "mlrkit negation captions --dataset coco2014 --root /data/coco --captions coco_caps.jsonl --proposer llm "
        "--verify mllm --llm-base-url http://127.0.0.1:8000/v1 --llm-model llama-3-8b --mllm-model llava "
        "--out neg-llm.jsonl", cmd_captions, PlainFormatter)
    f = LayeredFlags(p, "captions")
    f.add("--dataset", help="dataset for P1 (annotations + captions), e.g. fashion-mosaic")
    f.add("--root", help="dataset directory")
    f.add("--split", choices=["trainval", "test"], default="trainval", help="images to caption")
    f.add("--limit", type=int, help="first N images of the split")
    f.add("--captions", help="JSON/JSONL of {image_id, caption} (P1 default: captions made from the labels, "
                   "as mosaic-clip's training captions; P2 --p2-form caption: the captions it augments)")
    f.add("--caption-rows", choices=["first", "all"], default="first",
          help="P1 with --captions: first = the first caption of each image (x --per-image); all = every caption "
          "of every image, one P1 attempt each (the reference code's loop over COCO's caption rows)")
    f.add("--proposer", choices=["context", "random", "llm", "llm-random"], default="context",
                   help="absent-object proposals: co-occurrence weighted (default), uniform (Rand-P1), LLM")
    f.add("--rewriter", choices=["template", "llm"], default="template", help="how the negation is written")
    f.add("--verify", choices=["annotations", "mllm"], default="annotations",
                   help="how LLM proposals that name no dataset class are verified absent")
    f.add("--per-image", type=int, default=1, help="negated captions per image")
    f.add("--max-absent", type=int, default=1, help="absent objects per negated caption")
    f.add("--subset-prob", type=float, default=0.0, help="captions made from the labels: probability of "
                   "naming a random non-empty subset of the present classes (as mosaic-clip's pre-training)")
    f.add("--context-fallback", choices=["skip", "random"], default="skip",
                   help="images whose present classes co-occur with no absent class: skip (counted) or random")
    f.add("--vqa", action="append", default=[], help="VQA JSON list of {image, question, answer} for P2")
    f.add("--p2-rewriter", choices=["template", "llm"], default="template", help="how P2 captions are rewritten")
    f.add("--p2-form", choices=["caption", "statement"], default="caption",
          help="P2 output: caption = the image's caption (--captions) augmented with the negated answer (the "
          "paper's P2); statement = the question rewritten into a standalone negated statement")
    f.add("--seed", type=int, default=0, help="seed of the caption sampling")
    f.add("--out", required=False, help="output JSONL (report: <out stem>.report.json)")
    _add_llm_flags(f)

    p = add_command(
        nsub, "finetune",
        "fine-tune a CLIP on (image, caption) pairs mixing original and negated captions (symmetric InfoNCE; text "
        "encoder only by default); validation split by image; saves an openclip:custom@ checkpoint",
        "mlrkit negation finetune --config configs/negation/fashion-mosaic.yaml --captions neg-context.jsonl "
        "--out runs/negclip/mosaic-negclip.pt\n  "
        "mlrkit negation finetune --vl-model mosaic-clip --dataset fashion-mosaic --captions neg-context.jsonl "
        "--lr 1e-6 --epochs 15 --out negclip.pt   # the paper's defaults\n  "
        "mlrkit train --config configs/prompting/fashion-mosaic-dualcoop.yaml --vl-model "
        "openclip:custom@runs/negclip/mosaic-negclip.pt --out runs/dualcoop-negclip   # use it in any method",
        cmd_finetune, PlainFormatter)
    f = LayeredFlags(p, "finetune")
    f.add("--vl-model", default="mosaic-clip", help="model to fine-tune (mlrkit list vl-backends)")
    f.add("--captions", help="negated-caption JSONL from `mlrkit negation captions`")
    f.add("--dataset", help="dataset holding the images the captions refer to")
    f.add("--root", help="dataset directory")
    f.add("--split", choices=["trainval", "test"], default="trainval", help="split whose captions train")
    f.add("--train", default="text", help="towers to train: text (default) or image,text")
    f.add("--lr", type=float, default=1e-6, help="AdamW learning rate (paper: 1e-6)")
    f.add("--epochs", type=int, default=15, help="epochs (paper: 15)")
    f.add("--batch-size", type=int, default=128, help="distinct images per batch")
    f.add("--rows-per-epoch", choices=["image", "all"], default="image",
          help="image: one row of each training image per epoch (batches of distinct images); all: every "
          "row once per epoch, as the reference's caption loader")
    f.add("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    f.add("--p-negated", type=float, default=0.5, help="probability that an image's text is its negated "
                   "caption rather than the original")
    f.add("--val-fraction", type=float, default=0.2, help="fraction of images held out (split by image)")
    f.add("--train-logit-scale", action="store_true", help="also train the temperature")
    f.add("--freeze-ln-final", action="store_true", help="keep the text tower's final LayerNorm frozen (the "
          "reference code's choice)")
    f.add("--multi-positive", action="store_true", help="a text's targets are all batch images it truly "
                   "describes (needs rows with 'mentioned' classes and a labelled dataset)")
    f.add("--max-steps", type=int, help="stop after N optimiser steps (smoke tests)")
    f.add("--time-limit", type=float, help="stop after this many minutes")
    f.add("--threads", type=int, help="torch CPU threads")
    f.add("--fp32", action="store_true", help="save fp32 weights (default fp16, as save_vl_checkpoint)")
    f.add("--seed", type=int, default=0, help="seed of initialisation and batches")
    f.add("--quiet", action="store_true", help="no progress bars")
    f.add("--out", help="checkpoint to write (.pt; + .json sidecar + .finetune.json history)")
    f.add("--device", default="auto", help=DEVICE_HELP)
    add_loop_arguments(p, "negclip.run", "epochs", add=f.add)

    p = add_command(
        nsub, "build-benchmark",
        "NegRefCOCOg-format referring benchmark with negation from a mosaic dataset's held-out images (cells = "
        "boxes): 'a {A} with no {B}' -> the region with A and without B, against regions holding A and B",
        "mlrkit negation build-benchmark --dataset fashion-mosaic --split test --out fm-negref.json", cmd_build,
        PlainFormatter)
    f = LayeredFlags(p, "build-benchmark")
    f.add("--dataset", default="fashion-mosaic")
    f.add("--root", help="dataset directory (datasets stored on disk)")
    f.add("--split", choices=["test", "trainval"], default="test", help="held-out test images by default")
    f.add("--per-image", type=int, default=1, help="items per image and kind")
    f.add("--kinds", default="negated,affirmative", help="negated and/or affirmative (control) items")
    f.add("--limit", type=int, help="first N images")
    f.add("--seed", type=int, default=0, help="seed of the benchmark sampling")
    f.add("--out", help="benchmark JSON to write")

    p = add_command(
        nsub, "eval",
        "negation benchmarks for one or more VL models: referring retrieval (NegRefCOCOg format or built from a "
        "mosaic dataset), caption retrieval vs negated distractors, zero-shot mAP of the original task",
        "mlrkit negation eval --vl-model mosaic-clip --vl-model openclip:custom@runs/negclip/mosaic-negclip.pt "
        "--dataset fashion-mosaic --json runs/negclip/eval.json\n  "
        "mlrkit negation eval --vl-model openclip:ViT-B-32@/models/ViT-B-32.pt --benchmark NegRefCOCOg.json "
        "--image-root /data/coco/train2014 --tasks referring", cmd_eval, PlainFormatter)
    f = LayeredFlags(p, "eval")
    f.add("--vl-model", action="append", default=[], help="VL model spec (repeat to compare models)")
    f.add("--benchmark", help="NegRefCOCOg-format JSON (default with a mosaic --dataset: built in memory)")
    f.add("--image-root", help="directory of the benchmark's image files (published NegRefCOCOg: COCO "
                   "train2014)")
    f.add("--dataset", help="dataset for the caption test, the zero-shot mAP and the images of a built "
                   "benchmark")
    f.add("--root", help="dataset directory (datasets stored on disk)")
    f.add("--tasks", default="referring,captions,zeroshot", help="comma-separated subset")
    f.add("--region-mode", choices=["crop", "mask"], help="default: the benchmark's region_mode, else crop")
    f.add("--fill", type=int, help="mask fill value (default: the benchmark's, else 0)")
    f.add("--limit", type=int, help="first N test images (caption test, built benchmark)")
    f.add("--seed", type=int, default=0, help="seed of built benchmarks/caption pairs and random weights")
    f.add("--threads", type=int, help="torch CPU threads")
    f.add("--json", help="write the results here")
    f.add("--device", default="auto", help=DEVICE_HELP)


# ---------------------------------------------------------------------------- handlers
def _llm_clients(args: argparse.Namespace, need_llm: bool, need_mllm: bool):
    from mlrkit.negation.llm import ChatClient, LLMConfig

    if not (need_llm or need_mllm):
        return None, None
    overrides = {"base_url": args.llm_base_url, "model": args.llm_model, "timeout": args.llm_timeout,
                 "max_retries": args.llm_retries}
    cfg = LLMConfig.resolve(args.llm_config, overrides)
    llm = ChatClient(cfg) if need_llm else None
    mllm = None
    if need_mllm:
        from dataclasses import replace

        mllm = ChatClient(replace(cfg, model=args.mllm_model or cfg.model, max_tokens=8))
    return llm, mllm


def _read_caption_lists(path: str) -> dict[str, list[str]]:
    """image_id -> its captions, in file order (JSON list / JSON lines of {image_id, caption}, or {id: caption})."""
    from mlrkit.errors import DataError

    text = Path(path).read_text()
    try:
        doc = json.loads(text)
        records = doc if isinstance(doc, list) else [{"image_id": k, "caption": v} for k, v in doc.items()]
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    out: dict[str, list[str]] = {}
    for n, r in enumerate(records):
        if not isinstance(r, dict) or "image_id" not in r or not isinstance(r.get("caption"), str):
            raise DataError(f"{path}: entry {n} is not {{image_id, caption}}: {str(r)[:100]}")
        out.setdefault(str(r["image_id"]), []).append(r["caption"])
    return out


def _report_path(out: str) -> Path:
    p = Path(out)
    return p.with_name(p.stem + ".report.json")


def cmd_captions(args: argparse.Namespace) -> int:
    from mlrkit.negation.captions import generate_p1, generate_p2, read_vqa, write_jsonl
    from mlrkit.utils import write_json

    args = apply_recipe(args)
    if not args.dataset and not args.vqa:
        raise ConfigError("give --dataset (P1) and/or --vqa FILE (P2)")
    if not args.out:
        raise ConfigError("--out FILE.jsonl is required")
    rows: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    cap_lists = _read_caption_lists(args.captions) if args.captions else None
    cap_map = {k: v[0] for k, v in cap_lists.items()} if cap_lists is not None else None
    if args.dataset:
        from mlrkit.data import load_dataset

        ds = load_dataset(args.dataset, args.root)
        sp = ds.trainval if args.split == "trainval" else ds.test
        n = len(sp) if args.limit is None else min(args.limit, len(sp))
        pos = list(range(n))  # the image of each caption P1 starts from
        captions = None
        if cap_lists is not None:
            missing = [i for i in sp.ids[:n] if i not in cap_lists]
            if missing:
                raise MlrkitError(f"{args.captions}: no caption for {len(missing)} images, e.g. {missing[:3]}")
            if args.caption_rows == "all":  # every caption of every image, as the reference's COCO loop
                pos = [i for i in range(n) for _ in cap_lists[sp.ids[i]]]
                captions = [c for i in range(n) for c in cap_lists[sp.ids[i]]]
            else:
                captions = [cap_lists[sp.ids[i]][0] for i in range(n)]
        elif args.caption_rows == "all":
            raise ConfigError("--caption-rows all needs --captions FILE (the captions to take every one of)")
        llm, mllm = _llm_clients(args, args.proposer.startswith("llm") or args.rewriter == "llm",
                                 args.verify == "mllm")
        targets = sp.targets[:n][pos]
        known = sp.known[:n][pos] if sp.known is not None else None
        p1, rep = generate_p1(
            class_names=ds.class_names, targets=targets, ids=[sp.ids[i] for i in pos], captions=captions,
            known=known, cooc_targets=ds.trainval.targets, proposer=args.proposer, rewriter=args.rewriter,
            verify=args.verify, per_image=args.per_image, max_absent=args.max_absent, seed=args.seed,
            subset_prob=args.subset_prob, context_fallback=None if args.context_fallback == "skip" else "random",
            llm=llm, mllm=mllm, image_fn=(lambda j: sp.images.load(pos[j])) if sp.images is not None else None)
        rows += p1
        reports.append({**rep.as_dict(), "dataset": ds.name, "split": args.split, "proposer": args.proposer,
                        "caption_rows": args.caption_rows})
    if args.vqa:
        llm, _ = _llm_clients(args, args.p2_rewriter == "llm", False)
        records = [r for path in args.vqa for r in read_vqa(path)]
        p2, rep = generate_p2(records, captions=cap_map, rewriter=args.p2_rewriter, llm=llm, form=args.p2_form,
                              seed=args.seed)
        rows += p2
        reports.append({**rep.as_dict(), "files": list(args.vqa), "p2_form": args.p2_form})
    if not rows:
        raise MlrkitError(f"no negated captions were produced: {json.dumps([r['counts'] for r in reports])}")
    write_jsonl(args.out, rows)
    report = {"out": args.out, "rows": len(rows), "reports": reports, "command": sys.argv}
    write_json(_report_path(args.out), report)
    for r in reports:
        print(f"{r['kind']}: {r['items']} items -> {r['rows']} rows; counts {r['counts']}"
              + (f"; llm {r['llm']}" if r.get("llm") else ""))
    print(f"wrote {args.out} ({len(rows)} rows) and {_report_path(args.out)}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from mlrkit.data import load_dataset
    from mlrkit.data.fashion_mosaic import file_sha256
    from mlrkit.engine.loop import AMP_CHOICES, LoopRun, join_processes
    from mlrkit.negation.captions import read_jsonl
    from mlrkit.negation.finetune import FinetuneConfig, finetune_negation, save_finetuned
    from mlrkit.utils import write_json
    from mlrkit.vl import load

    args = apply_recipe(args)
    for flag in ("captions", "dataset", "out"):
        if not getattr(args, flag):
            raise ConfigError(f"finetune needs --{flag}")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    rows = read_jsonl(args.captions)
    ds = load_dataset(args.dataset, args.root)
    sp = ds.trainval if args.split == "trainval" else ds.test
    if sp.images is None:
        raise MlrkitError(f"dataset {ds.name!r} has no images")
    towers = tuple(t.strip() for t in str(args.train).split(",") if t.strip())
    cfg = FinetuneConfig(train=towers, lr=float(args.lr), epochs=int(args.epochs), batch_size=int(args.batch_size),
                         weight_decay=float(args.weight_decay), p_negated=float(args.p_negated),
                         val_fraction=float(args.val_fraction), seed=int(args.seed),
                         train_logit_scale=bool(args.train_logit_scale),
                         freeze_ln_final=bool(args.freeze_ln_final), multi_positive=bool(args.multi_positive),
                         rows_per_epoch=str(getattr(args, "rows_per_epoch", "image")), max_steps=args.max_steps,
                         time_limit_s=None if args.time_limit is None else 60 * float(args.time_limit),
                         amp=AMP_CHOICES[args.amp])
    device, env = join_processes(args.device)
    settings = {**asdict(cfg), "train": list(cfg.train), "time_limit_s": None, "vl_model": args.vl_model,
                "captions": str(Path(args.captions).resolve()), "captions_sha256": file_sha256(args.captions),
                "dataset": ds.name, "root": args.root, "split": args.split, "out": str(Path(args.out).resolve())}
    run = LoopRun(loop_run_dir(args), settings, resume=args.resume, command="mlrkit negation finetune", env=env)
    done = run.finished_results()
    if done is not None:
        print(json.dumps(done))
        return 0
    try:
        model = load(args.vl_model, seed=args.seed, device=command_device(args) if device.type == "cpu" else device)
        result = finetune_negation(model, rows, sp.images, sp.ids, cfg, progress=not args.quiet, targets=sp.targets,
                                   class_names=ds.class_names, run=run,
                                   checkpoint_every_s=float(args.checkpoint_every))
        summary = {"out": args.out, "spec": f"openclip:custom@{args.out}", "best_epoch": result.best_epoch,
                   "best_val_loss": round(result.best_val_loss, 4), "steps": result.steps,
                   "seconds": result.seconds, "train_images": result.n_train_images,
                   "val_images": result.n_val_images}
        if env.is_main:
            path = save_finetuned(model, args.out, result, source_spec=args.vl_model, captions=str(args.captions),
                                  half=not args.fp32, extra={"dataset": ds.name, "split": args.split})
            hist = Path(args.out).with_name(Path(args.out).stem + ".finetune.json")
            write_json(hist, {**result.as_dict(with_ids=True), "command": sys.argv, "vl_model": args.vl_model,
                              "captions": args.captions, "dataset": ds.name})
            summary.update(out=path, spec=f"openclip:custom@{path}")
            print(json.dumps(summary))
        if result.history[-1]["epoch"] == cfg.epochs or cfg.max_steps is not None:  # a time limit: resumable
            run.finish(summary)
    finally:
        run.release()
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from mlrkit.data import load_dataset
    from mlrkit.negation.bench import build_mosaic_benchmark, save_referring

    args = apply_recipe(args)
    if not args.out:
        raise ConfigError("--out FILE.json is required")
    ds = load_dataset(args.dataset, args.root)
    kinds = [k.strip() for k in str(args.kinds).split(",") if k.strip()]
    header, items = build_mosaic_benchmark(ds, split=args.split, seed=args.seed, per_image=args.per_image,
                                           kinds=kinds, limit=args.limit)
    save_referring(args.out, header, items)
    counts = {k: sum(it.kind == k for it in items) for k in kinds}
    print(f"wrote {args.out}: {len(items)} items {counts} from {header['builder']['images']} {args.split} images")
    return 0


def _image_loader(header: dict[str, Any], args: argparse.Namespace, dataset: Any):
    if args.image_root:
        from mlrkit.data.base import PathImageSource

        root = Path(args.image_root)

        def load_file(name: str):
            return PathImageSource([root / name]).load(0)

        return load_file
    if dataset is None:
        raise ConfigError("the benchmark's images need --image-root DIR or --dataset NAME")
    where: dict[str, tuple[Any, int]] = {}
    for sp in (dataset.trainval, dataset.test):
        for k, i in enumerate(sp.ids):
            where.setdefault(str(i), (sp.images, k))

    def load_id(image_id: str):
        if image_id not in where:
            raise MlrkitError(f"benchmark image {image_id!r} is not an image id of dataset {dataset.name!r}")
        src, k = where[image_id]
        return src.load(k)

    return load_id


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation behind ``mlrkit negation eval`` (returns the results dict)."""
    import torch

    from mlrkit.data import load_dataset
    from mlrkit.negation import bench
    from mlrkit.vl import load

    if not args.vl_model:
        raise ConfigError("give at least one --vl-model")
    tasks = [t.strip() for t in str(args.tasks).split(",") if t.strip()]
    bad = [t for t in tasks if t not in ("referring", "captions", "zeroshot")]
    if bad:
        raise ConfigError(f"unknown tasks {bad} (referring, captions, zeroshot)")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    header: dict[str, Any] = {}
    items = None
    dataset_name = args.dataset
    if "referring" in tasks and args.benchmark:
        header, items = bench.load_referring(args.benchmark)
        dataset_name = dataset_name or (None if args.image_root else header.get("dataset"))
    ds = load_dataset(dataset_name, args.root) if dataset_name else None
    if "referring" in tasks and items is None:
        if ds is None:
            raise ConfigError("the referring task needs --benchmark FILE or a mosaic --dataset")
        header, items = bench.build_mosaic_benchmark(ds, split="test", seed=args.seed, limit=args.limit)
    if ("captions" in tasks or "zeroshot" in tasks) and ds is None:
        raise ConfigError("the captions and zeroshot tasks need --dataset")
    mode = args.region_mode or header.get("region_mode", "crop")
    fill = args.fill if args.fill is not None else int(header.get("fill", 0))
    results: dict[str, Any] = {"tasks": tasks, "benchmark": args.benchmark or (f"built from {ds.name} test"
                                                                               if items is not None and ds else None),
                               "region_mode": mode, "models": {}}
    loader = _image_loader(header, args, ds) if items is not None else None
    for spec in args.vl_model:
        model = load(spec, seed=args.seed, device=command_device(args)).eval()
        res: dict[str, Any] = {}
        if items is not None and loader is not None:
            res["referring"] = bench.evaluate_referring(model, items, loader, mode=mode, fill=fill)
        if "captions" in tasks and ds is not None:
            res["captions"] = bench.evaluate_caption_pairs(model, ds.test, ds.class_names, seed=args.seed,
                                                           limit=args.limit)
        if "zeroshot" in tasks and ds is not None:
            res["zeroshot_test_map"] = bench.zeroshot_map(model, ds.test, ds.class_names)
        results["models"][spec] = res
    return results


def format_eval(results: dict[str, Any]) -> str:
    """One row per model: referring (negated / affirmative), caption retrieval (per kind), zero-shot mAP (%)."""
    cols = ["referring", "ref:negated", "ref:affirmative", "cap:negated", "cap:affirmative", "zeroshot mAP"]
    lines = []
    width = max(len(s) for s in results["models"]) if results["models"] else 10
    lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>15}" for c in cols))

    def pct(x: float | None) -> str:
        return f"{100 * x:>15.2f}" if x is not None else f"{'-':>15}"

    for spec, r in results["models"].items():
        ref, cap = r.get("referring", {}), r.get("captions", {})
        vals = [ref.get("accuracy"), ref.get("per_kind", {}).get("negated", {}).get("accuracy"),
                ref.get("per_kind", {}).get("affirmative", {}).get("accuracy"),
                cap.get("per_kind", {}).get("negated", {}).get("accuracy"),
                cap.get("per_kind", {}).get("affirmative", {}).get("accuracy"), r.get("zeroshot_test_map")]
        lines.append(f"{spec:<{width}}  " + "  ".join(pct(v) for v in vals))
    any_ref = next((r["referring"] for r in results["models"].values() if "referring" in r), None)
    if any_ref:
        lines.append(f"(referring: {any_ref['total']} items, region mode {any_ref['mode']}, chance "
                     f"{100 * any_ref['chance']:.1f}%; accuracies and mAP in %)")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from mlrkit.utils import write_json

    args = apply_recipe(args)
    results = run_eval(args)
    print(format_eval(results))
    if args.json:
        write_json(args.json, {**results, "command": sys.argv})
        print(f"wrote {args.json}")
    return 0
