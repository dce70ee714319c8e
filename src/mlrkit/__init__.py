"""mlrkit: multi-label image recognition when most labels are missing.

Label conventions (everywhere): ground-truth ``targets`` are uint8 [N, C] in {0, 1};
observed labels are int8 [N, C] in {+1 known positive, 0 unknown, -1 known negative}.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "fit", "load_run"]


def __getattr__(name: str):
    """``mlrkit.fit`` and ``mlrkit.load_run`` (docs/python-api.md), imported on first use: ``import mlrkit``
    stays cheap for the command line."""
    if name in ("fit", "load_run"):
        from mlrkit.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlrkit' has no attribute {name!r}")
