"""``mlrkit bench``: one entry point for every benchmark."""

from __future__ import annotations

import argparse
import json

from mlrkit.utils import write_json


def run_bench(what: str, args: argparse.Namespace) -> list[dict]:
    if what == "metrics":
        from mlrkit.bench.metrics import bench_metrics, format_table

        rows = bench_metrics()
    elif what == "losses":
        from mlrkit.bench.losses import bench_losses, format_table  # type: ignore[no-redef]

        rows = bench_losses(batch=args.batch or 256, classes=args.classes or 1000)
    elif what == "features":
        from mlrkit.bench.features import bench_features, format_table  # type: ignore[no-redef]

        rows = bench_features()
    elif what == "prompts":
        from mlrkit.bench.prompts import bench_prompts, format_table  # type: ignore[no-redef]

        rows = bench_prompts(vl_spec=args.vl_model, image_size=args.image_size or 224, n_images=args.images,
                             batch=args.batch or 16,
                             methods=[m for m in (args.methods or "dualcoop,positivecoop,negativecoop,baseline")
                                      .split(",") if m],
                             repeats=args.repeats or 2)
    elif what == "boostlu":
        from mlrkit.bench.boostlu import bench_boostlu, format_table  # type: ignore[no-redef]

        rows = bench_boostlu(batch=args.batch or 2, image_size=args.image_size or 448, classes=args.classes or 80,
                             repeats=args.repeats or 10, threads=args.threads)
    elif what == "boostlu-ablation":
        from mlrkit.bench.boostlu import format_table, run_boostlu_ablation  # type: ignore[no-redef]

        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        over = {"train": {"epochs": args.epochs}} if args.epochs else None
        rows = run_boostlu_ablation(args.out, seeds, overrides=over, threads=args.threads, quiet=False)
    elif what == "scpnet":
        from mlrkit.bench.scpnet import bench_scpnet, format_table  # type: ignore[no-redef]

        rows = bench_scpnet(vl_spec=args.vl_model, image_size=args.image_size or 224, batch=args.batch or 8,
                            classes=args.classes or 80, repeats=args.repeats or 5, threads=args.threads)
    elif what in ("throughput", "classes"):
        from mlrkit.bench.throughput import bench_classes, bench_throughput, format_table  # type: ignore[no-redef]

        methods = [m for m in (args.methods or "").split(",") if m] or None
        if what == "throughput":
            rows = bench_throughput(methods, classes=args.classes or 80, batch=args.batch or 2,
                                    steps=args.repeats or 3)
        else:
            counts = tuple(int(c) for c in args.counts.split(",") if c.strip()) if args.counts else \
                bench_classes.__defaults__[1]
            rows = bench_classes(tuple(methods) if methods else bench_classes.__defaults__[0], counts,
                                 batch=args.batch or 2, steps=args.repeats or 1, timeout=args.timeout,
                                 warmup=not args.no_warmup, text_chunk=args.text_chunk)
    elif what == "allocator":
        from mlrkit.bench.allocator import bench_allocator, format_table  # type: ignore[no-redef]

        methods = [m for m in (args.methods or "").split(",") if m] or ["dualcoop"]
        rows = [bench_allocator(m, classes=args.classes or 312, rounds=args.repeats or 2, batch=args.batch or 2,
                                timeout=args.timeout) for m in methods]
    elif what == "loop":
        from mlrkit.bench.speed import bench_loop
        from mlrkit.bench.speed import format_loop as format_table  # type: ignore[no-redef]

        workloads = tuple(m for m in (args.methods or "mlp,cnn").split(",") if m)
        rows = bench_loop(workloads, repeats=args.repeats or 3, epochs=args.epochs, limit=args.limit)
    elif what == "loader":
        from mlrkit.bench.speed import bench_loader
        from mlrkit.bench.speed import format_loader as format_table  # type: ignore[no-redef]

        sizes = (args.image_size,) if args.image_size else (224, 448)
        rows = bench_loader(sizes, n_images=args.images, model=args.model or "resnet50", batch=args.batch or 8,
                            steps=args.repeats or 3, device=args.device)
    elif what == "gpu":
        from mlrkit.bench.speed import bench_gpu, format_gpu

        methods = [m for m in (args.methods or "").split(",") if m] or None
        res = bench_gpu(smoke=args.smoke, methods=methods, batch=args.batch or 32, steps=args.repeats or 10,
                        device=args.device)
        print(format_gpu(res))
        if getattr(args, "json", None):
            write_json(args.json, res)
        return res["rows"]
    elif what == "demo":
        from mlrkit.bench.demo_time import bench_demo, format_demo

        res = bench_demo(repeats=args.repeats or 3, busy=args.busy, smoke=args.smoke)
        print(format_demo(res))
        if getattr(args, "json", None):
            write_json(args.json, res)
        return res["runs"]
    else:  # argparse restricts the choices
        raise ValueError(what)
    print(format_table(rows))
    if getattr(args, "json", None):
        write_json(args.json, rows)
    return rows


__all__ = ["run_bench", "json"]
