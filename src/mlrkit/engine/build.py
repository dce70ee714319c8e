"""Building a run's model and loss for a task, and scoring splits with it.

One module shared by the Trainer (fit/validate/test), ``evaluate`` and ``predict``
(:mod:`mlrkit.engine.inference`), so that neither imports the other for these and the
row-sharded scoring under ``torchrun`` exists once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlrkit import losses
from mlrkit.config import RunConfig
from mlrkit.engine import distributed as ddp
from mlrkit.engine.devices import resolve_device  # noqa: F401 - re-exported (evaluate, predict)
from mlrkit.engine.loaders import make_loader
from mlrkit.errors import MlrkitError
from mlrkit.methods import Method, TaskInfo, build_method


@dataclass
class BuiltRun:
    """A method, its model and loss, built for a task (shared by train, evaluate and predict)."""

    method: Method
    model: nn.Module
    task: TaskInfo


def build_for_task(cfg: RunConfig, task: TaskInfo, method: Method | None = None) -> BuiltRun:
    """The configured method's model for ``task`` (the method is built from ``cfg`` unless given)."""
    method = method or build_method(cfg)
    if method.input_kind == "features" and task.feature_dim is None:
        raise MlrkitError(f"method {cfg.method.name!r} needs features; the dataset has images only "
                          "(set model.name to a backbone for frozen features)")
    task.input_kind = method.input_kind
    return BuiltRun(method, method.build_model(task), task)


def build_run_loss(cfg: RunConfig, method: Method | None = None) -> losses.MultiLabelLoss:
    """The configured loss, given the run context it declares it takes.

    A loss class lists in ``run_context`` the facts of the run it accepts as constructor
    arguments (``expected_num_pos``: ``data.expected_num_pos``, EPR/ROLE's k; ``num_epochs``:
    ``train.epochs``, schedules spanning the run such as EM+APL's); a value set explicitly in the
    ``loss`` section wins.
    """
    import mlrkit.losses.zoo  # noqa: F401

    params = dict(cfg.loss.params)
    context = run_context(cfg)
    for key in losses.LOSSES.get(cfg.loss.name).run_context:
        if context.get(key) is not None:
            params.setdefault(key, context[key])
    return losses.build(cfg.loss.name, **params)


def run_context(cfg: RunConfig) -> dict:
    """Facts of the run a loss may take (see :func:`build_run_loss`)."""
    return {"expected_num_pos": cfg.data.expected_num_pos, "num_epochs": max(1, cfg.train.epochs)}


@torch.no_grad()
def predict_scores(
    model: nn.Module, loader, device: torch.device, progress: bool = False, desc: str = ""
) -> np.ndarray:
    """Logits for every row of a (non-shuffled) loader, in order."""
    model.eval()
    out = []
    channels_last = getattr(model, "_mlrkit_channels_last", False)
    from mlrkit.engine.progress import progress as progress_bar

    for batch in progress_bar(loader, desc=desc, enabled=progress):
        x = batch["inputs"].to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def score_split(method: Method, model: nn.Module, split, observed: np.ndarray | None, *, batch_size: int,
                device: torch.device, cfg: RunConfig, progress: bool = False, desc: str = "",
                loaders: dict | None = None) -> np.ndarray:
    """Logits of every row of ``split``; under ``torchrun`` each rank scores rows rank::world and all gather.

    ``loaders`` (a dict the caller keeps for as long as its splits live, e.g. a Trainer's) caches each
    split's loader: a run scores its validation split every epoch with the same loader.
    """
    env = ddp.current()
    if not env.enabled:
        key = (id(split), id(observed))
        loader = loaders.get(key) if loaders is not None else None
        if loader is None:
            loader = make_loader(method, split, observed, batch_size, train=False, seed=cfg.seed, cfg=cfg,
                                 device=device)
            if loaders is not None:
                loaders[key] = loader
        return predict_scores(model, loader, device, progress, desc)
    rows = np.arange(len(split))[env.rank :: env.world]
    part = split.subset(rows)
    obs = None if observed is None else observed[rows]
    loader = make_loader(method, part, obs, batch_size, train=False, seed=cfg.seed, cfg=cfg)
    local = predict_scores(model, loader, device, progress, desc) if len(rows) else \
        np.zeros((0, split.num_classes), np.float32)
    return ddp.gather_rows(rows, local.astype(np.float32), len(split), env)
