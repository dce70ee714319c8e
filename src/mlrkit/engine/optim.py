"""Optimizers and schedules: parameter groups with a classifier lr multiplier, weight decay that
skips biases and normalisation weights, per-step cosine / OneCycle schedules with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import optimizer as _torch_optimizer

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


class LeanStep:
    """``optimizer.step()`` and ``zero_grad(set_to_none=True)`` with less Python per step.

    For a fused Adam/AdamW with plain settings (one device and dtype per group, float learning rate, no
    amsgrad/maximize/capturable/differentiable, no step hooks), :meth:`step` calls the same fused kernel
    that ``torch.optim.Adam.step`` ends in, on the optimizer's own state tensors: per group,
    ``step_t += 1`` then ``torch._fused_adam_`` (``_fused_adamw_`` for AdamW), i.e. Kingma & Ba's update

        m_t = b1 m_{t-1} + (1 - b1) g_t,  v_t = b2 v_{t-1} + (1 - b2) g_t^2,
        w_t = w_{t-1} - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

    (plus L2 or decoupled weight decay). What it skips is ``torch.optim``'s per-step bookkeeping
    (profiler ranges, hook checks, re-grouping the tensors by device), about 0.3 ms of a 1.5 ms demo
    MLP step on the 2-core CPU. The parameters and the optimizer's state (hence checkpoints) are
    bit-identical to ``optimizer.step()`` (tested). Anything else, the first step (torch creates the
    state), or a hook registered later goes through ``optimizer.step()`` itself.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.opt = optimizer
        self._scan()

    def _scan(self) -> None:
        groups = getattr(self.opt, "param_groups", [])
        self.n_groups = len(groups)
        self.params = [p for g in groups for p in g.get("params", ())]
        self.kernels = [_fused_kernel(self.opt, g) for g in groups]
        self.lean = all(k is not None for k in self.kernels)

    def zero_grad(self) -> None:
        if len(getattr(self.opt, "param_groups", ())) != self.n_groups:  # a group was added since
            self._scan()
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        opt = self.opt
        if len(getattr(opt, "param_groups", ())) != self.n_groups:
            self._scan()
        if not self.lean or _has_step_hooks(opt):
            opt.step()
            return
        calls = []
        for group, kernel in zip(opt.param_groups, self.kernels):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [opt.state.get(p) for p in params]
            if not all(states) or not isinstance(group["lr"], float):
                opt.step()  # torch creates the state on the first step (or a scheduler made lr a tensor)
                return
            calls.append((kernel, group, params, states))
        with torch.no_grad():
            for i, (kernel, group, params, states) in enumerate(calls):
                steps = [s["step"] for s in states]
                torch._foreach_add_(steps, 1)
                b1, b2 = group["betas"]
                try:
                    kernel(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                           [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=group["lr"], beta1=b1,
                           beta2=b2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                           grad_scale=None, found_inf=None)
                except (TypeError, RuntimeError):
                    # a torch whose private kernel takes other arguments: nothing was updated by this call,
                    # so undo its step count and use torch's own step from now on (only safe before any
                    # group of this step was updated, which is the case for a signature mismatch)
                    torch._foreach_sub_(steps, 1)
                    if i > 0:
                        raise
                    self.lean = False
                    opt.step()
                    return


def _fused_kernel(opt: torch.optim.Optimizer, group: dict):
    """The fused kernel :class:`LeanStep` may call for ``group``, or None (then ``opt.step()``)."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or not group.get("fused"):
        return None
    if any(group.get(k) for k in ("amsgrad", "maximize", "capturable", "differentiable")):
        return None
    if not all(isinstance(b, float) for b in group["betas"]) or not isinstance(group["lr"], float):
        return None
    if len({(p.device, p.dtype) for p in group["params"]}) > 1:
        return None
    decoupled = group.get("decoupled_weight_decay", type(opt) is torch.optim.AdamW)
    return getattr(torch, "_fused_adamw_" if decoupled else "_fused_adam_", None)


def _has_step_hooks(opt: torch.optim.Optimizer) -> bool:
    return bool(getattr(opt, "_optimizer_step_pre_hooks", None) or getattr(opt, "_optimizer_step_post_hooks", None)
                or getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
                or getattr(_torch_optimizer, "_global_optimizer_post_hooks", None))


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
