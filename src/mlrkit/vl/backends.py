"""Vision-language backends: ``mlrkit.vl.load(spec)`` and the ``VL_BACKENDS`` registry.

Specs (see ``docs/vl-backends.md``):

* ``openclip:<arch>@<tag>``: open_clip architecture with a pretrained tag (downloaded by open_clip
  when the network allows; with ``HF_HUB_OFFLINE=1`` only the local caches are looked at);
* ``openclip:<arch>@<file>``: a local checkpoint for an open_clip architecture;
* ``openclip:custom@<file>``: a checkpoint that stores its own architecture (mlrkit's format, or
  any weights file with a ``<stem>.json`` config next to it), e.g. written by ``save_vl_checkpoint``;
* ``openclip:<arch>``: random weights, with a warning (benchmarks, smoke tests);
* ``tiny`` / ``tiny:vit`` / ``tiny:rn``: a small random CLIP built offline, for tests;
* ``mosaic-clip``: the small CLIP trained by ``mlrkit vl pretrain``, shipped in ``mlrkit/builtin``.
"""

from __future__ import annotations

import difflib
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from mlrkit.errors import MlrkitError
from mlrkit.registry import Registry
from mlrkit.vl.checkpoint import (
    FORMAT,
    WeightsFile,
    expand_sparse_tokens,
    fit_state_dict,
    read_weights,
    resolve_configs,
    sidecar_path,
)
from mlrkit.vl.model import VisionLanguageModel, build_open_clip, require_open_clip  # noqa: F401 - re-exported

BackendBuilder = Callable[[str | None, str, int], VisionLanguageModel]
"""``builder(argument after 'name:' or None, full spec, seed) -> VisionLanguageModel``."""

VL_BACKENDS: Registry[BackendBuilder] = Registry("vl-backend")

CUSTOM_ARCH = "custom"
MOSAIC_CLIP_WEIGHTS = "mosaic_clip.pt"
#: the VL models shipped in mlrkit/builtin: spec -> weights file (+ the JSON sidecar of the same stem)
BUILTIN_VL_WEIGHTS = {"mosaic-clip": MOSAIC_CLIP_WEIGHTS, "mosaic-clip-heldout": "mosaic_clip_heldout.pt"}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar", ".npz")


