"""Vision-language weight files: reading local checkpoints, fitting them, and mlrkit's own format.

Files :func:`read_weights` accepts (``openclip:<arch>@<file>``):

* a state dict saved with ``torch.save`` (open_clip keys; a ``module.`` or ``clip.`` prefix is
  stripped), or a dict holding one under ``"state_dict"`` (open_clip training checkpoints);
* an OpenAI release file (TorchScript archive, e.g. ``RN50.pt`` / ``ViT-B-16.pt``);
* a ``.safetensors`` file;
* mlrkit's self-describing format written by :func:`save_vl_checkpoint`: the open_clip model
  config, the preprocessing config and an fp16 state dict in one ``torch.save`` dict (readable with
  ``weights_only=True``), plus a JSON sidecar ``<stem>.json`` with the same configs and the
  weights' SHA-256. Such a file loads with ``openclip:custom@<file>`` (the architecture comes from
  the file) and, for the shipped model, ``mosaic-clip``.

Pickles are always read with ``weights_only=True`` (no pickled code runs); TorchScript archives are
read with ``torch.jit.load`` (TorchScript only, the format OpenAI released its weights in).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlrkit.errors import MlrkitError
from mlrkit.utils import atomic_write, write_json
from mlrkit.vl.model import VisionLanguageModel, build_open_clip, require_open_clip

FORMAT = "mlrkit-vl-checkpoint"
FORMAT_VERSION = 1


@dataclass
class WeightsFile:
    """What :func:`read_weights` found in a file."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    model_cfg: dict[str, Any] | None = None
    preprocess_cfg: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    torchscript: bool = False


