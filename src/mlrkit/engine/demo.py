"""``mlrkit demo``: single-positive vs full labels on the built-in real datasets.

For each dataset (default ``scene`` and ``yeast``, real Mulan data shipped in the package) it
trains the demo recipe (an MLP on standardised features; ``configs/demo/mlp.yaml``) once with
full labels and BCE, and once per loss of the zoo with single-positive labels, then prints the
test-mAP table and writes ``results.csv``, ``results.md`` and ``demo_map.png``.

The runs are independent and seeded, so they are spread over ``jobs`` worker processes (default:
:func:`default_jobs`, one per usable CPU plus one per CPU found busy with other work), forked from a
forkserver that has imported what a run needs (:func:`preload`); each run is single-threaded by the
thread policy (a tiny MLP), so the table is the same whatever the number of jobs (tests compare a
worker's run with the same run in-process). ``mlrkit bench demo [--busy]`` times it.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np

from mlrkit.config import build_config

log = logging.getLogger("mlrkit")

#: the demo recipe; configs/demo/mlp.yaml holds the same values (a test keeps them equal)
DEMO_RECIPE = {
    "method": {"name": "mlp", "hidden_dim": 256, "num_layers": 1, "dropout": 0.1},
    "train": {"epochs": 30, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "progress": False},
}

#: losses that need inputs the demo does not make (pseudo-labels from a VL model)
NOT_IN_DEMO = {"bce", "vlpl"}


def default_losses() -> list[str]:
    """The single-positive grid: every loss of the zoo except :data:`NOT_IN_DEMO` and the losses that
    ignore unknown labels by default (``ignores_unknowns``: with single-positive labels they see no
    negative at all, so their best epoch is the first and the table would show that epoch's model;
    :func:`left_out_losses`)."""
    import mlrkit.losses.zoo  # noqa: F401
    from mlrkit.losses import LOSSES

    out = set(left_out_losses())
    return ["an"] + [n for n in LOSSES.names() if n not in NOT_IN_DEMO and n not in out and n != "an"]


def _default_grid() -> tuple[list[str], list[str]]:
    return default_losses(), left_out_losses()


def left_out_losses() -> list[str]:
    """Losses whose default setting gives unknown labels zero loss (declared by ``ignores_unknowns``)."""
    import mlrkit.losses.zoo  # noqa: F401
    from mlrkit.losses import LOSSES

    return [n for n in LOSSES.names() if LOSSES.get(n).ignores_unknowns and n not in NOT_IN_DEMO]


def _demo_run(run_dir: str, ds: str, protocol: str, loss: str, seed: int) -> float:
    """One demo run (in this process or a worker process); returns its test mAP."""
    import shutil

    from mlrkit.engine.trainer import train

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = build_config(flags={**DEMO_RECIPE, "seed": seed, "out": run_dir, "data": {"name": ds},
                              "labels": {"protocol": protocol}, "loss": {"name": loss}})
    return float(train(cfg, quiet=True)["test_map"])


def run_demo(
    out: Path,
    datasets: list[str] | None = None,
    losses: list[str] | None = None,
    seeds: list[int] | None = None,
    jobs: int | None = None,
) -> list[dict]:
    """Train the grid, print the table, write CSV/Markdown and the bar plot; returns the rows.

    ``jobs`` worker processes run the grid (None: :func:`default_jobs`; 1: everything in this process).
    """
    datasets = datasets or ["scene", "yeast"]
    seeds = seeds or [0]
    if jobs is not None and jobs < 1:
        from mlrkit.errors import ConfigError

        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    why = "--jobs"
    if jobs is None:  # first: the CPU sample must see other work only, before this command starts any
        jobs, why = default_jobs()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _Runner(jobs) as runner:
        # the loss names come from the first worker when there are workers: it imports torch anyway, and
        # this process then never does (it only waits, prints and plots)
        names = None if losses else runner.submit(_default_grid)
        if runner.pool is not None:
            _pyplot()  # imported while the workers start, not after them (about 1 s on the 2-core machine)
        if not losses:
            losses, left_out = names.result()
            print("left out of the single-positive grid (they give unknown labels zero loss, and single-positive "
                  f"labels have no known negative): {', '.join(left_out)}; see docs/partial-toolkit.md",
                  flush=True)
        grid = [("full", "bce")] + [("single-positive", loss) for loss in losses]
        cells = [(ds, protocol, loss) for ds in datasets for protocol, loss in grid]
        tasks = [(str(out / "runs" / f"{ds}-{protocol}-{loss}-s{seed}"), ds, protocol, loss, seed)
                 for ds, protocol, loss in cells for seed in seeds]
        futures = [runner.submit(_demo_run, *t) for t in tasks]  # all queued at once; read back in grid order
        rows = []
        for i, (ds, protocol, loss) in enumerate(cells):
            maps = [f.result() for f in futures[i * len(seeds) : (i + 1) * len(seeds)]]
            rows.append({"dataset": ds, "labels": protocol, "loss": loss, "seeds": len(seeds),
                         "test_map": float(np.mean(maps)), "test_map_std": float(np.std(maps))})
            print(f"  {ds:<8} {protocol:<16} {loss:<8} test mAP {100 * rows[-1]['test_map']:6.2f}", flush=True)
    elapsed = time.perf_counter() - t0
    jobs = min(jobs, len(tasks))
    table = format_table(rows, datasets, grid)
    print()
    print(table)
    print(f"\n{len(rows) * len(seeds)} runs in {elapsed:.1f} s ({jobs} job(s): {why}); runs in {out / 'runs'}")
    _write_csv(out / "results.csv", rows)
    (out / "results.md").write_text(table + "\n")
    plot = plot_results(rows, datasets, grid, out / "demo_map.png")
    print(f"table: {out / 'results.md'}  plot: {plot}")
    return rows


def default_jobs(n_tasks: int | None = None, usable: int | None = None, busy: float | None = None) -> tuple[int, str]:
    """Worker processes for single-threaded runs, and why: one per usable CPU
    (:func:`~mlrkit.engine.threads.usable_cpus`) plus one per usable CPU that other work keeps busy at the
    start (:func:`~mlrkit.engine.threads.busy_cpus`, sampled for 0.2 s), at most ``n_tasks``.

    Why the extra worker: the scheduler shares a busy CPU between the processes on it, so with one
    worker per CPU the demo gets half of the busy CPU at best (nothing of it if both workers land on the
    free CPU); with one more it keeps the free CPU and about half of the busy one in either placement.
    On an idle machine no extra worker is started.
    """
    from mlrkit.engine import threads

    usable = threads.usable_cpus() if usable is None else usable
    busy = threads.busy_cpus() if busy is None else busy
    extra = min(usable, int(round(busy)))
    jobs = usable + extra
    why = f"{usable} usable CPU(s)" + (f" + {extra} for the CPU(s) other work keeps busy ({busy:.1f})" if extra else "")
    return max(1, jobs if n_tasks is None else min(jobs, n_tasks)), why


class _Done:
    """An already computed result with a future's ``result()``."""

    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


