"""BoostLU benchmarks: inference cost (``mlrkit bench boostlu``) and the ablation table on
fashion-mosaic (``mlrkit bench boostlu-ablation``).

* :func:`bench_boostlu` times a CAM classifier's forward pass (ResNet-50, random weights, 448 px by
  default) with and without BoostLU, interleaved in one process (the order alternates every
  repeat, so drifting machine load hits both alike), and reports medians and their ratio, plus
  the median time of the BoostLU operation alone on a CAM of the same shape.
* :func:`run_boostlu_ablation` trains the eight combinations of {BoostLU in training} x {BoostLU at
  inference} x {AN, LL-R} (the all-off AN baseline plus the seven rows that switch something on)
  with the small-CNN recipe ``configs/boostlu/fashion-mosaic-base.yaml`` on single-positive labels,
  optionally a full-label reference, for one or more seeds. Every run is a normal run directory
  (``OUT/seed<k>/<row>``); a finished one is reused, so an interrupted ablation continues. For each
  run it also scores the best checkpoint with the *other* inference setting (BoostLU switched at
  inference only, same weights).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.config import deep_merge

#: (row name, loss, BoostLU in training, BoostLU at inference, description)
ABLATION_ROWS: list[tuple[str, str, bool, bool, str]] = [
    ("an", "an", False, False, "AN (no BoostLU, no LL-R)"),
    ("infer", "an", False, True, "BoostLU at inference"),
    ("train", "an", True, False, "BoostLU in training"),
    ("train-infer", "an", True, True, "BoostLU in training + inference"),
    ("llr", "ll_r", False, False, "LL-R"),
    ("llr-infer", "ll_r", False, True, "LL-R + BoostLU at inference"),
    ("llr-train", "ll_r", True, False, "LL-R + BoostLU in training"),
    ("llr-train-infer", "ll_r", True, True, "LL-R + BoostLU in training + inference"),
]
FULL_ROW = ("full", "bce", False, False, "full labels, BCE (reference)")

#: the content of configs/boostlu/fashion-mosaic-base.yaml (a test keeps them equal)
FASHION_MOSAIC_BASE: dict[str, Any] = {
    "data": {"name": "fashion-mosaic", "image_size": 56, "limit_train": 3000, "options": {"limit_test": 1000}},
    "labels": {"protocol": "single-positive"},
    "method": {"name": "cam", "flip": True},
    "model": {"name": "smallcnn", "width": 16},
    "loss": {"name": "an"},
    "train": {"epochs": 5, "batch_size": 64, "lr": 2.0e-3, "optimizer": "adam"},
    "boostlu": {"train": False, "infer": False, "alpha": 5.0},
}


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@torch.no_grad()
def bench_boostlu(batch: int = 2, image_size: int = 448, classes: int = 80, repeats: int = 10, warmup: int = 2,
                  backbone: str = "resnet50", alpha: float = 5.0, threads: int | None = None) -> list[dict[str, Any]]:
    """Forward time of a CAM classifier with and without BoostLU at inference (random weights, CPU)."""
    from mlrkit.models.backbones import build_backbone
    from mlrkit.models.cam import CAMClassifier, boostlu

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = CAMClassifier(build_backbone(backbone, image_size=image_size), classes, alpha=alpha).eval()
    x = torch.randn(batch, 3, image_size, image_size)
    for _ in range(warmup):
        model(x)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for boost in ((False, True) if r % 2 == 0 else (True, False)):
            model.boost_infer = boost
            t0 = time.perf_counter()
            model(x)
            times[boost].append(time.perf_counter() - t0)
    cam = model.cam(x)
    op = []
    for _ in range(max(50, 10 * repeats)):
        t0 = time.perf_counter()
        boostlu(cam, alpha)
        op.append(time.perf_counter() - t0)
    base = _median(times[False])
    common = {"backbone": backbone, "batch": batch, "image_size": image_size, "classes": classes,
              "cam_shape": list(cam.shape), "repeats": repeats, "threads": torch.get_num_threads()}
    rows = [
        {**common, "mode": "forward, no BoostLU", "median_ms": 1e3 * base, "min_ms": 1e3 * min(times[False]),
         "max_ms": 1e3 * max(times[False]), "ratio": 1.0},
        {**common, "mode": "forward, BoostLU", "median_ms": 1e3 * _median(times[True]),
         "min_ms": 1e3 * min(times[True]), "max_ms": 1e3 * max(times[True]), "ratio": _median(times[True]) / base},
        {**common, "mode": "BoostLU op alone", "median_ms": 1e3 * _median(op), "min_ms": 1e3 * min(op),
         "max_ms": 1e3 * max(op), "ratio": _median(op) / base},
    ]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Text table of :func:`bench_boostlu` rows (or of ablation rows, which have a ``row`` key)."""
    if rows and "row" in rows[0]:
        return format_ablation(rows)
    r0 = rows[0] if rows else {}
    lines = [f"CAM classifier {r0.get('backbone')} (random weights), batch {r0.get('batch')}, "
             f"{r0.get('image_size')} px, {r0.get('classes')} classes, CAM {r0.get('cam_shape')}, "
             f"{r0.get('repeats')} interleaved repeats, {r0.get('threads')} threads",
             f"{'mode':<22}{'median ms':>11}{'min ms':>10}{'max ms':>10}{'x no-BoostLU median':>21}"]
    for r in rows:
        lines.append(f"{r['mode']:<22}{r['median_ms']:>11.2f}{r['min_ms']:>10.2f}{r['max_ms']:>10.2f}"
                     f"{r['ratio']:>21.4g}")
    return "\n".join(lines)