def load(spec: str, *, seed: int = 0, device: str | torch.device | None = None) -> VisionLanguageModel:
    """Build a vision-language model from a spec string (module docstring; ``docs/vl-backends.md``).

    Args:
        spec: ``openclip:<arch>[@<tag or file>]``, ``openclip:custom@<file>``, ``tiny[:vit|:rn]``
            or ``mosaic-clip``.
        seed: seeds the random initialisation (random-weight specs are reproducible; the global
            torch RNG is left untouched).
        device: where to put the model (default: CPU).

    Returns:
        A :class:`VisionLanguageModel` in eval mode.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise MlrkitError(f"a vision-language spec must be a non-empty string, got {spec!r}; "
                          f"backends: {', '.join(VL_BACKENDS.names())}")
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    builder = VL_BACKENDS.get(name)
    model = builder(arg if sep else None, spec, int(seed))
    if device is not None:
        model = model.to(device)
    return model


_FROZEN: dict[tuple[str, int], VisionLanguageModel] = {}


def load_frozen(spec: str, *, seed: int = 0, device: str | torch.device | None = None) -> VisionLanguageModel:
    """``load(spec, seed=seed).freeze()``, loaded once per process and shared (a sweep's runs, the
    ``pseudo-label`` command and every method that uses a frozen VL model); moved to ``device`` if given.

    The model is frozen (no gradients; checkpoints leave it out), so sharing it is safe.
    """
    key = (str(spec).strip(), int(seed))
    if key not in _FROZEN:
        _FROZEN[key] = load(spec, seed=seed).freeze()
    model = _FROZEN[key]
    return model.to(device) if device is not None else model


def clear_frozen_cache() -> None:
    """Forget the models loaded by :func:`load_frozen` (frees their memory once nothing uses them)."""
    _FROZEN.clear()


# ---------------------------------------------------------------------------- building blocks
def _preprocess_cfg(clip: nn.Module, overlay: dict[str, Any] | None) -> dict[str, Any]:
    """open_clip's default preprocessing, overlaid with a tag's / file's, at the tower's image size."""
    oc = require_open_clip()
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), overlay or {})
    size = getattr(clip.visual, "image_size", None)
    if size is not None:
        cfg["size"] = size
    oc.set_model_preprocess_cfg(clip, cfg)
    return cfg


def _tokenizer_factory(model_cfg: dict[str, Any], spec: str, arch: str | None) -> Callable[[], Any]:
    """A function creating the model's tokenizer on first use (the BPE vocabulary takes ~0.2 s to read)."""
    text = dict(model_cfg.get("text_cfg", {}))

    def make() -> Any:
        oc = require_open_clip()
        context_length = int(text.get("context_length", 77))
        try:
            if arch is not None:
                tok = oc.get_tokenizer(arch, context_length=context_length)
            elif text.get("hf_tokenizer_name"):
                from open_clip.tokenizer import HFTokenizer

                tok = HFTokenizer(text["hf_tokenizer_name"], context_length=context_length,
                                  tokenizer_mode=text.get("tokenizer_mode"), **(text.get("tokenizer_kwargs") or {}))
            else:
                tok = oc.SimpleTokenizer(context_length=context_length, **(text.get("tokenizer_kwargs") or {}))
        except Exception as e:  # noqa: BLE001 - HF tokenizers raise many types when files are missing
            raise MlrkitError(f"{spec}: cannot create the tokenizer ({type(e).__name__}: {e}); Hugging Face "
                              "tokenizers need their files, which cannot be downloaded offline") from None
        vocab = len(getattr(tok, "encoder", {}))
        if vocab and vocab > int(text.get("vocab_size", vocab)):
            raise MlrkitError(f"{spec}: the tokenizer has {vocab} tokens but the text tower only "
                              f"{text.get('vocab_size')} embeddings")
        return tok

    return make


def _wrap(clip: nn.Module, *, spec: str, model_cfg: dict[str, Any], pp_overlay: dict[str, Any] | None,
          arch: str | None) -> VisionLanguageModel:
    pp = _preprocess_cfg(clip, pp_overlay)
    return VisionLanguageModel(clip, spec=spec, model_cfg=model_cfg, preprocess_cfg=pp,
                               tokenizer_factory=_tokenizer_factory(model_cfg, spec, arch)).eval()


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as the Hugging Face libraries read it (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _builtin_config(arch: str) -> tuple[dict[str, Any], str]:
    """open_clip's config for a built-in architecture name, or an error listing close names."""
    oc = require_open_clip()
    if not arch:
        raise MlrkitError("openclip: missing architecture name, e.g. openclip:ViT-B-16@openai "
                          "(open_clip.list_models() lists them)")
    if ":" in arch:
        raise MlrkitError(f"openclip:{arch}: hf-hub:/local-dir: model names are not supported (no downloads); "
                          "pass an architecture name and a local file: openclip:<arch>@/path/to/weights.pt")
    name = arch.replace("/", "-")  # OpenAI spelling ViT-B/16 -> ViT-B-16, as open_clip does
    names = oc.list_models()
    if name not in names:
        lower = {n.lower(): n for n in names}
        close = ([lower[name.lower()]] if name.lower() in lower else []) + \
            difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        close = list(dict.fromkeys(close))
        hint = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(names[:5])}"
        raise MlrkitError(f"unknown open_clip architecture {arch!r} ({hint}); open_clip.list_models() lists all "
                          f"{len(names)}, and openclip:custom@<file> loads a file that stores its own architecture")
    return oc.get_model_config(name), name


def _looks_like_path(source: str) -> bool:
    return ("/" in source or os.sep in source or source.startswith(("~", "."))
            or Path(source).suffix.lower() in _WEIGHT_SUFFIXES)


