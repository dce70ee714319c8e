"""The one training loop of mlrkit, shared by every command that optimises a model.

:class:`TrainLoop` is the optimisation step and the epoch over a batch source; the Trainer
(``mlrkit train``), the mosaic-clip contrastive pre-training (``mlrkit vl pretrain``), the
NegationCLIP fine-tuning (``mlrkit negation finetune``), the linear-init phase of
``finetune`` and the backprop variant of category-wise fine-tuning (``cft``) all run their steps
through it, so each gets the same:

* **AMP**: autocast in the dtype :func:`mlrkit.engine.devices.autocast_dtype` picks for the device
  (``amp`` null = bf16 on CUDA devices that support it, off on the CPU; ``true`` forces it, with a
  gradient scaler for fp16);
* **DDP**: after backward the gradients of ``synced`` are averaged across ranks
  (:func:`mlrkit.engine.distributed.average_gradients`); each step's objective is multiplied by the
  caller's ``share`` so that the average equals one process's gradient (a per-row mean loss:
  ``n_rank * world / n_global``; a loss over the whole gathered global batch, as the contrastive
  ones: ``world``);
* gradient clipping, a per-step scheduler, **EMA** of the weights;
* a NaN/inf check of the loss every :data:`FINITE_CHECK_EVERY` steps, the epoch's example-weighted
  mean loss and mean named terms (``StepOutput.terms``) summed over the ranks, and progress lines
  (:mod:`mlrkit.engine.progress`: a bar on a terminal, periodic lines in batch logs).

:class:`LoopRun` is the run directory of the commands that are not ``mlrkit train`` (whose
directory the Trainer keeps itself): one writer (:class:`~mlrkit.engine.rundir.RunLock`), the
command's settings in ``config.yaml``, ``metrics.jsonl`` (one row per epoch or logging interval,
fsync'd before ``last.pt``), ``last.pt`` written atomically and read with ``weights_only=True``,
and ``--resume`` semantics as ``train`` has: it continues exactly that directory with the same
settings, or fails.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.engine import distributed as ddp
from mlrkit.engine.devices import autocast_dtype
from mlrkit.engine.optim import EMA, LeanStep
from mlrkit.engine.progress import progress as progress_bar
from mlrkit.engine.rundir import append_metrics_row, truncate_metrics
from mlrkit.errors import MlrkitError

log = logging.getLogger("mlrkit")

#: the loss is checked for NaN/inf every this many steps (a check waits for the device)
FINITE_CHECK_EVERY = 50


@dataclass
class StepResult:
    """What one step's compute function returns: the loss, named extra terms, and the rows it covered."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    n: int = 1  # examples on this rank: the weight of the loss in the epoch mean
    share: float = 1.0  # DDP: the objective's multiplier (see the module docstring); ignored on one process


@dataclass
class EpochStats:
    loss: float  # example-weighted mean over the epoch (all ranks)
    terms: dict[str, float]
    steps: int
    n: int


