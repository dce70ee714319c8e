"""Image backbones with their matching preprocessing (one registry; timm/torchvision names too).

``build_backbone(name, weights=None, pretrained=False, image_size=None)`` returns a
:class:`Backbone`: ``forward(x) -> [B, D]`` pooled features, ``forward_map(x) -> [B, D, h, w]``
(for CNNs; CAM heads need it), ``feature_dim`` and ``mean``/``std`` of its input normalisation.

* ``smallcnn``: a 4-block CNN for CPU tests and the fashion-mosaic benchmark (random init).
* ``timm:<name>`` or a bare timm name (``resnet50``, ``convnext_xlarge``, ``vit_large_patch14_224``…).
* ``tv:<name>``: a torchvision classification model (``tv:resnet50``).

Weights (``model.weights`` / ``model.pretrained`` in a run's config; pretrained is the default):

* ``weights=PATH``: a local state dict (``torch.load(weights_only=True)`` or safetensors; the
  classifier head is dropped, anything else that does not fit is an error);
* ``weights=hf-hub:<repo>`` (timm) or a weights tag (``a1_in1k`` for timm, ``IMAGENET1K_V2`` for
  torchvision): downloaded by timm/torchvision when online, taken from their caches offline;
* ``pretrained=True`` (default): the library's default pretrained weights of that name.
  Without network and cache it fails at once (no minute of retries) with a message saying how to
  get the file and pass ``weights=PATH``, or to ask for random weights with ``pretrained=False``;
* ``pretrained=False``: random initialisation, on explicit request only (the run records a
  warning). ``smallcnn`` has no pretrained weights: it is always randomly initialised.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mlrkit.errors import MlrkitError
from mlrkit.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES: Registry = Registry("backbone")


class Backbone(nn.Module):
    """A feature extractor: pooled features and (for CNNs) the last feature map."""

    feature_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    has_map: bool = True

    def forward_map(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_map(x).mean(dim=(2, 3))


class SmallCNN(Backbone):
    """Conv(3x3)-BN-ReLU blocks with 2x2 max-pooling between them; global average pooling."""

    def __init__(self, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(depth):
            c_out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < depth - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.feature_dim = c_in
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def forward_map(self, x: Tensor) -> Tensor:
        return self.body(x)


HOW_TO_GET_WEIGHTS = ("download them where there is network access and pass the file with --set "
                      "model.weights=PATH (a timm/torchvision state dict), or ask for random weights explicitly with "
                      "--set model.pretrained=false (meaningless features for a frozen backbone)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _unreachable(host: str | None) -> str | None:
    """Why ``host`` cannot be reached (offline flag or no DNS), checked in well under a second; None if it may be."""
    if _offline():
        return "HF_HUB_OFFLINE is set"
    if host is None:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"cannot resolve {host}: {e}"
    return None


def _timm_cached(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        found = try_to_load_from_cache(hub_id, fname)
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def check_timm_weights_reachable(name: str) -> None:
    """Fail fast (clear error) when timm's pretrained weights for ``name`` are neither cached nor downloadable."""
    from urllib.parse import urlparse

    import timm

    if name.startswith("hf-hub:"):
        hub_id, host = name[len("hf-hub:"):], "huggingface.co"
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            raise MlrkitError(f"timm has no pretrained weights for {name!r}; {HOW_TO_GET_WEIGHTS}")
        hub_id = cfg.hf_hub_id
        host = "huggingface.co" if hub_id else (urlparse(cfg.url).hostname if cfg.url else None)
        if not hub_id and cfg.url:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
            if cached.is_file():
                return
    if hub_id and _timm_cached(hub_id.split("@")[0]):
        return
    why = _unreachable(urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
                       if hub_id else host)
    if why:
        src = f"Hugging Face Hub repo {hub_id}" if hub_id else "timm's URL"
        raise MlrkitError(f"pretrained weights for backbone {name!r} are not cached and cannot be downloaded ({why}; "
                          f"source: {src}): {HOW_TO_GET_WEIGHTS}")


