"""Optimizers and schedules: parameter groups with a classifier lr multiplier, weight decay that
skips biases and normalisation weights, per-step cosine / OneCycle schedules with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlrkit.config import TrainConfig
from mlrkit.errors import ConfigError


def param_groups(
    model: nn.Module,
    classifier_params: list[nn.Parameter],
    cfg: TrainConfig,
    extra: list[tuple[list[nn.Parameter], float]] = (),
) -> list[dict]:
    """Groups: (backbone | classifier) x (decay | no decay), plus ``extra`` (params, lr multiplier).

    Groups with the same learning rate and weight decay are merged (with the defaults, one group):
    each group is a separate optimizer kernel per step, the main cost of a small model's step.
    """
    cls_ids = {id(p) for p in classifier_params}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        mult = cfg.classifier_lr_mult if id(p) in cls_ids else 1.0
        decay = cfg.weight_decay if p.ndim > 1 else 0.0  # biases and norm weights are 1-D: no weight decay
        groups.setdefault((mult, decay), []).append(p)
    for ps, mult in extra:
        for p in ps:
            if p.requires_grad:
                groups.setdefault((mult, 0.0), []).append(p)
    out = [{"params": ps, "lr": cfg.lr * mult, "lr_mult": mult, "weight_decay": decay}
           for (mult, decay), ps in groups.items()]
    if not out:
        raise ConfigError("the model has no trainable parameter")
    return out


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD with the fused implementation (one kernel for every parameter of a group)
    where torch has it for the parameters' device and dtype, else the multi-tensor (foreach) one.

    Measured on the 2-core CPU machine (MLP 294-256-6, one thread, us per step): single-tensor
    Adam 1,040-1,650, foreach 1,260-1,580, fused 450-730 (``docs/benchmarks.md``).
    """
    name = cfg.optimizer.lower()
    classes = {"adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {}),
               "sgd": (torch.optim.SGD, {"momentum": cfg.momentum})}
    if name not in classes:
        raise ConfigError(f"train.optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}")
    cls, kw = classes[name]
    params = [p for g in groups for p in g["params"]]
    if _fused_ok(params):
        try:
            return cls(groups, lr=cfg.lr, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # an older torch without fused kernels for this device
            pass
    return cls(groups, lr=cfg.lr, foreach=True, **kw)


def _fused_ok(params: list[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step schedule: ``none`` (constant after warm-up), ``cosine`` or ``onecycle``.

    The schedule spans ``schedule_epochs`` (default ``epochs``; SCPNet's COCO code sets up an 80-epoch
    one-cycle and stops after 60). Warm-up: ``linear`` (lr x (step+1)/warm) or ``constant`` (every group
    at ``warmup_lr``, then the schedule from its start: Dassl's ConstantWarmupScheduler, which DualCoOp
    and PositiveCoOp use). OneCycle: torch's ``OneCycleLR`` with ``pct_start``.
    """
    sched_epochs = cfg.epochs if cfg.schedule_epochs is None else int(cfg.schedule_epochs)
    if sched_epochs < cfg.epochs:
        raise ConfigError(f"train.schedule_epochs ({sched_epochs}) must be >= train.epochs ({cfg.epochs})")
    total = max(1, sched_epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    name = cfg.scheduler.lower()
    if cfg.warmup not in ("linear", "constant"):
        raise ConfigError(f"train.warmup must be linear or constant, got {cfg.warmup!r}")
    if name == "onecycle":
        if not 0.0 < cfg.pct_start < 1.0:
            raise ConfigError(f"train.pct_start must be in (0, 1), got {cfg.pct_start}")
        max_lr = [g["lr"] for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=cfg.pct_start)
    if name not in ("none", "cosine"):
        raise ConfigError(f"train.scheduler must be none, cosine or onecycle, got {cfg.scheduler!r}")
    if name == "none" and warm == 0:
        return None
    constant = cfg.warmup == "constant"
    if constant and not cfg.warmup_lr > 0:
        raise ConfigError(f"train.warmup_lr must be > 0, got {cfg.warmup_lr}")
    bases = [float(g["lr"]) for g in opt.param_groups]

    def factor(step: int, base: float) -> float:
        if step < warm:
            return (cfg.warmup_lr / base if base > 0 else 0.0) if constant else (step + 1) / warm
        if name == "none":
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, [lambda step, b=b: factor(step, b) for b in bases])


class EMA:
    """Exponential moving average of a model's floating-point state (decay d): w_ema = d w_ema + (1-d) w."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, d: dict) -> None:
        self.decay = d["decay"]
        self.shadow = {k: v.clone() for k, v in d["shadow"].items()}

    @torch.no_grad()
    def swap_into(self, model: nn.Module) -> dict:
        """Load EMA weights into ``model``; returns the originals so they can be restored."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict({**model.state_dict(), **self.shadow})
        return backup
