"""Imports every loss module so that each registers itself in ``LOSSES`` (a new file needs no list)."""

from mlrkit.registry import import_modules

import_modules("mlrkit.losses", ("basic", "regularized", "robust", "pseudo", "large_loss", "vlpl", "partial"),
               skip=("base", "zoo"))
