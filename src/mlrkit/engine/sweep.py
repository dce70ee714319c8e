"""``mlrkit sweep``: one or more methods over several label proportions, the papers' table.

DualCoOp (Sun et al. 2022) and PositiveCoOp (Rawlekar et al. 2025) report test mAP for known-label
proportions 10 %, 20 %, ..., 90 % (one column each) and their average. ``run_sweep`` trains every
(method, labels[, seed]) combination into ``OUT/<method>-<labels>[-s<seed>]/`` (a finished run is
reused, an interrupted one resumed) and ``write_tables`` writes ``sweep.csv`` (the table),
``sweep.md`` (the same in Markdown), ``sweep_runs.csv`` (one row per run) and ``sweep.json``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlrkit.errors import ConfigError


def parse_labels_list(text: str) -> list[str]:
    """``"partial:0.1,0.3,0.5"`` -> ``["partial:0.1", "partial:0.3", "partial:0.5"]``.

    Items are comma-separated; a bare number takes the protocol prefix of the item before it
    (``partial:0.1,0.5,single-positive`` works too).
    """
    out: list[str] = []
    prefix = None
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if re.fullmatch(r"[0-9]*\.?[0-9]+(e-?[0-9]+)?", item):
            if prefix is None:
                raise ConfigError(f"--labels {text!r}: {item!r} has no protocol before it (e.g. partial:{item})")
            item = f"{prefix}:{item}"
        elif ":" in item:
            prefix = item.split(":", 1)[0]
        else:
            prefix = None
        out.append(item)
    if not out:
        raise ConfigError(f"--labels {text!r} names no protocol")
    if len(set(out)) != len(out):
        raise ConfigError(f"--labels {text!r} repeats a protocol")
    return out


def column_name(labels: str) -> str:
    """The table's column header: ``partial:0.1`` -> ``10%``; other protocols as written."""
    m = re.fullmatch(r"partial:([0-9.eE-]+)", labels)
    if m:
        return f"{100 * float(m.group(1)):g}%"
    return labels


def run_name(method: str, labels: str, seed: int | None = None) -> str:
    """Directory name of one run: ``dualcoop-partial0.1`` (``-s<seed>`` when several seeds)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "", labels.replace(":", ""))
    name = f"{method}-{safe}"
    return f"{name}-s{seed}" if seed is not None else name


@dataclass
class SweepRun:
    """One finished run of a sweep."""

    method: str
    labels: str
    seed: int
    out: str
    test_map: float
    val_map: float
    best_epoch: int
    extra: dict[str, Any] = field(default_factory=dict)
    config_sha256: str = ""  # of the full resolved configuration (without ``out``): what the run is keyed by


def config_key(cfg: Any) -> str:
    """SHA-256 of a RunConfig's full resolved configuration, ``out`` left out (the same run anywhere)."""
    import hashlib

    d = {k: v for k, v in cfg.to_dict().items() if k != "out"}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def run_sweep(
    make_config: Callable[[str, str, int], Any],
    methods: Sequence[str],
    labels: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    quiet: bool = True,
    log: Callable[[str], None] = print,
) -> list[SweepRun]:
    """Train every (method, labels, seed); ``make_config(method, labels, seed)`` gives its RunConfig.

    ``methods`` are method names or recipe files (rows are named by the recipe's method, or by the
    file name when two recipes use the same method). Each run goes to ``out/<row>-<labels>``. A
    finished run there (``results.json``) is reused only when its saved configuration equals the one
    asked for, all keys compared; one of another configuration is an error, never reused or
    overwritten. A run that was set up or interrupted (``config.yaml``) is resumed.
    """
    from mlrkit.engine.rundir import config_diff, saved_config
    from mlrkit.engine.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[SweepRun] = []
    many_seeds = len(seeds) > 1
    total = len(methods) * len(labels) * len(seeds)
    rows = method_labels(methods)
    k = 0
    for method, row in zip(methods, rows):
        for lab in labels:
            for seed in seeds:
                k += 1
                run_dir = out / run_name(row, lab, seed if many_seeds else None)
                cfg = make_config(method, lab, seed)
                cfg.out = str(run_dir)
                res_path = run_dir / "results.json"
                if res_path.is_file():
                    diff = config_diff(saved_config(run_dir, resuming=False).to_dict(), cfg.to_dict())
                    if diff:
                        raise ConfigError(f"{run_dir} holds a finished run of another configuration "
                                          f"({'; '.join(diff[:4])}); a sweep never reuses it: choose another --out "
                                          "or move that run away")
                    res = json.loads(res_path.read_text())
                    log(f"[{k}/{total}] {run_dir.name}: reusing finished run (same configuration)")
                else:
                    log(f"[{k}/{total}] {run_dir.name}: training")
                    res = train(cfg, resume=(run_dir / "config.yaml").is_file(), quiet=quiet)
                runs.append(SweepRun(row, lab, int(seed), str(run_dir), float(res["test_map"]),
                                     float(res["val_map"]), int(res["best_epoch"]), config_sha256=config_key(cfg)))
                log(f"    test mAP {100 * res['test_map']:.2f}")
    return runs


