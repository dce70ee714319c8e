"""``mlrkit bench demo [--busy]``: the wall time of ``mlrkit demo`` as a user runs it, on an idle machine
and with one CPU-burning process pinned to another core (issue 20's targets: <= 40 s idle on the 2-core
machine, busy <= 1.3x idle).

Each timing is a fresh ``python -m mlrkit demo`` (interpreter start and imports included, as the README's
first command). With ``--busy`` the idle and busy runs alternate (idle, busy, idle, busy, ...) so that a
drift of the machine's load hits both alike, and the medians and their ratio are reported. The busy
process is a pure-Python loop pinned with ``sched_setaffinity`` to the last CPU this process may use;
the demo itself is not pinned (the scheduler places it, as it would for a user). Every run's
``results.csv`` must equal the first one's: a busy core may change the time, never the table.

``--smoke`` times the two-run demo on ``emotions`` (``--datasets emotions --losses an``): a check of the
harness, not a figure.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlrkit.errors import MlrkitError

#: the demo's arguments in smoke mode (2 runs on the smallest built-in data set)
SMOKE_ARGS = ["--datasets", "emotions", "--losses", "an"]


def burn_cpu(cpu: int) -> subprocess.Popen:
    """Start a process that keeps ``cpu`` busy (a Python busy loop pinned to it) until killed."""
    code = f"import os\nos.sched_setaffinity(0, {{{int(cpu)}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def busy_core() -> int:
    """The CPU the busy process is pinned to: the last one this process may use (needs two or more)."""
    if not hasattr(os, "sched_getaffinity"):
        raise MlrkitError("bench demo --busy needs os.sched_getaffinity (Linux)")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise MlrkitError(f"bench demo --busy needs at least 2 usable CPUs (this process may use {cpus})")
    return cpus[-1]


def _time_demo(argv: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlrkit", "demo", "--out", str(out), *argv], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise MlrkitError(f"mlrkit demo failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    m = re.search(r"runs in [\d.]+ s \((\d+) job\(s\): ([^)]*)\)", proc.stdout)
    return {"wall_s": wall, "load_1min_before": load, "jobs": int(m.group(1)) if m else None,
            "jobs_reason": m.group(2) if m else None, "results": (out / "results.csv").read_text()}


def bench_demo(repeats: int = 3, busy: bool = False, smoke: bool = False, demo_args: list[str] | None = None,
               workdir: Path | None = None) -> dict[str, Any]:
    """Time ``mlrkit demo`` ``repeats`` times idle (and, with ``busy``, alternately with a busy core)."""
    if repeats < 1:
        raise MlrkitError(f"--repeats must be >= 1, got {repeats}")
    argv = list(demo_args or []) + (SMOKE_ARGS if smoke else [])
    cpu = busy_core() if busy else None
    conditions = ("idle", "busy") if busy else ("idle",)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlrkit-bench-demo-", dir=workdir) as tmp:
        for r in range(repeats):
            for cond in conditions:
                hog = burn_cpu(cpu) if cond == "busy" else None
                try:
                    if hog is not None:
                        time.sleep(0.5)  # let it start spinning before the demo starts
                    res = _time_demo(argv, Path(tmp) / f"{cond}-{r}")
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                runs.append({"condition": cond, "repeat": r, **res})
    first = runs[0]["results"]
    differing = [f"{x['condition']} #{x['repeat']}" for x in runs if x["results"] != first]
    if differing:
        raise MlrkitError(f"bench demo: the demo's results.csv differs between runs ({', '.join(differing)}): the "
                          "table must not depend on the machine's load")
    out: dict[str, Any] = {"smoke": smoke, "demo_args": argv, "repeats": repeats, "busy_cpu": cpu,
                           "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "runs": [{k: v for k, v in x.items() if k != "results"} for x in runs]}
    for cond in conditions:
        times = [x["wall_s"] for x in runs if x["condition"] == cond]
        out[f"{cond}_s"] = times
        out[f"{cond}_median_s"] = statistics.median(times)
    if busy:
        out["busy_over_idle"] = out["busy_median_s"] / out["idle_median_s"]
    return out


def format_demo(res: dict[str, Any]) -> str:
    lines = []
    if res["smoke"]:
        lines.append("SMOKE RUN (demo on emotions, 2 runs): a check of the harness, not the demo's figure")
    lines += ["| condition | run | wall (s) | jobs | load (1 min) before |", "|---|---:|---:|---:|---:|"]
    for x in res["runs"]:
        load = "" if x["load_1min_before"] is None else f"{x['load_1min_before']:.2f}"
        lines.append(f"| {x['condition']} | {x['repeat'] + 1} | {x['wall_s']:.1f} | {x['jobs']} | {load} |")
    lines.append(f"\nidle median {res['idle_median_s']:.1f} s")
    if "busy_over_idle" in res:
        lines.append(f"busy median {res['busy_median_s']:.1f} s (one busy process pinned to CPU {res['busy_cpu']}): "
                     f"{res['busy_over_idle']:.2f}x idle")
    return "\n".join(lines)
