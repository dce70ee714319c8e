"""Dataset adapters; importing this package registers them all in ``mlrkit.data.DATASETS``."""

from importlib import import_module

for _mod in ("builtin", "features", "voc", "coco", "nuswide", "cub", "openimages", "manifest", "fashion_mosaic", "lvis",
             "chexpert", "vaw"):
    try:
        import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as e:  # an adapter module not written yet must not hide others
        if e.name != f"{__name__}.{_mod}":
            raise
