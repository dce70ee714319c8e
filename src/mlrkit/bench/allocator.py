"""``mlrkit bench allocator``: what the fixed glibc mmap threshold (:mod:`mlrkit.engine.host_memory`)
costs and saves on a CPU training step.

The threshold is a property of a process's whole allocation history (glibc serves a large request
from free heap space when it has some, and maps memory only when it has not), so the two settings
cannot be compared inside one process: a process that ran with glibc's default first keeps its
grown heap, and later steps with a fixed threshold reuse it at no cost. Each measurement is therefore
a fresh process (one warm-up step, one timed step, peak resident memory), with glibc's default
(``MLRKIT_MMAP_THRESHOLD=off``) and with mlrkit's default, interleaved (default, fixed, fixed,
default, ...) so that both settings share the machine's state over the run; the medians are compared.
"""

from __future__ import annotations

import statistics
from typing import Any

from mlrkit.engine.host_memory import DEFAULT_MMAP_THRESHOLD, _libc
from mlrkit.errors import MlrkitError

SETTINGS = (("glibc_default", "off"), ("fixed", str(DEFAULT_MMAP_THRESHOLD)))


def bench_allocator(name: str = "dualcoop", classes: int = 312, rounds: int = 2, batch: int = 2,
                    timeout: float = 1800, small: dict[str, Any] | None = None) -> dict[str, Any]:
    """``rounds`` pairs of processes (order alternating): step time and peak memory with glibc's
    default and with the fixed threshold; one row with the lists, their medians and the time ratio."""
    from mlrkit.bench.throughput import bench_throughput

    if _libc() is None:
        raise MlrkitError("bench allocator needs glibc (Linux): there is no mmap threshold to compare here")
    out: dict[str, Any] = {"method": name, "classes": classes, "threshold_bytes": DEFAULT_MMAP_THRESHOLD}
    for key, _ in SETTINGS:
        out[f"step_s_{key}"], out[f"peak_mb_{key}"] = [], []
    for i in range(rounds):
        for key, value in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
            row = bench_throughput([name], classes=classes, batch=batch, steps=1, timeout=timeout, train_only=True,
                                   small=small, env={"MLRKIT_MMAP_THRESHOLD": value})[0]
            if "error" in row:
                raise MlrkitError(f"bench allocator: {name} with MLRKIT_MMAP_THRESHOLD={value}: {row['error']}")
            out[f"step_s_{key}"].append(row["train_step_s"])
            out[f"peak_mb_{key}"].append(row["peak_memory_mb"])
            out["setting"], out["device"] = row["setting"], row["device"]
    med = {k: statistics.median(out[k]) for k in list(out) if k.startswith(("step_s_", "peak_mb_"))}
    out.update({f"median_{k}": v for k, v in med.items()})
    out["time_ratio_fixed_vs_default"] = med["step_s_fixed"] / med["step_s_glibc_default"]
    out["memory_ratio_fixed_vs_default"] = med["peak_mb_fixed"] / med["peak_mb_glibc_default"]
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | classes | step s, glibc default | step s, fixed | time ratio | peak MB, glibc default | "
             "peak MB, fixed | memory ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['classes']} | {r['median_step_s_glibc_default']:.2f} | "
                     f"{r['median_step_s_fixed']:.2f} | {r['time_ratio_fixed_vs_default']:.2f}x | "
                     f"{r['median_peak_mb_glibc_default']:.0f} | {r['median_peak_mb_fixed']:.0f} | "
                     f"{r['memory_ratio_fixed_vs_default']:.2f}x |")
    r = rows[0]
    lines.append(f"\n{r['setting']}; device: {r['device']}; fixed threshold {r['threshold_bytes'] // 1024} KiB; "
                 f"medians of {len(r['step_s_fixed'])} processes per setting (one timed step each, after a warm-up)")
    return "\n".join(lines)
