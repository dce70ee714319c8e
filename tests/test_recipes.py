"""Every recipe under configs/ parses, names registered things, and builds its method and loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrkit.config import build_config, load_recipe

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# configs/negation/ holds flags of `mlrkit negation` commands (tested in test_negation.py), not train recipes
# Overlays are not runnable by themselves (no method; sections of the method they are layered onto);
# every overlay is used as a base by recipes in RECIPES, which test it in context.
OVERLAYS = {"scpnet/reference.yaml", "vlpl/reference.yaml"}
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] != "negation"
                 and str(p.relative_to(CONFIGS)) not in OVERLAYS)


def test_overlays_are_used_by_recipes():
    for overlay in OVERLAYS:
        users = [p for p in RECIPES if Path(overlay).name in p.read_text() and "base:" in p.read_text()]
        assert users, f"overlay {overlay} is the base of no recipe"


def test_there_are_recipes():
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_builds(path):
    import mlrkit.data.datasets  # noqa: F401
    from mlrkit.data import DATASETS
    from mlrkit.engine.trainer import build_run_loss
    from mlrkit.methods import build_method

    cfg = build_config(path)
    assert cfg.data.name.partition(":")[0] in DATASETS
    build_method(cfg)
    build_run_loss(cfg)


def test_demo_recipe_matches_the_demo():
    from mlrkit.config import deep_merge
    from mlrkit.engine.demo import DEMO_RECIPE

    assert deep_merge({}, load_recipe(CONFIGS / "demo" / "mlp.yaml")) == DEMO_RECIPE


def test_cole_dataset_recipes_set_expected_positives():
    from mlrkit.engine.trainer import build_run_loss

    cfg = build_config(CONFIGS / "cole" / "coco2014.yaml", {"loss": {"name": "epr"}})
    assert build_run_loss(cfg).expected_num_pos == 2.9
    assert cfg.train.classifier_lr_mult == 10.0 and cfg.data.image_size == 448