def merge_runs(previous: Sequence[SweepRun], runs: Sequence[SweepRun]) -> list[SweepRun]:
    """Rows of earlier sweeps into the same directory, then this sweep's: one row per run directory
    (this sweep's row wins for a directory it ran), nothing dropped."""
    mine = {r.out for r in runs}
    return [r for r in previous if r.out not in mine] + list(runs)


def read_runs(out: str | Path) -> list[SweepRun]:
    """The runs recorded in ``out/sweep.json`` by earlier sweeps (none when there is no such file)."""
    path = Path(out) / "sweep.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())["runs"]
        return [SweepRun(**r) for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a sweep record ({e}); move it away to start a new table") from None


def is_recipe(method: str) -> bool:
    """Whether a ``--methods`` entry is a recipe file rather than a method name."""
    return method.endswith((".yaml", ".yml"))


def method_labels(methods: Sequence[str]) -> list[str]:
    """Row names: the method (a recipe's ``method.name``); recipe file stems when names would repeat."""
    from mlrkit.config import build_config

    names = [build_config(m).method.name if is_recipe(m) else m for m in methods]
    if len(set(names)) == len(names):
        return names
    return [Path(m).stem if is_recipe(m) else m for m in methods]


def sweep_table(runs: Sequence[SweepRun], metric: str = "test_map") -> dict[str, Any]:
    """Rows = methods, columns = label protocols (in first-seen order), cells = mean over seeds (in %)."""
    methods = list(dict.fromkeys(r.method for r in runs))
    labels = list(dict.fromkeys(r.labels for r in runs))
    cells: dict[str, dict[str, float | None]] = {}
    for m in methods:
        row: dict[str, float | None] = {}
        for lab in labels:
            vals = [getattr(r, metric) for r in runs if r.method == m and r.labels == lab]
            row[lab] = 100.0 * sum(vals) / len(vals) if vals else None
        cells[m] = row
    avg = {m: (sum(v for v in row.values() if v is not None) / len(row)
               if row and all(v is not None for v in row.values()) else None) for m, row in cells.items()}
    return {"metric": metric, "methods": methods, "labels": labels, "columns": [column_name(x) for x in labels],
            "cells": cells, "average": avg, "seeds": sorted({r.seed for r in runs})}


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_table(table: dict[str, Any], digits: int = 1) -> str:
    """Plain-text table: one row per method, one column per proportion, then the average."""
    head = ["method", *table["columns"], "Avg."]
    rows = [[m, *(_fmt(table["cells"][m][lab], digits) for lab in table["labels"]),
             _fmt(table["average"][m], digits)] for m in table["methods"]]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def format_markdown(table: dict[str, Any], digits: int = 1) -> str:
    """The same table in Markdown (test mAP in %, mean over the seeds listed under it)."""
    head = ["method", *table["columns"], "Avg."]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for m in table["methods"]:
        cells = [_fmt(table["cells"][m][lab], digits) for lab in table["labels"]]
        lines.append("| " + " | ".join([m, *cells, _fmt(table["average"][m], digits)]) + " |")
    seeds = ", ".join(map(str, table["seeds"]))
    lines.append("")
    lines.append(f"{table['metric'].replace('_', ' ')} (%), seeds: {seeds}")
    return "\n".join(lines)


def write_tables(runs: Sequence[SweepRun], out: str | Path, digits: int = 1) -> dict[str, Any]:
    """Write ``sweep.csv``, ``sweep.md``, ``sweep_runs.csv`` and ``sweep.json`` into ``out``; return the table.

    Rows recorded there by earlier sweeps are kept (:func:`merge_runs`): the table covers every run.
    """
    from mlrkit.utils import atomic_write, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = merge_runs(read_runs(out), runs)
    table = sweep_table(runs)
    with atomic_write(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", *table["columns"], "Avg."])
        for m in table["methods"]:
            w.writerow([m, *(_fmt(table["cells"][m][lab], 2) for lab in table["labels"]),
                        _fmt(table["average"][m], 2)])
    with atomic_write(out / "sweep.md") as tmp:
        tmp.write_text(format_markdown(table, digits) + "\n")
    with atomic_write(out / "sweep_runs.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "labels", "seed", "test_map", "val_map", "best_epoch", "out", "config_sha256"])
        for r in runs:
            w.writerow([r.method, r.labels, r.seed, f"{r.test_map:.6f}", f"{r.val_map:.6f}", r.best_epoch, r.out,
                        r.config_sha256])
    write_json(out / "sweep.json", {"table": table, "runs": [r.__dict__ for r in runs]})
    return table
