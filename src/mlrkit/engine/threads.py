"""Thread policy: how many intra-op threads torch uses, chosen from the work and the machine.

torch's default (one thread per core the machine has) is wrong twice over on shared machines:
a container limited by a cgroup CPU quota or a CPU affinity mask still sees every core, and a
tiny model (a feature head, a small MLP) gains nothing from a second thread while paying
OpenMP's start-up and spin-wait on every operation — with another busy process on the machine,
three demo losses on ``scene`` took 60.5 s with torch's default threads against 21.5 s with one
thread (oversubscription, issue 20).

The policy:

* ``usable_cpus()`` = the smallest of the CPU affinity mask, the cgroup CPU quota (v2 ``cpu.max``
  or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, rounded up) and ``OMP_NUM_THREADS`` when set;
* a model whose forward costs less than :data:`TINY_FLOPS` multiply-adds per example (every
  feature head and MLP of mlrkit) runs single-threaded;
* anything larger (image backbones, CLIP towers, prompt methods) uses ``usable_cpus()`` threads;
* ``train.threads`` (``> 0``) overrides the choice; the decision and its reason are recorded in
  ``run.json`` (``threads``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

#: multiply-adds per example below which a model is "tiny" (MLP 294-256-6: 77k; smallest CNN: ~10M)
TINY_FLOPS = 2_000_000


@dataclass
class ThreadChoice:
    """What the policy decided, as recorded in ``run.json``."""

    threads: int
    usable_cpus: int
    reason: str
    limits: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by the cgroup quota (rounded up), or None when unlimited/unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                return max(1, math.ceil(int(quota) / int(period)))
            return None
        q, p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota, period = int(q.read_text()), int(p.read_text())
            if quota > 0 and period > 0:
                return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None
    return None


def cpu_limits(environ: dict[str, str] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> dict[str, int]:
    """Every limit on the CPUs this process may use that can be read: affinity, cgroup quota, OMP_NUM_THREADS."""
    env = os.environ if environ is None else environ
    out: dict[str, int] = {"cpu_count": os.cpu_count() or 1}
    if hasattr(os, "sched_getaffinity"):
        out["affinity"] = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        out["cgroup_quota"] = quota
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:
        try:
            n = int(omp.split(",")[0])
        except ValueError:
            n = 0
        if n > 0:
            out["OMP_NUM_THREADS"] = n
    return out


def usable_cpus(environ: dict[str, str] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: the smallest of affinity, cgroup quota and ``OMP_NUM_THREADS``."""
    return max(1, min(cpu_limits(environ, cgroup_root).values()))


def model_flops(model: nn.Module, input_kind: str, feature_dim: int | None = None) -> float:
    """Rough multiply-adds per example of ``model``'s forward: exact for stacks of Linear layers
    (feature heads); for image models, anything with a convolution or an attention block counts
    as large (their cost grows with the image, not with the parameter count)."""
    if input_kind != "features":
        return math.inf
    total = 0.0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)):
            return math.inf
    if total == 0.0:  # a feature model with no Linear (e.g. a custom module): judge by parameters
        total = float(sum(p.numel() for p in model.parameters()))
    return total


def choose_threads(flops: float, override: int = 0, limits: dict[str, int] | None = None) -> ThreadChoice:
    """The policy (module docstring): ``override`` > 0 wins; tiny work is single-threaded; else usable CPUs."""
    limits = cpu_limits() if limits is None else limits
    usable = max(1, min(limits.values()))
    if override > 0:
        return ThreadChoice(override, usable, "train.threads", limits)
    if flops < TINY_FLOPS:
        return ThreadChoice(1, usable, f"tiny model ({flops:.3g} multiply-adds per example < {TINY_FLOPS:.0e})",
                            limits)
    return ThreadChoice(usable, usable, "usable CPUs (affinity, cgroup quota, OMP_NUM_THREADS)", limits)


def apply(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op threads to ``choice.threads`` (a no-op when already so)."""
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice


def default_threads() -> ThreadChoice:
    """For commands that run a large model (extract-features, pseudo-label, negation, vl pretrain):
    the usable CPUs."""
    limits = cpu_limits()
    return apply(choose_threads(math.inf, 0, limits))


def _cpu_times(stat: Path) -> dict[int, tuple[int, int]]:
    """``{cpu: (busy jiffies, total jiffies)}`` from ``/proc/stat`` (idle and iowait count as not busy)."""
    out = {}
    for line in stat.read_text().splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        ticks = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
        total = sum(ticks)
        out[int(name[3:])] = (total - ticks[3] - ticks[4], total)
    return out


def busy_cpus(sample_s: float = 0.2, stat: Path = Path("/proc/stat"), cpus: set[int] | None = None) -> float:
    """How many of the CPUs this process may use (its affinity mask, or ``cpus``) other work keeps busy:
    the sum of their busy fractions over ``sample_s`` seconds while this process sleeps. 0.0 where
    ``/proc/stat`` cannot be read (not Linux).

    A CPU-burning process on one of two usable CPUs gives about 1.0; an idle machine about 0.0. Used to
    size the demo's worker pool (:func:`mlrkit.engine.demo.default_jobs`).
    """
    import time

    try:
        before = _cpu_times(stat)
        time.sleep(sample_s)
        after = _cpu_times(stat)
    except (OSError, ValueError):
        return 0.0
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(after)
    busy = 0.0
    for c in cpus:
        if c in before and c in after:
            d_busy, d_total = after[c][0] - before[c][0], after[c][1] - before[c][1]
            if d_total > 0:
                busy += min(1.0, max(0.0, d_busy / d_total))
    return busy
