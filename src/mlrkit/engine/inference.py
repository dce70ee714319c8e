"""Load a finished run and use it: evaluate on its dataset, predict on new inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.config import RunConfig
from mlrkit.data import Split
from mlrkit.engine.build import BuiltRun, build_for_task, resolve_device, score_split
from mlrkit.engine.checkpoint import load_checkpoint, load_trainable_state
from mlrkit.engine.rundir import config_diff, saved_config
from mlrkit.errors import DataError, MlrkitError
from mlrkit.methods import TaskInfo
from mlrkit.metrics import MultiLabelMeter


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
        ema = self.checkpoint.get("ema")
        if ema and not getattr(self, "_ema_loaded", False):
            sd = self.built.model.state_dict()
            sd.update({k: v.to(sd[k].device) for k, v in ema["shadow"].items()})
            self.built.model.load_state_dict(sd)
            self._ema_loaded = True
        return score_split(self.built.method, self.built.model, split, None, batch_size=batch_size,
                           device=self.device, cfg=self.cfg)


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from ``config.yaml`` and ``best.pt`` (or ``last.pt``); no dataset needed."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MlrkitError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = saved_config(run_dir, resuming=False)
    ck = load_checkpoint(run_dir / f"{which}.pt")
    diff = config_diff(ck.get("config") or {}, cfg.to_dict(), ("out", "train.epochs"))
    if diff:
        raise MlrkitError(f"{run_dir / f'{which}.pt'} was not trained with {run_dir / 'config.yaml'} "
                          f"({'; '.join(diff[:3])}): a checkpoint of another run?")
    t = ck["task"]
    task = TaskInfo(class_names=t["class_names"], input_kind=t["input_kind"], feature_dim=t["feature_dim"],
                    image_size=t["image_size"], extras=t.get("extras", {}))
    built = build_for_task(cfg, task)
    load_trainable_state(built.model, ck["model"], run_dir / f"{which}.pt")
    from mlrkit.engine.distributed import current

    dev = resolve_device(device)
    if dev.type == "cuda" and current().enabled:
        dev = torch.device("cuda", current().local_rank)
    built.model.to(dev)
    return LoadedRun(run_dir, cfg, built, dev, ck)


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = ("val", "test"), threshold: float = 0.5,
                 k: int = 3) -> dict[str, dict]:
    """Metrics of the best checkpoint on the run's own validation and test splits, over their known
    entries: the :func:`mlrkit.metrics.summary` metrics plus ``per_class`` (AP, AUROC, known
    positives/negatives per class) and ``unscored_classes``."""
    return evaluate_run_report(run_dir, splits, threshold, k, grouped=False)[0]


def evaluate_grouped(run_dir: str | Path) -> dict[str, Any] | None:
    """Grouped test mAP of a finished run's best checkpoint (None when the run's method/dataset has it off)."""
    return evaluate_run_report(run_dir, (), grouped=True)[1]


def evaluate_run_report(run_dir: str | Path, splits: tuple[str, ...] = ("val", "test"), threshold: float = 0.5,
                        k: int = 3, *, grouped: bool = True,
                        plots: str | Path | None = None,
                        device: str = "auto") -> tuple[dict[str, dict], dict | None]:
    """:func:`evaluate_run`'s metrics and the grouped test mAP (:mod:`mlrkit.engine.reports`; None when
    off), from one load of the run (on ``device``) and its data. ``plots``: a directory for the test
    split's PR/ROC curves per class and reliability diagram (:mod:`mlrkit.analysis.curves`)."""
    from mlrkit.engine.reports import grouped_report
    from mlrkit.engine.run_data import prepare_run_data

    run = load_run(run_dir, device=device)
    if not splits and (not grouped or run.built.method.report_groups() == 0):
        return {}, None
    data = prepare_run_data(run.cfg)
    # what the Trainer does before scoring: e.g. frozen-backbone features of a linear probe on images
    run.built.method.prepare_data(data, device=run.device, progress=False)
    out: dict[str, dict] = {}
    test_scores = None
    for name in splits:
        if name == "val":
            split, targets, mask = data.val, data.val_targets, data.val_mask
        elif name == "test":
            split, targets, mask = data.test, data.test.targets, data.test.known
        else:
            raise MlrkitError(f"unknown split {name!r} (val or test)")
        scores = run.scores(split)
        if name == "test":
            test_scores = scores
        meter = MultiLabelMeter(data.class_names, threshold, k)
        meter.update(_metric_scores(run, scores), targets, mask)
        out[name] = meter.compute()
        out[name]["known_fraction"] = 1.0 if mask is None else float(np.asarray(mask).mean())
        if plots is not None and name == "test":
            from mlrkit.analysis.curves import write_curve_plots

            probs = _metric_scores(run, scores)
            if probs.min() < 0 or probs.max() > 1:
                probs = 1.0 / (1.0 + np.exp(-probs.astype(np.float64)))
            out[name]["plots"] = [str(p) for p in write_curve_plots(probs, targets, mask, data.class_names, plots)]
    report = None
    if grouped:
        report = grouped_report(run.built.method, data,
                                (lambda: test_scores) if test_scores is not None else (lambda: run.scores(data.test)))
    return out, report


