"""``mlrkit compare RUN...``: finished runs side by side.

A table (one row per run: dataset, method, loss, labels, seed, best epoch, validation and test
mAP, test CF1/OF1 at the run's thresholds, ECE before/after calibration, temperature) and two
plots: the learning curves (validation mAP and training loss per epoch, from ``metrics.jsonl``)
and the test AP of every class (grouped bars, from ``results.json``). Metrics are fractions in
the JSON, percentages in the table and plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.errors import MlrkitError


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """What compare needs from a finished run directory."""
    d = Path(run_dir)
    res_path = d / "results.json"
    if not res_path.is_file():
        raise MlrkitError(f"{d}: no results.json (not a finished run)")
    res = json.loads(res_path.read_text())
    curve = []
    if (d / "metrics.jsonl").is_file():
        curve = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cal = res.get("calibration", {})
    tm = res.get("test_metrics", {})
    return {
        "run": d.name, "path": str(d), "dataset": res.get("dataset"), "method": res.get("method"),
        "loss": res.get("loss"), "labels": res.get("labels"), "seed": res.get("seed"),
        "best_epoch": res.get("best_epoch"), "val_map": res.get("val_map"), "test_map": res.get("test_map"),
        "test_CF1": tm.get("CF1"), "test_OF1": tm.get("OF1"),
        "ece_before": cal.get("ece", {}).get("test_before"), "ece_after": cal.get("ece", {}).get("test_after"),
        "temperature": cal.get("temperature"), "per_class_ap": res.get("per_class_ap", {}), "curve": curve,
    }


COLUMNS = (("run", "run"), ("method", "method"), ("loss", "loss"), ("labels", "labels"), ("best_epoch", "epoch"),
           ("val_map", "val mAP"), ("test_map", "test mAP"), ("test_CF1", "CF1"), ("test_OF1", "OF1"),
           ("ece_before", "ECE raw"), ("ece_after", "ECE cal"), ("temperature", "T"))
PERCENT = {"val_map", "test_map", "test_CF1", "test_OF1", "ece_before", "ece_after"}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (metrics in %)."""
    def cell(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if key in PERCENT:
            return f"{100 * float(v):.2f}"
        if key == "temperature":
            return f"{float(v):.3g}"
        return str(v)

    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        ep = [c["epoch"] for c in r["curve"]]
        a.plot(ep, [100 * c["val_map"] for c in r["curve"]], marker="o", ms=3, label=r["run"])
        b.plot(ep, [c["train_loss"] for c in r["curve"]], marker="o", ms=3, label=r["run"])
    a.set(xlabel="epoch", ylabel="validation mAP (%)", title="learning curves: validation mAP")
    b.set(xlabel="epoch", ylabel="training loss", title="training loss (each run's own loss)")
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_class(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(c for r in rows for c in r["per_class_ap"]))
    if not classes:
        raise MlrkitError("no per-class AP in the runs' results.json")
    x = np.arange(len(classes))
    w = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(classes) * max(1, len(rows)) ** 0.5 + 2), 4))
    for k, r in enumerate(rows):
        vals = [r["per_class_ap"].get(c) for c in classes]
        ax.bar(x + (k - (len(rows) - 1) / 2) * w, [100 * v if v is not None else 0 for v in vals], w, label=r["run"])
    ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="test AP (%)", title="test AP per class")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_runs(runs: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Write ``compare.md``, ``compare.json``, ``curves.png`` and ``per_class_ap.png`` into ``out``."""
    if not runs:
        raise MlrkitError("compare needs at least one run directory")
    rows = [read_run(r) for r in runs]
    names = [r["run"] for r in rows]
    if len(set(names)) < len(names):  # same directory names from different parents: use the paths
        for r in rows:
            r["run"] = r["path"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    (out / "compare.md").write_text(table + "\n\n(metrics in %; ECE of the test probabilities before/after the "
                                    "run's temperature scaling; CF1/OF1 at the run's per-class thresholds)\n")
    (out / "compare.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "curve"} for r in rows],
                                                 indent=2) + "\n")
    curves = plot_curves(rows, out / "curves.png")
    per_class = plot_per_class(rows, out / "per_class_ap.png")
    return {"table": table, "files": [str(out / "compare.md"), str(out / "compare.json"), str(curves),
                                      str(per_class)]}