def sidecar_path(path: str | Path) -> Path:
    """The JSON config that travels next to a weights file: ``<dir>/<stem>.json``."""
    path = Path(path)
    return path.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_normal(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), for comparing configs."""
    return json.loads(json.dumps(obj))


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names)


def _check_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise MlrkitError(f"{path}: not a state dict (found {type(obj).__name__}); save one with "
                          "torch.save(model.state_dict(), path) or mlrkit.vl.save_vl_checkpoint")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise MlrkitError(f"{path}: not a state dict of tensors (e.g. entry {bad[0]!r})")
    return obj


def read_weights(path: str | Path) -> WeightsFile:
    """Read a local weights file (see the module docstring) without executing code from it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MlrkitError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise MlrkitError(f"checkpoint path is not a file: {path}")
    if path.suffix in (".npz", ".npy"):
        raise MlrkitError(f"{path}: big_vision .npz weights are not supported; convert them to a PyTorch state dict")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MlrkitError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
        try:
            sd = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise MlrkitError(f"cannot read checkpoint {path}: not a valid safetensors file ({e})") from None
        return WeightsFile(path, _check_state_dict(sd, path))
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; these files are still read
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - TorchScript raises many types for a bad archive
            raise MlrkitError(f"cannot read TorchScript checkpoint {path}: {e}") from None
        sd = dict(module.state_dict())
        for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's extra buffers
            sd.pop(key, None)
        return WeightsFile(path, _check_state_dict(sd, path), torchscript=True)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise MlrkitError(
                f"{path}: holds a Python object ({found.group(1)}) besides tensors; refused, weights files are read "
                "with weights_only=True; re-save only the weights with torch.save(model.state_dict(), path)"
            ) from None
        reason = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip() and "documentation" not in ln),
                      "")
        raise MlrkitError(
            f"cannot read checkpoint {path}: not a PyTorch, TorchScript or safetensors weights file "
            f"({type(e).__name__}: {reason[:200]})"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise MlrkitError(f"{path}: {FORMAT} version {version!r} is not supported (this mlrkit reads "
                              f"version {FORMAT_VERSION})")
        return WeightsFile(
            path,
            _check_state_dict(obj.get("state_dict"), path),
            model_cfg=obj.get("model_cfg"),
            preprocess_cfg=obj.get("preprocess_cfg"),
            metadata=dict(obj.get("metadata") or {}),
        )
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return WeightsFile(path, _check_state_dict(obj, path))


def read_sidecar(path: str | Path, weights: Path | None = None) -> dict[str, Any]:
    """Read a JSON config written by :func:`save_vl_checkpoint`; check the weights' SHA-256 if given."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MlrkitError(f"cannot read model config {path}: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise MlrkitError(f"{path}: not an mlrkit vision-language config (no 'model_cfg' object)")
    if weights is not None and cfg.get("sha256"):
        actual = _sha256(weights)
        if actual != cfg["sha256"]:
            raise MlrkitError(
                f"{weights} does not match {path} (sha256 {actual[:12]}… != {str(cfg['sha256'])[:12]}…): "
                "the weights were replaced without their config; write both with save_vl_checkpoint"
            )
    return cfg


def _non_persistent_buffers(module: nn.Module) -> list[str]:
    return [f"{name}.{b}" if name else b for name, m in module.named_modules() for b in m._non_persistent_buffers_set]


def fit_state_dict(clip: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, arch: str) -> None:
    """Load ``state_dict`` into an open_clip model strictly, after open_clip's usual conversions.

    Conversions (as ``open_clip.load_checkpoint``): ``module.``/``clip.`` prefixes, third-party
    formats open_clip knows, old text-tower layout, scalar vs 1-d ``logit_scale``, and resizing of
    positional embeddings to the model's grid / context length. Anything else that does not fit
    raises :class:`MlrkitError` naming the keys.
    """
    require_open_clip()
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = dict(state_dict)
    for prefix in ("module.", "clip."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    hint = (f"is {source} a checkpoint of {arch}? (`openclip:custom@FILE` reads files that store their own "
            "architecture)")
    try:
        sd = convert_state_dict(clip, sd)
        if "positional_embedding" in sd and not hasattr(clip, "positional_embedding"):
            sd = convert_to_custom_text_state_dict(sd)
        for name in ("logit_scale", "logit_bias"):
            mine = getattr(clip, name, None)
            if name in sd and isinstance(mine, torch.Tensor) and mine.ndim != sd[name].ndim:
                sd[name] = sd[name].reshape(mine.shape)
        if "logit_bias" not in sd and getattr(clip, "logit_bias", None) is not None and "logit_scale" in sd:
            sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
        sd.pop("text.transformer.embeddings.position_ids", None)
        for key in _non_persistent_buffers(clip):  # e.g. attn_mask, present in TorchScript state dicts
            sd.pop(key, None)
        resize_pos_embed(sd, clip)
        resize_text_pos_embed(sd, clip)
        missing, unexpected = clip.load_state_dict(sd, strict=False)
    except (RuntimeError, AssertionError, KeyError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = "; ".join(lines[:4]) + (f"; … ({len(lines) - 4} more)" if len(lines) > 4 else "")
        raise MlrkitError(f"{source}: the weights do not fit {arch}: {detail or type(e).__name__}. {hint}") from None
    if missing or unexpected:
        raise MlrkitError(
            f"{source}: the weights do not fit {arch}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]}. {hint}"
        )


def save_vl_checkpoint(
    model: VisionLanguageModel | nn.Module,
    path: str | Path,
    arch_config: dict[str, Any] | None = None,
    *,
    preprocess_cfg: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    half: bool = True,
    write_config: bool = True,
    sparse_token_init_seed: int | None = None,
) -> Path:
    """Save a vision-language model in mlrkit's self-describing format (atomically).

    Writes ``path`` (``torch.save`` of ``{"format", "version", "model_cfg", "preprocess_cfg",
    "metadata", "state_dict"}``, floating-point tensors in fp16 when ``half``) and, when
    ``write_config``, the JSON sidecar ``<stem>.json`` with the same configs, the metadata and the
    weights' SHA-256. The result loads with ``mlrkit.vl.load("openclip:custom@<path>")``; saved as
    ``mlrkit/builtin/mosaic_clip.pt`` it is what ``mlrkit.vl.load("mosaic-clip")`` loads.

    Args:
        model: a :class:`VisionLanguageModel` or a bare open_clip ``CLIP``/``CustomTextCLIP``.
        arch_config: the open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, and
            ``quick_gelu``/``custom_text`` where they apply); defaults to ``model.model_cfg``.
        preprocess_cfg: open_clip preprocessing config; defaults to the model's own, else open_clip's
            defaults at the vision tower's image size.
        metadata: JSON-serialisable provenance (training data, epochs, seed, ...).
        sparse_token_init_seed: the seed the model was initialised with. When given, only the rows
            of the token-embedding table that differ from that seeded initialisation are stored
            (``token_embedding.rows`` / ``token_embedding.values``); the loader rebuilds the others
            from the seed. Tokens that never occurred in training keep their initial values when the
            table gets no weight decay, so a model trained on a small vocabulary ships in a few MB.
    """
    if isinstance(model, VisionLanguageModel):
        clip = model.clip
        arch_config = copy.deepcopy(model.model_cfg) if arch_config is None else arch_config
        preprocess_cfg = dict(model.preprocess_cfg) if preprocess_cfg is None else preprocess_cfg
    else:
        clip = model
    if not isinstance(arch_config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(arch_config):
        raise MlrkitError("save_vl_checkpoint needs arch_config: an open_clip model config dict with "
                          "'embed_dim', 'vision_cfg' and 'text_cfg'")
    if preprocess_cfg is None:
        require_open_clip()
        from dataclasses import asdict

        from open_clip.transform import PreprocessCfg

        preprocess_cfg = asdict(PreprocessCfg())
        preprocess_cfg["size"] = arch_config["vision_cfg"].get("image_size", preprocess_cfg["size"])
    model_cfg = _json_normal(arch_config)
    preprocess_cfg = _json_normal(preprocess_cfg)
    metadata = _json_normal(metadata or {})
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().to("cpu")).clone()
        for k, v in clip.state_dict().items()
    }
    if sparse_token_init_seed is not None:
        init = build_open_clip(model_cfg, seed=int(sparse_token_init_seed), name="init").token_embedding.weight
        trained = clip.token_embedding.weight.detach().cpu()
        rows = torch.nonzero((trained != init).any(dim=1)).flatten()
        state.pop("token_embedding.weight")
        state["token_embedding.rows"] = rows.to(torch.int64)
        state["token_embedding.values"] = trained[rows].to(torch.float16 if half else torch.float32)
        metadata = {**metadata, "sparse_token_embedding": {"init_seed": int(sparse_token_init_seed),
                                                           "stored_rows": int(len(rows))}}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "model_cfg": model_cfg,
               "preprocess_cfg": preprocess_cfg, "metadata": metadata, "state_dict": state}
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    if write_config:
        write_json(sidecar_path(path), {
            "format": FORMAT, "version": FORMAT_VERSION, "weights": path.name, "sha256": _sha256(path),
            "dtype": "float16" if half else "float32", "model_cfg": model_cfg,
            "preprocess_cfg": preprocess_cfg, "metadata": metadata,
        })
    return path


def expand_sparse_tokens(weights: WeightsFile, model_cfg: dict[str, Any]) -> None:
    """Rebuild ``token_embedding.weight`` of a file saved with ``sparse_token_init_seed`` (in place)."""
    sd = weights.state_dict
    if "token_embedding.rows" not in sd:
        return
    info = weights.metadata.get("sparse_token_embedding") or {}
    if "init_seed" not in info:
        raise MlrkitError(f"{weights.path}: sparse token embedding without its init_seed in the metadata")
    dtype = sd["token_embedding.values"].dtype
    table = build_open_clip(model_cfg, seed=int(info["init_seed"]), name="init").token_embedding.weight.detach()
    table = table.to(dtype).clone()
    rows = sd.pop("token_embedding.rows")
    table[rows] = sd.pop("token_embedding.values")
    sd["token_embedding.weight"] = table


def write_vl_config(path: str | Path, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write a JSON sidecar ``<stem>.json`` for an existing weights file that lacks its own config.

    After this, ``openclip:custom@<path>`` loads e.g. a plain state dict or TorchScript file of a
    custom architecture. The weights' SHA-256 is recorded and checked on load.
    """
    path = Path(path)
    if not path.is_file():
        raise MlrkitError(f"checkpoint file not found: {path}")
    out = sidecar_path(path)
    doc: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "weights": path.name,
                           "sha256": _sha256(path), "model_cfg": _json_normal(model_cfg)}
    if preprocess_cfg is not None:
        doc["preprocess_cfg"] = _json_normal(preprocess_cfg)
    doc["metadata"] = _json_normal(metadata or {})
    write_json(out, doc)
    return out


def resolve_configs(weights: WeightsFile, config_path: Path | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model and preprocessing configs of a self-describing file (embedded and/or sidecar).

    When both exist they must agree; the sidecar's SHA-256 must match the weights.
    """
    sidecar = read_sidecar(config_path, weights.path) if config_path is not None else None
    model_cfg, pp_cfg = weights.model_cfg, weights.preprocess_cfg
    if sidecar is not None:
        if model_cfg is not None and _json_normal(model_cfg) != _json_normal(sidecar["model_cfg"]):
            raise MlrkitError(f"{weights.path} and {config_path} describe different architectures")
        model_cfg = sidecar["model_cfg"] if model_cfg is None else model_cfg
        pp_cfg = sidecar.get("preprocess_cfg") if pp_cfg is None else pp_cfg
    if model_cfg is None:
        raise MlrkitError(
            f"{weights.path} does not store its architecture and has no config {sidecar_path(weights.path).name} "
            "next to it: load it as `openclip:<arch>@<file>` with an open_clip architecture name, or write "
            "the config with mlrkit.vl.write_vl_config"
        )
    return copy.deepcopy(model_cfg), (dict(pp_cfg) if pp_cfg is not None else None)
