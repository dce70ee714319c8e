"""Optional experiment trackers: TensorBoard and MLflow (``pip install mlrkit[track]``).

Switched on in the config (``track.tensorboard: true``, ``track.mlflow: <tracking URI>``) or with
``mlrkit train --tensorboard`` / ``--mlflow URI``. The run directory is always written; a tracker
only mirrors it: per-epoch scalars (``train_loss``, ``val_map``, ``lr``), the final results
(test mAP, per-class AP, ECE before/after calibration), and for TensorBoard the test split's
per-class precision-recall curves. A tracker asked for but not installed is an error naming the
package, never silently skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.errors import ConfigError


class Trackers:
    """The trackers the config asks for (none by default)."""

    def __init__(self, cfg, out: Path, *, enabled: bool = True) -> None:
        self.tb = self.mlflow = None
        self.out = Path(out)
        if not enabled:
            return
        tc = cfg.track
        if tc.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(f"track.tensorboard needs the tensorboard package ({e}): pip install "
                                  "'mlrkit[track]' or pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(self.out / "tensorboard"))
            self.tb.add_text("config", "```\n" + cfg.to_yaml() + "\n```")
        if tc.mlflow:
            try:
                import mlflow
            except ImportError:
                raise ConfigError("track.mlflow needs the mlflow package: pip install 'mlrkit[track]' or pip install "
                                  "mlflow-skinny") from None
            self._mlflow = mlflow
            mlflow.set_tracking_uri(tc.mlflow)
            mlflow.set_experiment(tc.mlflow_experiment)
            self.mlflow = mlflow.start_run(run_name=self.out.name)
            flat = _flatten(cfg.to_dict())
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    def log_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        scalars = {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.mlflow is not None:
            self._mlflow.log_metrics(scalars, step=step)

    def log_results(self, results: dict[str, Any], run_info: dict[str, Any]) -> None:
        if self.tb is None and self.mlflow is None:
            return
        final = {"test_map": results["test_map"], "best_val_map": results["val_map"]}
        final.update({f"ece_{k}": v for k, v in results.get("calibration", {}).get("ece", {}).items()})
        final.update({f"test_{k}": v for k, v in results.get("test_metrics", {}).items()
                      if isinstance(v, (int, float))})
        ap = {f"ap/{c}": float(v) for c, v in results.get("per_class_ap", {}).items()
              if isinstance(v, (int, float)) and v == v}
        if self.tb is not None:
            for k, v in {**final, **ap}.items():
                self.tb.add_scalar(k, float(v), int(results.get("best_epoch", 0)))
            pr = getattr(self, "pr_data", None)
            if pr is not None:
                probs, targets, mask, names = pr
                for c, name in enumerate(names):
                    rows = slice(None) if mask is None else mask[:, c]
                    if targets[rows, c].any():
                        self.tb.add_pr_curve(f"pr/{name}", targets[rows, c].astype(bool), probs[rows, c],
                                             global_step=int(results.get("best_epoch", 0)))
        if self.mlflow is not None:
            self._mlflow.log_metrics({_mlflow_key(k): float(v) for k, v in {**final, **ap}.items()})
            for name in ("results.json", "run.json", "calibration.json", "config.yaml", "console.log"):
                if (self.out / name).is_file():
                    self._mlflow.log_artifact(str(self.out / name))
            if run_info.get("warnings"):
                self._mlflow.set_tag("warnings", " | ".join(run_info["warnings"])[:5000])

    def set_pr_data(self, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None, names: list[str]) -> None:
        """The test split's calibrated probabilities, for TensorBoard's PR curves."""
        self.pr_data = (probs, targets, mask, names)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.mlflow is not None:
            self._mlflow.end_run()
            self.mlflow = None


def _mlflow_key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . : /`` and spaces (``P@3`` -> ``P_at_3``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-.:/ ]", "_", name.replace("@", "_at_"))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
