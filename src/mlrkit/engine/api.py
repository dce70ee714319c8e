"""The Python API: train a run and use it, in two calls.

.. code-block:: python

    import mlrkit

    run = mlrkit.fit(dataset="manifest:photos.csv", method="finetune", out="runs/photos",
                     epochs=10, set={"model.name": "resnet18", "model.weights": "resnet18.pth"})
    pred = run.predict(["photos/new/", "one.jpg", pil_image, numpy_image, torch_image])
    pred.probs, pred.labels, pred.records()          # [N, C] calibrated probabilities, labels, dicts

    run = mlrkit.load_run("runs/photos")             # later, from any directory

``fit`` takes the same settings as ``mlrkit train`` (keyword arguments for the common flags, ``set``
for any config key, ``config`` for a recipe) and returns the trained run, loaded; ``load_run``
loads a finished run. :meth:`~mlrkit.engine.inference.LoadedRun.predict` accepts file paths,
folders, glob patterns, PIL images, numpy arrays and torch tensors (raw images: the run's own
preprocessing is applied), or feature rows for runs on fixed features. See ``docs/python-api.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlrkit.engine.inference import LoadedRun, Predictions
from mlrkit.engine.inference import load_run as _load_run

__all__ = ["LoadedRun", "Predictions", "fit", "load_run"]


def fit(dataset: str | None = None, *, out: str | Path, method: str | None = None, loss: str | None = None,
        labels: str | None = None, config: str | Path | None = None, epochs: int | None = None,
        batch_size: int | None = None, lr: float | None = None, seed: int | None = None,
        vl_model: str | None = None, root: str | Path | None = None,
        set: dict[str, Any] | list[str] | None = None, resume: bool = False, quiet: bool = True,
        device: str = "auto") -> LoadedRun:
    """Train like ``mlrkit train`` and return the finished run (see the module docstring).

    Unset arguments take the recipe's values, else the method's defaults (its own loss, epochs and
    input size; a pretrained backbone). ``set``: ``{"train.lr": 1e-4}`` or ``["train.lr=1e-4"]``.
    """
    import yaml

    from mlrkit.config import build_config
    from mlrkit.engine.trainer import train

    sets = list(set) if isinstance(set, list) else [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                                     .removesuffix("\n...") for k, v in (set or {}).items()]
    flags = {"seed": seed, "out": str(out), "data": {"name": dataset, "root": None if root is None else str(root)},
             "labels": {"protocol": labels}, "method": {"name": method} if method else None,
             "loss": {"name": loss} if loss else None,
             "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr}, "vl": {"model": vl_model}}
    cfg = build_config(config, flags, sets)
    train(cfg, resume=resume, quiet=quiet)
    return _load_run(cfg.out, device=device)


def load_run(path: str | Path, device: str = "auto") -> LoadedRun:
    """A finished run directory, ready to :meth:`~mlrkit.engine.inference.LoadedRun.predict`."""
    return _load_run(path, device=device)