class TrainLoop:
    """Optimisation steps with AMP, DDP gradient averaging, clipping, scheduler and EMA (module docstring)."""

    def __init__(self, model: nn.Module, optimizer: Any, *, device: torch.device | str = "cpu",
                 amp: bool | None = None, ema: float = 0.0, grad_clip: float = 0.0, scheduler: Any = None,
                 synced: list[nn.Parameter] | None = None, env: ddp.DistEnv | None = None,
                 finite_every: int = FINITE_CHECK_EVERY, hint: str = "lower the learning rate?") -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device = torch.device(device)
        self.env = env if env is not None else ddp.current()
        self.grad_clip = float(grad_clip)
        self.synced = synced if synced is not None else [p for p in model.parameters() if p.requires_grad]
        self.ema = EMA(model, ema) if ema > 0 else None
        self.amp_dtype = autocast_dtype(self.device, amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and \
            self.device.type == "cuda" else None
        self.finite_every, self.hint = finite_every, hint
        self.steps = 0  # steps taken by this loop object (the NaN check's clock)
        self.lean = LeanStep(optimizer)  # optimizer.step/zero_grad without torch.optim's per-step Python

    def autocast(self):
        """The forward pass's precision context (AMP on or off)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _nonfinite(self, value: float, where: str) -> MlrkitError:
        return MlrkitError(f"loss became {value}{' ' + where if where else ''}; {self.hint}")

    def step(self, compute: Callable[[], StepResult], *, where: str = "", check: bool | None = None) -> StepResult:
        """One optimisation step: ``compute`` (under autocast) -> backward -> DDP average -> clip -> step.

        ``check``: test the loss for NaN/inf now (default: every ``finite_every`` steps of this loop).
        """
        with self.autocast():
            out = compute()
        loss = out.loss
        if check is None:
            check = self.steps % self.finite_every == 0
        if check and not torch.isfinite(loss):
            raise self._nonfinite(loss.item(), where)
        self.steps += 1
        opt = self.optimizer
        self.lean.zero_grad()
        objective = loss * out.share if self.env.enabled and out.share != 1.0 else loss
        if self.scaler is not None:
            self.scaler.scale(objective).backward()
            self.scaler.unscale_(opt)
        else:
            objective.backward()
        if self.env.enabled:
            ddp.average_gradients(self.synced, self.env)
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            self.lean.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return out

    def run_epoch(self, batches: Iterable, compute: Callable[[Any], StepResult], *, desc: str = "",
                  progress: bool = False, where: str = "",
                  after_step: Callable[[int, StepResult], bool] | None = None) -> EpochStats:
        """Every batch of ``batches`` through :meth:`step`; the epoch's means summed over the ranks.

        ``after_step(k, result)`` may return True to end the epoch early (a step or time limit).
        """
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # on the device: no sync per step
        term_sums: dict[str, Tensor] = {}
        n = steps = 0
        bar = progress_bar(batches, desc=desc) if progress else batches
        for k, batch in enumerate(bar):
            out = self.step(lambda b=batch: compute(b), where=where, check=k % self.finite_every == 0)
            total += out.loss.detach() * out.n
            for name, value in out.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.detach().double() * out.n
            n += out.n
            steps += 1
            if progress:
                bar.set_postfix(loss=f"{float(total) / max(n, 1):.4f}", refresh=False)
            if after_step is not None and after_step(k, out):
                break
        if progress and hasattr(bar, "close"):
            bar.close()
        total_f = float(total)
        if not np.isfinite(total_f):
            raise self._nonfinite(total_f, where)
        names = sorted(term_sums)
        sums = [total_f, float(n)] + [float(term_sums[k]) for k in names]
        if self.env.enabled:
            t = torch.tensor(sums, dtype=torch.float64)
            torch.distributed.all_reduce(t)
            sums = t.tolist()
        count = max(int(sums[1]), 1)
        return EpochStats(sums[0] / count, {k: sums[2 + i] / count for i, k in enumerate(names)}, steps, int(sums[1]))

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Evaluate with the EMA weights (when EMA is on): swapped into the model, then the trained ones back."""
        if self.ema is None:
            yield
            return
        backup = self.ema.swap_into(self.model)
        try:
            yield
        finally:
            self.model.load_state_dict({**self.model.state_dict(), **backup})

    # ------------------------------------------------------------------ state (for last.pt)
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def join_processes(device_name: str | None) -> tuple[torch.device, ddp.DistEnv]:
    """The device and process group of a run (``torchrun``: join the group; CUDA: this rank's device)."""
    from mlrkit.engine.devices import resolve_device

    env = ddp.init_distributed(device_name or "auto")
    device = resolve_device(device_name)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    return device, env


#: ``--amp`` of the commands on the loop -> ``amp`` (as ``train.amp``: None = auto)
AMP_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def gather_batch(x: Tensor, env: ddp.DistEnv) -> Tensor:
    """This rank's rows of a global batch -> the whole global batch on every rank, in rank order.

    The rank's own rows keep their autograd graph (the others are copies), so a loss over the whole
    batch backpropagates into this rank's rows only; summed over the ranks (``share = world`` with
    :class:`TrainLoop`'s averaging) the gradient is one process's. Slices may differ in size by one.
    """
    if not env.enabled:
        return x
    sizes = [torch.zeros((), dtype=torch.long) for _ in range(env.world)]
    own = torch.tensor(len(x), dtype=torch.long)
    torch.distributed.all_gather(sizes, own)
    most = int(max(int(s) for s in sizes))
    pad = torch.zeros((most - len(x), *x.shape[1:]), dtype=x.dtype, device=x.device)
    parts = [torch.empty((most, *x.shape[1:]), dtype=x.dtype, device=x.device) for _ in range(env.world)]
    torch.distributed.all_gather(parts, torch.cat([x.detach(), pad]))
    parts = [p[: int(s)] for p, s in zip(parts, sizes)]
    parts[env.rank] = x
    return torch.cat(parts)


def cpu_copy(obj: Any) -> Any:
    """A copy of a checkpoint payload whose tensors are detached CPU copies (nested dicts/lists)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class LoopRun:
    """The run directory of a command on :class:`TrainLoop` (``config.yaml``, ``metrics.jsonl``, ``last.pt``).

    ``settings`` (plain data) are the command's options that define the run; ``--resume`` needs the
    same ones (``resume_may_change``: keys that may differ, e.g. a time limit). Only rank 0 writes.
    """

    def __init__(self, directory: str | Path, settings: dict[str, Any], *, resume: bool = False,
                 command: str = "", resume_may_change: tuple[str, ...] = (), env: ddp.DistEnv | None = None) -> None:
        self.dir = Path(directory)
        self.settings = json.loads(json.dumps(settings))  # plain data, as it will read back
        self.resume, self.command = resume, command
        self.may_change = resume_may_change
        self.env = env if env is not None else ddp.current()
        self.lock = None

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def claim(self) -> dict[str, Any] | None:
        """Lock the directory, check it (fresh, or the same settings on ``--resume``), write ``config.yaml``.

        Returns the ``last.pt`` payload to resume from (None: start from the beginning).
        """
        from mlrkit.config import yaml_load
        from mlrkit.engine.checkpoint import load_checkpoint
        from mlrkit.engine.rundir import RUN_FILES, RunLock, check_out_path, config_diff, describe_contents
        from mlrkit.utils import atomic_write

        check_out_path(self.dir)
        if self.resume and not self.dir.is_dir():
            raise MlrkitError(f"--resume: {self.dir} does not exist; to start a new run there, drop --resume")
        ck, error = None, None
        if self.env.is_main:
            try:
                self.lock = RunLock(self.dir).acquire()
                if self.lock.stale:
                    log.warning("mlrkit: warning: %s", self.lock.stale)
                cfg_path = self.dir / "config.yaml"
                if not self.resume:
                    held = [n for n in RUN_FILES if (self.dir / n).exists()]
                    if held:
                        raise MlrkitError(f"{self.dir} already holds a run ({', '.join(held)}); continue it with "
                                          "--resume or choose another output")
                else:
                    if not cfg_path.is_file():
                        raise MlrkitError(f"--resume: {self.dir} has no saved settings (config.yaml); it holds "
                                          f"{describe_contents(self.dir)}")
                    saved = yaml_load(cfg_path.read_text())
                    saved = saved.get("settings") if isinstance(saved, dict) else None
                    diff = config_diff(saved or {}, self.settings, self.may_change)
                    if diff:
                        raise MlrkitError(f"--resume: the settings differ from {cfg_path} ({'; '.join(diff[:4])}); "
                                          "resume with the same options, or start afresh in another output")
                    if self.last.exists():
                        ck = load_checkpoint(self.last)
                import yaml

                with atomic_write(cfg_path) as tmp:
                    tmp.write_text(yaml.safe_dump({"command": self.command, "settings": self.settings},
                                                  sort_keys=False))
            except MlrkitError as e:
                error = str(e)
        error = ddp.broadcast_object(error, self.env)
        if error is not None:
            self.release()
            raise MlrkitError(error)
        return ddp.broadcast_object(ck, self.env)

    def truncate_metrics(self, key: str, done: int) -> None:
        """Keep the ``metrics.jsonl`` rows with ``row[key] <= done`` (rows past ``last.pt`` are recomputed)."""
        if self.env.is_main:
            truncate_metrics(self.dir / "metrics.jsonl", key, done)

    def log_row(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (fsync'd before any ``last.pt`` that follows it)."""
        if self.env.is_main:
            append_metrics_row(self.dir / "metrics.jsonl", row)

    def save_last(self, payload: dict[str, Any]) -> None:
        """``last.pt`` (atomic; plain data and tensors only)."""
        from mlrkit.engine.checkpoint import save_checkpoint

        if self.env.is_main:
            save_checkpoint(self.last, {"format": "mlrkit-loop-checkpoint-1", "model": {}, **payload})

    def finish(self, results: dict[str, Any], keep_last: bool = False) -> None:
        """``results.json``; ``last.pt`` removed (its optimizer state is only for resuming)."""
        from mlrkit.utils import write_json

        if self.env.is_main:
            write_json(self.dir / "results.json", results)
            if not keep_last:
                self.last.unlink(missing_ok=True)

    def finished_results(self) -> dict[str, Any] | None:
        """On ``--resume`` of a finished run (``results.json``, no ``last.pt``): its results."""
        path = self.dir / "results.json"
        if self.resume and path.is_file() and not self.last.exists():
            return json.loads(path.read_text())
        return None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