class TimmBackbone(Backbone):
    def __init__(self, name: str, pretrained: bool, image_size: int | None) -> None:
        super().__init__()
        import timm

        base = timm.models.split_model_name_tag(name)[0] if not name.startswith("hf-hub:") else None
        if base is not None and base not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise MlrkitError(f"unknown timm backbone {name!r}{hint}")
        kwargs = {}
        if image_size and ("vit" in name or "deit" in name or "swin" in name):
            kwargs["img_size"] = image_size
        if pretrained:
            check_timm_weights_reachable(name)
        try:
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except Exception as e:  # noqa: BLE001 - hub/network failures come in many types
            if pretrained:
                raise MlrkitError(
                    f"could not get pretrained weights for {name!r} ({type(e).__name__}: {e}); {HOW_TO_GET_WEIGHTS}"
                ) from None
            raise
        cfg = timm.data.resolve_data_config({}, model=self.model)
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.feature_dim = int(self.model.num_features)
        self.has_map = "vit" not in name and "deit" not in name

    def forward_map(self, x: Tensor) -> Tensor:
        f = self.model.forward_features(x)
        if f.ndim == 4 and f.shape[1] != self.feature_dim and f.shape[-1] == self.feature_dim:
            f = f.permute(0, 3, 1, 2)  # NHWC models (e.g. some convnext/swin variants)
        if f.ndim != 4:
            raise MlrkitError("this backbone has no spatial feature map (a ViT); CAM heads need a CNN")
        return f

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class TorchvisionBackbone(Backbone):
    def __init__(self, name: str, pretrained: bool | str) -> None:
        """``pretrained``: False (random), True (torchvision's DEFAULT weights) or a weights tag (IMAGENET1K_V2)."""
        super().__init__()
        import torchvision

        tag = ("DEFAULT" if pretrained is True else pretrained) or None
        if tag is not None:
            try:
                w = torchvision.models.get_model_weights(name)[tag]
            except (KeyError, ValueError) as e:
                raise MlrkitError(f"tv:{name}: unknown weights {tag!r} ({e})") from None
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
            why = None if cached.is_file() else _unreachable(__import__("urllib.parse").parse.urlparse(w.url).hostname)
            if why:
                raise MlrkitError(f"pretrained weights for backbone tv:{name} ({w}) are not cached and cannot be "
                                  f"downloaded ({why}; source: {w.url}): {HOW_TO_GET_WEIGHTS}")
        try:
            m = torchvision.models.get_model(name, weights=tag)
        except ValueError as e:
            raise MlrkitError(f"unknown torchvision backbone {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise MlrkitError(
                f"could not get pretrained weights for tv:{name} ({e}); pass --set model.weights=PATH"
            ) from None
        if not hasattr(m, "fc"):
            raise MlrkitError(f"tv:{name}: only ResNet-style torchvision models (with .fc) are supported")
        self.feature_dim = int(m.fc.in_features)
        m.fc = nn.Identity()
        self.model = m

    def forward_map(self, x: Tensor) -> Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


@dataclass
class BackboneSpec:
    name: str
    weights: str | None = None
    pretrained: bool = False


def is_weights_file(weights: str | Path | None) -> bool:
    """A local file (as opposed to a ``hf-hub:`` name or a weights tag)."""
    if not weights:
        return False
    w = str(weights)
    return not w.startswith("hf-hub:") and ("/" in w or os.sep in w or Path(w).suffix != "" or Path(w).is_file())


def build_backbone(name: str, weights: str | Path | None = None, pretrained: bool = False,
                   image_size: int | None = None, **kwargs) -> Backbone:
    """Build a backbone by name with the weights asked for (see module docstring).

    ``weights``: a local file, ``hf-hub:<repo>`` (timm) or a weights tag; ``pretrained``: the library's
    default pretrained weights (ignored when ``weights`` is given; ``smallcnn`` has none).
    """
    local = is_weights_file(weights)
    if name == "smallcnn":
        if weights and not local:
            raise MlrkitError(f"smallcnn has no pretrained weights named {weights!r}; give a local file")
        bb: Backbone = SmallCNN(**kwargs)
    elif name.startswith("tv:"):
        bb = TorchvisionBackbone(name[3:], False if local else (str(weights) if weights else pretrained))
    else:
        timm_name = name.removeprefix("timm:")
        if weights and not local:
            w = str(weights)
            timm_name = w if w.startswith("hf-hub:") else f"{timm_name.split('.')[0]}.{w}"
        bb = TimmBackbone(timm_name, bool(pretrained or (weights and not local)) and not local, image_size)
    if local:
        load_backbone_weights(bb, weights)
    return bb


def backbone_param_names(name: str) -> list[str]:
    """The keys a ``model`` section may hold besides ``name`` for backbone ``name``: ``weights`` and
    ``pretrained`` for every backbone, plus the constructor arguments of ``smallcnn``; none for a
    ``clip:<spec>`` trunk (its weights are in the spec)."""
    import inspect

    if name.startswith("clip:"):
        return []
    extra = [p for p in inspect.signature(SmallCNN.__init__).parameters if p != "self"] if name == "smallcnn" else []
    return ["weights", "pretrained", *extra]


def load_backbone_weights(bb: Backbone, path: str | Path) -> None:
    """Load a local state dict into a backbone; classifier-head keys are ignored, others must fit."""
    path = Path(path)
    if not path.is_file():
        raise MlrkitError(f"backbone weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise MlrkitError(f"cannot read backbone weights {path}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    target = bb.model if hasattr(bb, "model") else bb
    head = ("fc.", "head.", "classifier.", "head.fc.")
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith(head)}
    missing, unexpected = target.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise MlrkitError(f"{path} does not fit the backbone: missing {missing[:4]}, unexpected {unexpected[:4]}")


BACKBONES.add("smallcnn", SmallCNN, "4-block CNN (random init) for CPU tests and fashion-mosaic")
BACKBONES.add("timm", TimmBackbone, "timm:<name> or a bare timm name: resnet50, convnext_xlarge, vit_large_patch14_224")
BACKBONES.add("tv", TorchvisionBackbone, "tv:<name>: torchvision ResNets (tv:resnet50)")
