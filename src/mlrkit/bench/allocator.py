"""``mlrkit bench allocator``: what the fixed glibc mmap threshold (:mod:`mlrkit.engine.host_memory`)
costs and saves on a CPU training step.

* **memory**: the case runs twice, each in its own process (one warm-up step, one timed step): with
  glibc's default dynamic threshold (``MLRKIT_MMAP_THRESHOLD=off``) and with mlrkit's default; peak
  resident memory of each;
* **time**: in one process, training steps alternate between the fixed threshold and a 32 MiB one
  (the ceiling of glibc's dynamic threshold, i.e. the state it reaches after freeing large tensors),
  each timed step preceded by an untimed one in the same setting, the order swapped every round; the
  ratio of the medians is the threshold's time cost, measured side by side on the same model.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from mlrkit.engine.host_memory import DEFAULT_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD, _libc, set_mmap_threshold
from mlrkit.errors import MlrkitError


def alternate_thresholds(name: str, classes: int, rounds: int = 2, batch: int = 2,
                         threshold: int = DEFAULT_MMAP_THRESHOLD,
                         small: dict[str, Any] | None = None) -> dict[str, Any]:
    """Median training-step time with the fixed ``threshold`` and with 32 MiB, alternating in this
    process (see the module docstring)."""
    from mlrkit.bench.throughput import prepare_case

    if _libc() is None:
        raise MlrkitError("bench allocator needs glibc (Linux): there is no mmap threshold to compare here")
    row, fns, _ = prepare_case(name, classes, batch, "cpu", train_only=True, small=small)
    step = fns["train"]
    step()  # warm-up
    times: dict[str, list[float]] = {"fixed": [], "ceiling": []}
    modes = [("fixed", threshold), ("ceiling", MAX_MMAP_THRESHOLD)]
    for i in range(rounds):
        for key, n in modes if i % 2 == 0 else modes[::-1]:
            set_mmap_threshold(n)
            step()  # untimed: the first step after a change still frees blocks allocated in the other setting
            t = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t)
    fixed, ceiling = statistics.median(times["fixed"]), statistics.median(times["ceiling"])
    return {"method": name, "classes": classes, "setting": row["setting"], "device": row["device"],
            "threshold_bytes": threshold, "step_s_fixed": times["fixed"], "step_s_32mib": times["ceiling"],
            "time_ratio_fixed_vs_32mib": fixed / ceiling}


def bench_allocator(name: str = "dualcoop", classes: int = 312, rounds: int = 2, batch: int = 2,
                    timeout: float = 1800, small: dict[str, Any] | None = None) -> dict[str, Any]:
    """Peak memory with glibc's default vs mlrkit's threshold (two processes) and the side-by-side time
    ratio (a third process); one row."""
    from mlrkit.bench.throughput import bench_throughput

    out: dict[str, Any] = {}
    for key, value in (("peak_mb_glibc_default", "off"), ("peak_mb_fixed", str(DEFAULT_MMAP_THRESHOLD))):
        rows = bench_throughput([name], classes=classes, batch=batch, steps=1, timeout=timeout, train_only=True,
                                small=small, env={"MLRKIT_MMAP_THRESHOLD": value})
        if "error" in rows[0]:
            raise MlrkitError(f"bench allocator: {name} with MLRKIT_MMAP_THRESHOLD={value}: {rows[0]['error']}")
        out[key] = rows[0]["peak_memory_mb"]
    kwargs = {"name": name, "classes": classes, "rounds": rounds, "batch": batch, "small": small}
    cmd = [sys.executable, "-m", "mlrkit.bench.allocator", json.dumps(kwargs)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        raise MlrkitError(f"bench allocator: {lines[-1] if lines else f'exit status {r.returncode}'}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), **out}


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | classes | peak MB, glibc default | peak MB, fixed threshold | step s fixed (median) | "
             "step s 32 MiB (median) | time ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['classes']} | {r['peak_mb_glibc_default']:.0f} | "
                     f"{r['peak_mb_fixed']:.0f} | "
                     f"{statistics.median(r['step_s_fixed']):.2f} | {statistics.median(r['step_s_32mib']):.2f} | "
                     f"{r['time_ratio_fixed_vs_32mib']:.3f} |")
    lines.append(f"\n{rows[0]['setting']}; device: {rows[0]['device']}; fixed threshold "
                 f"{rows[0]['threshold_bytes'] // 1024} KiB")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(alternate_thresholds(**json.loads(sys.argv[1]))))
