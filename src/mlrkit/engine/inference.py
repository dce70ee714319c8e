"""Load a finished run and use it: evaluate on its dataset, predict on new inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.config import RunConfig
from mlrkit.data import Split
from mlrkit.engine.checkpoint import load_checkpoint, load_trainable_state
from mlrkit.engine.loaders import make_loader
from mlrkit.engine.rundir import saved_config
from mlrkit.engine.trainer import BuiltRun, build_for_task, predict_scores, resolve_device
from mlrkit.errors import DataError, MlrkitError
from mlrkit.methods import TaskInfo
from mlrkit.metrics import summary


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    built: BuiltRun
    device: torch.device
    checkpoint: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return self.built.task.class_names

    def scores(self, split: Split, batch_size: int = 256) -> np.ndarray:
        """Logits for every row; under torchrun each rank scores rows rank::world and all gather."""
        from mlrkit.engine import distributed as ddp

        ema = self.checkpoint.get("ema")
        if ema and not getattr(self, "_ema_loaded", False):
            sd = self.built.model.state_dict()
            sd.update({k: v.to(sd[k].device) for k, v in ema["shadow"].items()})
            self.built.model.load_state_dict(sd)
            self._ema_loaded = True
        env = ddp.current()
        rows = np.arange(len(split))[env.rank :: env.world] if env.enabled else np.arange(len(split))
        part = split.subset(rows) if env.enabled else split
        loader = make_loader(self.built.method, part, None, batch_size, train=False, seed=self.cfg.seed, cfg=self.cfg)
        local = predict_scores(self.built.model, loader, self.device)
        return ddp.gather_rows(rows, local.astype(np.float32), len(split), env) if env.enabled else local


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from ``config.yaml`` and ``best.pt`` (or ``last.pt``); no dataset needed."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MlrkitError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = saved_config(run_dir, resuming=False)
    ck = load_checkpoint(run_dir / f"{which}.pt")
    t = ck["task"]
    task = TaskInfo(class_names=t["class_names"], input_kind=t["input_kind"], feature_dim=t["feature_dim"],
                    image_size=t["image_size"], extras=t.get("extras", {}))
    built = build_for_task(cfg, task)
    load_trainable_state(built.model, ck["model"])
    from mlrkit.engine.distributed import current

    dev = resolve_device(device)
    if dev.type == "cuda" and current().enabled:
        dev = torch.device("cuda", current().local_rank)
    built.model.to(dev)
    return LoadedRun(run_dir, cfg, built, dev, ck)


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = ("val", "test"), threshold: float = 0.5,
                 k: int = 3) -> dict[str, dict[str, float]]:
    """Metrics of the best checkpoint on the run's own validation and test splits."""
    from mlrkit.engine.run_data import prepare_run_data

    run = load_run(run_dir)
    data = prepare_run_data(run.cfg)
    out: dict[str, dict[str, float]] = {}
    for name in splits:
        if name == "val":
            scores = run.scores(data.val)
            out["val"] = summary(scores, data.val_targets, data.val_mask, threshold, min(k, data.val.num_classes))
        elif name == "test":
            scores = run.scores(data.test)
            out["test"] = summary(scores, data.test.targets, data.test.known, threshold, min(k, data.test.num_classes))
        else:
            raise MlrkitError(f"unknown split {name!r} (val or test)")
    return out


def read_feature_inputs(paths: list[str | Path], dim: int) -> tuple[np.ndarray, list[str]]:
    """Feature rows from .npy ([N, D] or [D]), .npz (X, X_test or the only array) or .csv (one row each)."""
    rows, ids = [], []
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"input not found: {p}")
        if p.suffix == ".npy":
            x = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = next((k for k in ("X", "X_test", "features") if k in z.files), None)
                if key is None and len(z.files) == 1:
                    key = z.files[0]
                if key is None:
                    raise DataError(f"{p}: expected an array named X, X_test or features, found {z.files}")
                x = z[key]
        elif p.suffix == ".csv":
            try:
                x = np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float64)
            except ValueError as e:
                raise DataError(f"{p}: {e}") from None
        else:
            raise DataError(f"{p}: unsupported input type {p.suffix!r} for a features model (.npy, .npz, .csv)")
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != dim:
            raise DataError(f"{p}: features must be [N, {dim}], got {x.shape}")
        if not np.isfinite(x).all():
            r = int(np.argwhere(~np.isfinite(x))[0][0])
            raise DataError(f"{p}: row {r} contains NaN/inf")
        rows.append(x)
        ids += [f"{p.name}#{i}" for i in range(len(x))] if len(x) > 1 else [p.name]
    return np.concatenate(rows), ids


def predict_inputs(run: LoadedRun, inputs: list[str | Path]) -> tuple[list[str], np.ndarray]:
    """Probabilities [N, C] for input files (features for feature methods, images for image methods)."""
    task = run.built.task
    if task.input_kind == "features" and task.extras.get("feature_encoder"):
        split = _image_split(inputs, task.num_classes)
        run.built.method.attach_features({"predict": split}, device=run.device, progress=False)
        logits = run.scores(split)
        return split.ids, 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    if task.input_kind == "features":
        x, ids = read_feature_inputs(inputs, int(task.feature_dim or 0))
        split = Split(targets=np.zeros((len(x), task.num_classes), np.uint8), ids=ids, features=x)
    else:
        split = _image_split(inputs, task.num_classes)
    logits = run.scores(split)
    return split.ids, 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def _image_split(inputs: list[str | Path], num_classes: int) -> Split:
    from mlrkit.data import PathImageSource

    for p in inputs:
        if not Path(p).is_file():
            raise DataError(f"input image not found: {p}")
    return Split(targets=np.zeros((len(inputs), num_classes), np.uint8), ids=[str(p) for p in inputs],
                 images=PathImageSource(inputs))