class _Runner:
    """``with _Runner(jobs) as runner``: ``runner.submit(fn, *args)`` runs ``fn`` in this process (one job)
    or in a pool of ``jobs`` worker processes, and returns a future.

    On Linux the workers are forked from a ``multiprocessing``
    forkserver that has imported what a run imports (:mod:`mlrkit.engine.demo_preload`: the engine, the
    losses, ``torch._dynamo`` through ``torch.optim``; about 5 s of imports on the 2-core machine), so
    they start warm instead of each paying the imports again. The forkserver is a fresh interpreter that
    never runs a torch operation, so no OpenMP thread pool is inherited in an unusable state, whatever
    the calling process did before (a plain ``fork`` of a process whose torch has run with two threads
    hangs the child's first two-threaded operation). Elsewhere the workers are spawned (macOS: forking a
    process that has loaded system frameworks is unsafe there, hence Python's own default of spawn).
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.pool = None

    def __enter__(self) -> _Runner:
        if self.jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context(start_method())
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(["mlrkit.engine.demo_preload"])
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=ctx)
        return self

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args) if self.pool is not None else _Done(fn(*args))

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def start_method() -> str:
    """``forkserver`` on Linux (workers forked from a preloaded server), else ``spawn``."""
    import multiprocessing as mp
    import sys

    linux = sys.platform.startswith("linux")
    return "forkserver" if linux and "forkserver" in mp.get_all_start_methods() else "spawn"


def preload() -> None:
    """Import what a demo run imports, without running any torch operation (the forkserver's preload).

    ``torch.optim``'s first optimizer imports ``torch._dynamo`` (with sympy and the inductor: the
    largest single import of a run); building one on a one-element tensor does that and nothing else.
    """
    import torch

    import mlrkit.data.datasets  # noqa: F401 - the built-in data sets
    import mlrkit.engine.calibration  # noqa: F401
    import mlrkit.engine.tracking  # noqa: F401
    import mlrkit.engine.trainer  # noqa: F401 - the engine
    import mlrkit.losses.zoo  # noqa: F401
    from mlrkit.methods.base import register_all

    register_all()
    torch.optim.Adam([torch.nn.Parameter(torch.empty(1))])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_table(rows: list[dict], datasets: list[str], grid: list[tuple[str, str]]) -> str:
    """Markdown table: one row per (labels, loss), one column per dataset (test mAP, %)."""
    by = {(r["dataset"], r["labels"], r["loss"]): r for r in rows}
    head = "| labels | loss | " + " | ".join(datasets) + " |"
    sep = "|---|---|" + "---:|" * len(datasets)
    lines = [head, sep]
    for protocol, loss in grid:
        cells = []
        for ds in datasets:
            r = by[(ds, protocol, loss)]
            cell = f"{100 * r['test_map']:.2f}"
            if r["seeds"] > 1:
                cell += f" ± {100 * r['test_map_std']:.2f}"
            cells.append(cell)
        lines.append(f"| {protocol} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_results(rows: list[dict], datasets: list[str], grid: list[tuple[str, str]], path: Path) -> Path:
    """Grouped bar plot of test mAP per dataset; the full-label bar is drawn darker."""
    plt = _pyplot()
    by = {(r["dataset"], r["labels"], r["loss"]): r for r in rows}
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6, 0.45 * len(grid)) * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        vals = [100 * by[(ds, p, loss)]["test_map"] for p, loss in grid]
        errs = [100 * by[(ds, p, loss)]["test_map_std"] for p, loss in grid]
        colors = ["#1f4e79" if p == "full" else "#6fa8dc" for p, _ in grid]
        labels = [f"{loss}\n(full)" if p == "full" else loss for p, loss in grid]
        x = np.arange(len(grid))
        ax.bar(x, vals, yerr=errs if any(errs) else None, color=colors)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
        lo = min(vals)
        ax.set_ylim(max(0.0, lo - 10), min(100.0, max(vals) + 5))
        ax.set_ylabel("test mAP (%)")
        ax.set_title(f"{ds}: full labels vs single-positive")
        ax.axhline(vals[0], color="#1f4e79", lw=0.8, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