def ablation_config(row: tuple[str, str, bool, bool, str], seed: int, out: Path,
                    overrides: dict[str, Any] | None = None):
    """The RunConfig of one ablation row (the fashion-mosaic recipe with the row's loss and switches)."""
    from mlrkit.config import build_config

    name, loss, b_train, b_infer, _ = row
    d = deep_merge(FASHION_MOSAIC_BASE, {"seed": seed, "out": str(out), "loss": {"name": loss},
                                         "boostlu": {"train": b_train, "infer": b_infer}})
    if name == "full":
        d = deep_merge(d, {"labels": {"protocol": "full"}})
    if overrides:
        d = deep_merge(d, overrides)
    return build_config(None, d)


def _map_with_inference(run_dir: Path, boost_infer: bool) -> float:
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.run_data import prepare_run_data
    from mlrkit.metrics import map_report

    run = load_run(run_dir)
    run.built.model.boost_infer = boost_infer
    data = prepare_run_data(run.cfg)
    return map_report(run.scores(data.test), data.test.targets, data.test.known).map


def run_boostlu_ablation(out_dir: str | Path, seeds: list[int] | tuple[int, ...] = (0,), *,
                         rows: list[str] | None = None, include_full: bool = True,
                         overrides: dict[str, Any] | None = None, threads: int | None = None,
                         quiet: bool = True) -> list[dict[str, Any]]:
    """Train (or reuse) every ablation run under ``out_dir`` and return one result row per run.

    Args:
        out_dir: root directory; runs go to ``out_dir/seed<k>/<row>``.
        seeds: run seeds (the single-positive labels are drawn with the same seed).
        rows: names of :data:`ABLATION_ROWS` to run (default: all eight), plus ``full`` via ``include_full``.
        overrides: nested config overrides applied to every run (e.g. ``{"train": {"epochs": 3}}``).
        threads: ``torch.set_num_threads`` for this process.
    """
    from mlrkit.engine.trainer import train
    from mlrkit.errors import MlrkitError

    if threads:
        torch.set_num_threads(int(threads))
    table = [r for r in ABLATION_ROWS if rows is None or r[0] in rows]
    if rows is not None:
        unknown = set(rows) - {r[0] for r in ABLATION_ROWS} - {"full"}
        if unknown:
            raise MlrkitError(f"unknown ablation rows {sorted(unknown)}; rows: {[r[0] for r in ABLATION_ROWS]}")
    if include_full or (rows is not None and "full" in rows):
        table.append(FULL_ROW)
    out_dir = Path(out_dir)
    results = []
    for seed in seeds:
        for row in table:
            run_dir = out_dir / f"seed{seed}" / row[0]
            cfg = ablation_config(row, seed, run_dir, overrides)
            t0 = time.perf_counter()
            if (run_dir / "results.json").is_file():
                res = json.loads((run_dir / "results.json").read_text())
            else:
                res = train(cfg, resume=(run_dir / "config.yaml").is_file(), quiet=quiet)
            elapsed = time.perf_counter() - t0
            other = _map_with_inference(run_dir, not row[3])
            info = json.loads((run_dir / "run.json").read_text())
            results.append({
                "row": row[0], "description": row[4], "loss": row[1], "boostlu_train": row[2],
                "boostlu_infer": row[3], "seed": seed, "val_map": res["val_map"], "test_map": res["test_map"],
                "test_map_other_infer": other, "best_epoch": res["best_epoch"],
                "train_s": info.get("timings", {}).get("train_s", elapsed), "run": str(run_dir),
            })
            if not quiet:
                print(f"seed {seed} {row[0]:<16} test mAP {100 * res['test_map']:.2f}", flush=True)
    (out_dir / "ablation.json").write_text(json.dumps(results, indent=2))
    (out_dir / "ablation.md").write_text(format_ablation(results, markdown=True) + "\n")
    return results


def summarise_ablation(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each row (in the order of first appearance)."""
    order = list(dict.fromkeys(r["row"] for r in results))
    out = []
    for name in order:
        rs = [r for r in results if r["row"] == name]
        tm = np.array([r["test_map"] for r in rs])
        om = np.array([r["test_map_other_infer"] for r in rs])
        out.append({**{k: rs[0][k] for k in ("row", "description", "loss", "boostlu_train", "boostlu_infer")},
                    "n_seeds": len(rs), "test_map_mean": float(tm.mean()), "test_map_std": float(tm.std()),
                    "other_infer_mean": float(om.mean()), "other_infer_std": float(om.std()),
                    "train_s_mean": float(np.mean([r["train_s"] for r in rs]))})
    return out


def format_ablation(results: list[dict[str, Any]], markdown: bool = False) -> str:
    """The ablation table (test mAP in %, mean ± std over seeds)."""
    summ = summarise_ablation(results)

    def yn(v: bool) -> str:
        return "✓" if v else "–"

    head = ["row", "loss", "BoostLU train", "BoostLU infer", "test mAP", "same weights, infer switched", "seeds",
            "train s"]
    body = []
    for s in summ:
        loss = {"an": "AN", "ll_r": "LL-R", "bce": "BCE, full labels"}.get(s["loss"], s["loss"])
        pm = f" ± {100 * s['test_map_std']:.2f}" if s["n_seeds"] > 1 else ""
        po = f" ± {100 * s['other_infer_std']:.2f}" if s["n_seeds"] > 1 else ""
        body.append([s["row"], loss, yn(s["boostlu_train"]), yn(s["boostlu_infer"]),
                     f"{100 * s['test_map_mean']:.2f}{pm}",
                     f"{100 * s['other_infer_mean']:.2f}{po} ({'on' if not s['boostlu_infer'] else 'off'})",
                     str(s["n_seeds"]), f"{s['train_s_mean']:.0f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) + 2 for i, h in enumerate(head)]
    lines = ["".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)
