"""Imports every loss module so that each registers itself in ``LOSSES``."""

from importlib import import_module

for _mod in ("basic", "regularized", "robust", "pseudo", "large_loss", "vlpl", "partial"):
    try:
        import_module(f"mlrkit.losses.{_mod}")
    except ModuleNotFoundError as e:  # a family not written yet must not hide the others
        if e.name != f"mlrkit.losses.{_mod}":
            raise
