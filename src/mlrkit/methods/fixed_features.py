"""Methods on fixed (precomputed or cached) features: ``linear`` and ``mlp``.

Cole et al.'s ``linear_fixed_features`` mode. Features are standardised with training-split
statistics by default; the statistics live in the model (buffers), so checkpoints carry them
and ``predict`` applies them again.
"""

from __future__ import annotations

from torch import nn

from mlrkit.errors import MlrkitError
from mlrkit.features.options import FeaturesSection
from mlrkit.methods.base import METHODS, Method, TaskInfo
from mlrkit.models.heads import LinearHead, MLPHead, Standardize


class _FeatureMethod(Method):
    input_kind = "features"
    uses_model = True  # image datasets: features of the frozen backbone model.name
    config_sections = {"features": FeaturesSection}

    def _check(self, task: TaskInfo) -> int:
        if task.feature_dim is None:
            raise MlrkitError(
                f"method {type(self).__name__} works on features, but the dataset has none; "
                "use a features dataset (e.g. scene, features:FILE.npz) or an image dataset with --set model.name=…"
            )
        return task.feature_dim

    def init_from_train(self, model: nn.Module, data, loss, *, device, resuming: bool = False) -> None:
        norm = getattr(model, "norm", None)
        if isinstance(norm, Standardize):
            norm.fit(data.train.features)

    def attach_features(self, splits: dict, *, device, progress: bool = True) -> None:
        """Image datasets: features of the frozen backbone ``model.name`` (Cole's linear_fixed_features)."""
        from mlrkit.methods.image import frozen_features

        frozen_features(self.cfg, splits, device=device, progress=progress, warn=self.warn)


@METHODS.register("linear", "linear classifier on fixed features, standardised (Cole et al.'s linear probe)")
class LinearMethod(_FeatureMethod):
    def __init__(self, standardize: bool = True) -> None:
        super().__init__()
        self.standardize = standardize

    def build_model(self, task: TaskInfo) -> nn.Module:
        return LinearHead(self._check(task), task.num_classes, standardize=self.standardize)


@METHODS.register("mlp", "MLP (Linear-ReLU-Dropout x L, then linear) on fixed, standardised features")
class MLPMethod(_FeatureMethod):
    def __init__(
        self, hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1, standardize: bool = True
    ) -> None:
        super().__init__()
        self.hidden_dim, self.num_layers, self.dropout = int(hidden_dim), int(num_layers), float(dropout)
        self.standardize = standardize

    def build_model(self, task: TaskInfo) -> nn.Module:
        return MLPHead(
            self._check(task), task.num_classes, self.hidden_dim, self.num_layers, self.dropout, self.standardize
        )
