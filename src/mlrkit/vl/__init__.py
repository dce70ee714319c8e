"""Vision-language backends on open_clip: ``mlrkit.vl.load(spec) -> VisionLanguageModel``.

See ``docs/vl-backends.md`` for the specs, what the model exposes, local checkpoints, offline
behaviour and the definition of the dense (region) features. open_clip is imported only when a
model is built, so importing this package (e.g. for ``mlrkit list``) stays cheap.
"""

from mlrkit.vl.backends import (
    CUSTOM_ARCH,
    VL_BACKENDS,
    build_open_clip,
    builtin_dir,
    clear_frozen_cache,
    load,
    load_frozen,
    load_mosaic_clip,
    load_vl_checkpoint,
    native_image_size,
    tiny_config,
)
from mlrkit.vl.checkpoint import read_weights, save_vl_checkpoint, sidecar_path, write_vl_config
from mlrkit.vl.model import TEMPLATES, VisionLanguageModel, zeroshot_scores

__all__ = [
    "CUSTOM_ARCH",
    "TEMPLATES",
    "VL_BACKENDS",
    "VisionLanguageModel",
    "build_open_clip",
    "builtin_dir",
    "clear_frozen_cache",
    "load",
    "load_frozen",
    "load_mosaic_clip",
    "load_vl_checkpoint",
    "native_image_size",
    "read_weights",
    "save_vl_checkpoint",
    "sidecar_path",
    "tiny_config",
    "write_vl_config",
    "zeroshot_scores",
]
