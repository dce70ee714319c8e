"""Metric timing: mAP of a COCO-val-sized score matrix (40,504 x 80), vs scikit-learn's per-class loop."""

from __future__ import annotations

import platform
import time

import numpy as np

from mlrkit.metrics import average_precision, mean_average_precision


def bench_metrics(n: int = 40504, c: int = 80, repeats: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c)).astype(np.float32)
    targets = rng.random((n, c)) < 0.04
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mean_average_precision(scores, targets)
        times.append(time.perf_counter() - t)
    machine = platform.processor() or platform.machine()
    rows = [{"what": f"mlrkit mAP {n}x{c}", "seconds": min(times), "machine": machine}]
    try:
        from sklearn.metrics import average_precision_score

        t = time.perf_counter()
        ref = np.array([average_precision_score(targets[:, j], scores[:, j]) for j in range(c)])
        rows.append({"what": f"sklearn per-class loop {n}x{c}", "seconds": time.perf_counter() - t,
                     "machine": rows[0]["machine"]})
        rows[0]["max_abs_diff_vs_sklearn"] = float(np.abs(ref - average_precision(scores, targets)).max())
    except ImportError:
        pass
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'benchmark':<36} {'seconds':>9}"]
    for r in rows:
        lines.append(f"{r['what']:<36} {r['seconds']:>9.3f}")
    if "max_abs_diff_vs_sklearn" in rows[0]:
        lines.append(f"max |AP - sklearn AP| = {rows[0]['max_abs_diff_vs_sklearn']:.2e}")
    return "\n".join(lines)
