"""Real datasets shipped inside the package (see ``mlrkit/builtin/PROVENANCE.md``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mlrkit.data.base import DATASETS, MultiLabelDataset
from mlrkit.data.datasets.features import load_features_npz


def builtin_path(filename: str) -> Path:
    """Path of a file shipped in ``mlrkit/builtin``."""
    return Path(str(resources.files("mlrkit") / "builtin" / filename))


def _mulan(name: str, description: str):
    def build(root: Path | None = None) -> MultiLabelDataset:
        return load_features_npz(builtin_path(f"{name}.npz"), name=name, description=description)

    DATASETS.add(name, build, description)


_mulan("scene", "built-in, real: Mulan scene photos, 294 colour/texture features, 6 labels (1211/1196)")
_mulan("yeast", "built-in, real: Mulan yeast genes, 103 features, 14 functional labels (1500/917)")
_mulan("emotions", "built-in, real: Mulan emotions in music, 72 audio features, 6 labels (391/202)")