def read_feature_inputs(paths: list[str | Path], dim: int) -> tuple[np.ndarray, list[str]]:
    """Feature rows from .npy ([N, D] or [D]), .npz (X, X_test or the only array) or .csv (one row each)."""
    import zipfile

    rows, ids = [], []
    for p in map(Path, paths):
        if p.is_dir():
            raise DataError(f"input {p} is a directory; give feature files (.npy, .npz, .csv)")
        if not p.is_file():
            raise DataError(f"input not found: {p}")
        if p.suffix not in (".npy", ".npz", ".csv"):
            raise DataError(f"{p}: unsupported input type {p.suffix!r} for a features model (.npy, .npz, .csv)")
        try:
            x = _read_feature_file(p)
            x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        except DataError:
            raise
        except (ValueError, TypeError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{p}: not a readable numeric feature file ({str(e).splitlines()[0][:200]})") from None
        if x.ndim != 2 or x.shape[1] != dim:
            raise DataError(f"{p}: features must be [N, {dim}], got {x.shape}")
        if not np.isfinite(x).all():
            r = int(np.argwhere(~np.isfinite(x))[0][0])
            raise DataError(f"{p}: row {r} contains NaN/inf")
        rows.append(x)
        ids += [f"{p.name}#{i}" for i in range(len(x))] if len(x) > 1 else [p.name]
    return np.concatenate(rows), ids


def _read_feature_file(p: Path) -> np.ndarray:
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("X", "X_test", "features") if k in z.files), None)
            if key is None and len(z.files) == 1:
                key = z.files[0]
            if key is None:
                raise DataError(f"{p}: expected an array named X, X_test or features, found {z.files}")
            return z[key]
    return np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float64)


def predict_inputs(run: LoadedRun, inputs: list[str | Path]) -> tuple[list[str], np.ndarray]:
    """Probabilities [N, C] for input files (features for feature methods, images for image methods)."""
    task = run.built.task
    if task.input_kind == "features" and task.extras.get("feature_encoder"):
        split = _image_split(inputs, task.num_classes)
        run.built.method.attach_features({"predict": split}, device=run.device, progress=False)
        return split.ids, run_probabilities(run, run.scores(split))
    if task.input_kind == "features":
        x, ids = read_feature_inputs(inputs, int(task.feature_dim or 0))
        split = Split(targets=np.zeros((len(x), task.num_classes), np.uint8), ids=ids, features=x)
    else:
        split = _image_split(inputs, task.num_classes)
    return split.ids, run_probabilities(run, run.scores(split))


def _metric_scores(run: LoadedRun, logits: np.ndarray) -> np.ndarray:
    """What the metrics read: the logits, or the calibrated probabilities of a loss with an inverse link (spa)."""
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss
    from mlrkit.losses import LOSSES

    return run_probabilities(run, logits) if hasattr(LOSSES.get(run.cfg.loss.name), "probabilities") else logits


def run_probabilities(run: LoadedRun, logits: np.ndarray) -> np.ndarray:
    """The run's probabilities: its loss's inverse link where it has one (``spa``), else the sigmoid."""
    from mlrkit.losses import probabilities

    return probabilities(run.cfg.loss.name, dict(run.cfg.loss.params), logits)


def _image_split(inputs: list[str | Path], num_classes: int) -> Split:
    from mlrkit.data import PathImageSource

    for p in inputs:
        if Path(p).is_dir():
            raise DataError(f"input {p} is a directory; give image files (e.g. {Path(p) / '*.png'})")
        if not Path(p).is_file():
            raise DataError(f"input image not found: {p}")
    return Split(targets=np.zeros((len(inputs), num_classes), np.uint8), ids=[str(p) for p in inputs],
                 images=PathImageSource(inputs, skip_hint=False))
