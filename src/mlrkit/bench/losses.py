"""Forward + backward time of every registered loss on one [batch, classes] problem.

``bench_losses`` times each loss on the same logits and observed labels (one known positive per
row, about 10 % known negatives, the rest unknown) and reports the median over ``repeats`` timed
runs after a warm-up, in milliseconds and as a ratio to ``bce``. The losses are timed
round-robin (one run each per round) so that load changes on a shared machine affect them alike.
Stateful losses are prepared with a matching observed matrix of N = ``batch`` rows and
``index = arange(batch)``; losses whose behaviour depends on the epoch run at an epoch where it
is active (epoch 2: LL-R/Ct/Cp select entries, SPLC corrects) and ``em_apl`` has soft negatives.
Losses that need inputs from outside the batch (a vision-language model's pseudo-labels:
``vlpl``) are skipped.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from mlrkit.losses import LOSSES, build

#: losses that need external inputs (not logits + observed labels) and are not benchmarked here
NEEDS_EXTERNAL_INPUTS = frozenset({"vlpl"})
BENCH_EPOCH = 2
# hyper-parameters that keep the benchmark free of warnings / make every branch active
_BENCH_HPARAMS: dict[str, dict[str, Any]] = {
    "epr": {"expected_num_pos": 2.9},
    "role": {"expected_num_pos": 2.9},
    "em_apl": {"warmup_epochs": 1, "num_epochs": 10},
}


def _problem(batch: int, classes: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(batch, classes, generator=gen) - 1.0
    observed = torch.zeros(batch, classes, dtype=torch.int8)
    observed[torch.rand(batch, classes, generator=gen) < 0.1] = -1
    observed[torch.arange(batch), torch.randint(0, classes, (batch,), generator=gen)] = 1
    return logits.to(device), observed.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(loss: torch.nn.Module, logits: torch.Tensor, observed: torch.Tensor, index: torch.Tensor) -> None:
    logits.grad = None
    for p in loss.parameters():
        p.grad = None
    loss(logits, observed, index=index, epoch=BENCH_EPOCH).backward()


def bench_losses(
    batch: int = 256, classes: int = 1000, repeats: int = 20, device: str = "cpu", clock: str = "wall"
) -> list[dict]:
    """Median forward+backward milliseconds of every registered loss, and its ratio to ``bce``.

    ``clock="wall"`` (default) measures elapsed time with torch's usual threads. ``clock="cpu"``
    (CPU only) runs torch on one thread and measures that thread's CPU time, which other
    processes competing for the cores do not inflate: use it on a shared machine.
    Each row: ``name``, ``ms`` (median), ``ratio`` (to ``bce``), ``stateful``, ``description``,
    ``clock``.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and torch.device(device).type != "cpu":
        raise ValueError("clock='cpu' measures CPU time: use it with device='cpu'")
    if clock == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _bench(batch, classes, repeats, device, time.thread_time, "cpu")
        finally:
            torch.set_num_threads(threads)
    return _bench(batch, classes, repeats, device, time.perf_counter, "wall")


def _bench(batch: int, classes: int, repeats: int, device: str, now, clock: str) -> list[dict]:  # noqa: ANN001
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss

    dev = torch.device(device)
    logits0, observed = _problem(batch, classes, dev)
    index = torch.arange(batch, device=dev)
    names = [n for n in LOSSES.names() if n not in NEEDS_EXTERNAL_INPUTS]
    if "bce" in names:  # the reference first
        names.remove("bce")
        names.insert(0, "bce")
    losses = {}
    grads = {}
    for name in names:
        loss = build(name, **_BENCH_HPARAMS.get(name, {})).to(dev)
        loss.prepare(observed)
        if hasattr(loss, "update_pseudo_labels"):
            scores = torch.randn(batch, classes, generator=torch.Generator().manual_seed(1)).to(dev)
            loss.update_pseudo_labels(scores, BENCH_EPOCH - 1)
        losses[name] = loss
        grads[name] = logits0.clone().requires_grad_()
        for _ in range(3):  # warm-up
            _step(loss, grads[name], observed, index)
    _sync(dev)
    # Round-robin: every round times each loss once, so that a change of machine load during the
    # benchmark affects every loss alike (a shared 2-core machine can vary by 10x).
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            t0 = now()
            _step(losses[name], grads[name], observed, index)
            _sync(dev)
            times[name].append((now() - t0) * 1e3)
    rows: list[dict] = [
        {"name": n, "ms": statistics.median(times[n]), "stateful": bool(losses[n].stateful),
         "description": LOSSES.entry(n).description, "clock": clock}
        for n in names
    ]
    ref = next((r["ms"] for r in rows if r["name"] == "bce"), None)
    for r in rows:
        r["ratio"] = r["ms"] / ref if ref else float("nan")
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`bench_losses` rows."""
    lines = ["| loss | stateful | ms (median) | × bce |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {'yes' if r['stateful'] else 'no'} | {r['ms']:.2f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m mlrkit.bench.losses
    print(format_table(bench_losses()))
