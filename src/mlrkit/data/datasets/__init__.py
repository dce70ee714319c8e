"""Dataset adapters; importing this package registers them all in ``mlrkit.data.DATASETS``."""

from mlrkit.registry import import_modules

# the listed adapters first (the order `mlrkit list datasets` shows), then any other module of this package
import_modules(__name__, ("builtin", "features", "voc", "coco", "nuswide", "cub", "openimages", "manifest",
                          "fashion_mosaic", "lvis", "chexpert", "vaw"))
