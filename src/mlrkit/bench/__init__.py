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

        rows = bench_losses(batch=args.batch, classes=args.classes)
    else:  # argparse restricts the choices
        raise ValueError(what)
    print(format_table(rows))
    if getattr(args, "json", None):
        write_json(args.json, rows)
    return rows


__all__ = ["run_bench", "json"]