def _describe_tag_source(cfg: dict[str, Any]) -> str:
    parts = []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        parts.append(f"Hugging Face Hub repo {repo}, file {filename or 'open_clip_pytorch_model.bin'}")
    if cfg.get("url"):
        parts.append(f"URL {cfg['url']}")
    return " or ".join(parts) or "unknown source"


def _cached_tag_weights(cfg: dict[str, Any]) -> Path | None:
    """The tag's weights if already in open_clip's local caches; purely local, never touches the network."""
    if cfg.get("file"):
        p = Path(cfg["file"])
        return p if p.is_file() else None
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = os.path.split(cfg["hf_hub"])
            filename = filename or "open_clip_pytorch_model.bin"
            candidates = [filename]
            if filename == "open_clip_pytorch_model.bin":
                candidates.insert(0, "open_clip_model.safetensors")
            elif filename.endswith((".bin", ".pth")):
                candidates.insert(0, filename[:-4] + ".safetensors")
            for name in candidates:
                found = try_to_load_from_cache(repo, name)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    if cfg.get("url"):
        p = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])  # open_clip's URL cache
        if p.is_file():
            return p
    return None


def _download_host(cfg: dict[str, Any]) -> str | None:
    """The host open_clip's ``download_pretrained`` will contact for a tag (it prefers the HF Hub)."""
    try:
        import huggingface_hub  # noqa: F401
        has_hub = True
    except ImportError:
        has_hub = False
    if cfg.get("hf_hub") and has_hub:
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if cfg.get("url"):
        return urlparse(cfg["url"]).hostname
    return None


def _fetch_tag_weights(arch: str, tag: str, cfg: dict[str, Any]) -> Path:
    """Local path of a pretrained tag's weights: the cache, else open_clip's download (unless offline)."""
    oc = require_open_clip()
    how = (f"Download the weights where there is network access ({_describe_tag_source(cfg)}) and pass the "
           f"file instead: openclip:{arch}@/path/to/weights")
    cached = _cached_tag_weights(cfg)
    if cached is not None:
        return cached
    if _offline():
        raise MlrkitError(f"openclip:{arch}@{tag}: the pretrained weights cannot be downloaded (HF_HUB_OFFLINE is "
                          f"set) and are not in the local cache. {how}")
    host = _download_host(cfg)
    if host is not None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError as e:  # no DNS: fail now instead of after huggingface_hub's minute of retries
            raise MlrkitError(f"openclip:{arch}@{tag}: the pretrained weights cannot be downloaded (cannot resolve "
                              f"{host}: {e}; set HF_HUB_OFFLINE=1 on machines without network). {how}") from None
    try:
        path = oc.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - urllib / huggingface_hub raise many types
        first = " ".join(str(e).split())
        first = first if len(first) <= 400 else first[:400] + "…"
        raise MlrkitError(f"openclip:{arch}@{tag}: the pretrained weights cannot be downloaded "
                          f"({type(e).__name__}: {first}). {how}") from None
    if not path or not Path(path).is_file():
        raise MlrkitError(f"openclip:{arch}@{tag}: open_clip returned no weights file. {how}")
    return Path(path)


# ---------------------------------------------------------------------------- backends
def load_vl_checkpoint(path: str | Path, *, spec: str | None = None, seed: int = 0) -> VisionLanguageModel:
    """Load a weights file that carries its own architecture (embedded config and/or ``<stem>.json``)."""
    path = Path(path).expanduser()
    weights = read_weights(path)
    side = sidecar_path(path)
    config_path = None
    if side.is_file():
        try:
            import json

            is_ours = json.loads(side.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            is_ours = False
        config_path = side if is_ours else None
    model_cfg, pp = resolve_configs(weights, config_path)
    expand_sparse_tokens(weights, model_cfg)
    spec = spec or f"openclip:{CUSTOM_ARCH}@{path}"
    clip = build_open_clip(model_cfg, seed=seed, name=spec)
    fit_state_dict(clip, weights.state_dict, source=str(path), arch="the architecture stored with it")
    return _wrap(clip, spec=spec, model_cfg=model_cfg, pp_overlay=pp, arch=None)


@VL_BACKENDS.register("openclip", "open_clip architecture: openclip:<arch>@<tag or local file>, "
                                  "openclip:custom@<file>, or openclip:<arch> (random weights)")
def _openclip_backend(arg: str | None, spec: str, seed: int) -> VisionLanguageModel:
    if not arg or not arg.strip():
        raise MlrkitError("`openclip` needs an architecture: openclip:<arch>[@<pretrained tag or checkpoint file>], "
                          "e.g. openclip:ViT-B-16@openai or openclip:RN50@/models/rn50.pt")
    arch, at, source = (s.strip() for s in arg.partition("@"))
    if at and not source:
        raise MlrkitError(f"{spec}: nothing after '@' (give a pretrained tag or a checkpoint file)")
    if arch == CUSTOM_ARCH:
        if not at:
            raise MlrkitError(f"{spec}: `custom` takes its architecture from a file: openclip:custom@<file>")
        return load_vl_checkpoint(source, spec=spec, seed=seed)
    model_cfg, name = _builtin_config(arch)
    if not at:
        warnings.warn(f"{spec}: {name} has RANDOM weights (no pretrained tag or checkpoint given); fine for "
                      "benchmarks and smoke tests, meaningless for recognition", UserWarning, stacklevel=3)
        clip = build_open_clip(model_cfg, seed=seed, name=spec)
        return _wrap(clip, spec=spec, model_cfg=model_cfg, pp_overlay=None, arch=name)

    oc = require_open_clip()
    tag_cfg = None if _looks_like_path(source) else oc.get_pretrained_cfg(name, source) or None
    pp_overlay: dict[str, Any] | None
    if tag_cfg is not None:
        weights = read_weights(_fetch_tag_weights(name, source, tag_cfg))
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        pp_overlay = tag_cfg
    else:
        if not _looks_like_path(source) and not Path(source).expanduser().is_file():
            tags = oc.list_pretrained_tags_by_model(name)
            known = f"its tags: {', '.join(tags)}" if tags else "open_clip has no pretrained tags for it"
            raise MlrkitError(f"{spec}: {source!r} is neither a pretrained tag of {name} ({known}) nor an existing "
                              "checkpoint file")
        weights = read_weights(source)
        # OpenAI released TorchScript files of models trained with QuickGELU.
        quick_gelu = weights.torchscript
        pp_overlay = weights.preprocess_cfg
    if quick_gelu and not model_cfg.get("quick_gelu", False):
        model_cfg = {**model_cfg, "quick_gelu": True}
    return _from_weights(weights, model_cfg, name=name, spec=spec, seed=seed, pp_overlay=pp_overlay)


def _from_weights(weights: WeightsFile, model_cfg: dict[str, Any], *, name: str, spec: str, seed: int,
                  pp_overlay: dict[str, Any] | None) -> VisionLanguageModel:
    clip = build_open_clip(model_cfg, seed=seed, name=spec)
    fit_state_dict(clip, weights.state_dict, source=str(weights.path), arch=name)
    return _wrap(clip, spec=spec, model_cfg=model_cfg, pp_overlay=pp_overlay, arch=name)


def tiny_config(kind: str = "vit") -> dict[str, Any]:
    """The open_clip config of the ``tiny`` backends (a fresh dict).

    ``vit``: ViT width 64, 2 layers, patch 8, 32 px (4x4 patches); ``rn``: ModifiedResNet
    [1, 1, 1, 1], width 8 (2048 -> 256 channels), 64 px (2x2 grid). Text: width 64, 2 layers,
    2 heads, context 32, open_clip's BPE vocabulary (49,408 tokens). Joint space D = 64.
    """
    text = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    if kind == "vit":
        vision: dict[str, Any] = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
    elif kind == "rn":
        vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32}
    else:
        raise MlrkitError(f"unknown tiny variant {kind!r}: use tiny, tiny:vit or tiny:rn")
    return {"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}


@VL_BACKENDS.register("tiny", "small random CLIP built offline for tests: tiny (ViT, 32 px) or tiny:rn "
                              "(ModifiedResNet, 64 px); D=64")
def _tiny_backend(arg: str | None, spec: str, seed: int) -> VisionLanguageModel:
    cfg = tiny_config(arg.strip() if arg else "vit")
    clip = build_open_clip(cfg, seed=seed, name=spec)
    return _wrap(clip, spec=spec, model_cfg=cfg, pp_overlay=None, arch=None)


def builtin_dir() -> Path:
    """The package's ``mlrkit/builtin`` directory."""
    return Path(str(resources.files("mlrkit") / "builtin"))


def load_mosaic_clip(directory: str | Path | None = None, *, seed: int = 0,
                     spec: str = "mosaic-clip") -> VisionLanguageModel:
    """Load the built-in model ``spec`` (``mosaic_clip.pt`` + ``mosaic_clip.json`` for ``mosaic-clip``,
    ``mosaic_clip_heldout.*`` for ``mosaic-clip-heldout``) from ``directory`` (default: ``mlrkit/builtin``)."""
    folder = Path(directory) if directory is not None else builtin_dir()
    weights = folder / BUILTIN_VL_WEIGHTS.get(spec, MOSAIC_CLIP_WEIGHTS)
    if not weights.is_file():
        how = " --heldout-source DIR" if spec == "mosaic-clip-heldout" else ""
        raise MlrkitError(f"{spec} weights not built yet: run `mlrkit vl pretrain{how}` and `mlrkit vl export` "
                          f"(looked for {weights})")
    return load_vl_checkpoint(weights, spec=spec, seed=seed)


@VL_BACKENDS.register("mosaic-clip", "small CLIP trained here on real photos by `mlrkit vl pretrain`, "
                                     "shipped in mlrkit/builtin/mosaic_clip.pt")
def _mosaic_backend(arg: str | None, spec: str, seed: int) -> VisionLanguageModel:
    if arg:
        raise MlrkitError(f"{spec}: mosaic-clip takes no argument")
    return load_mosaic_clip(seed=seed, spec=spec)


@VL_BACKENDS.register("mosaic-clip-heldout", "mosaic-clip's architecture trained on Fashion-MNIST photos that "
                                             "fashion-mosaic does not contain (never saw its images), "
                                             "mlrkit/builtin/mosaic_clip_heldout.pt")
def _mosaic_heldout_backend(arg: str | None, spec: str, seed: int) -> VisionLanguageModel:
    if arg:
        raise MlrkitError(f"{spec}: mosaic-clip-heldout takes no argument")
    return load_mosaic_clip(seed=seed, spec=spec)


def native_image_size(spec: str) -> int:
    """The input resolution a VL spec's model was built for, read cheaply (configs and sidecars; no weights)
    where possible; anything else loads the model once. Used as ``data.image_size``'s default."""
    import json

    def side(s: str) -> int:
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    name, _, arg = spec.strip().partition(":")
    if name in BUILTIN_VL_WEIGHTS and not arg:
        meta = sidecar_path(builtin_dir() / BUILTIN_VL_WEIGHTS[name])
        if meta.is_file():
            d = json.loads(meta.read_text())
            return side(d.get("preprocess_cfg", {}).get("size") or d["model_cfg"]["vision_cfg"]["image_size"])
    if name == "tiny":
        return side(tiny_config(arg.strip() if arg else "vit")["vision_cfg"]["image_size"])
    if name == "openclip" and arg and arg.split("@")[0].strip() != CUSTOM_ARCH:
        model_cfg, _ = _builtin_config(arg.split("@")[0].strip())
        return side(model_cfg["vision_cfg"].get("image_size", 224))
    model = load(spec)
    return side(model.image_size)
