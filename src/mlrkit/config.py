"""Layered run configuration: defaults -> recipe YAML (with ``base:`` chains) -> CLI flags -> ``--set``.

A recipe is YAML with the same nesting as :class:`RunConfig`; ``base: other.yaml`` (a path
relative to the recipe, or a list of them) is merged first. ``--set a.b=value`` overrides any
key; values are parsed as YAML scalars (``--set train.lr=1e-4``, ``--set boostlu.train=true``).
Sections ``method``, ``loss`` and ``model`` are open: keys other than ``name`` are the
hyper-parameters of the chosen method/loss/model and are validated by their builders.
Unknown keys anywhere else are an error with a suggestion.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlrkit.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; this loader reads it as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    __import__("re").compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        __import__("re").X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """``yaml.safe_load`` that also reads ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class DataConfig:
    name: str = "scene"
    root: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 1200  # Cole et al.
    val_labels: str = "full"  # full (Cole's default: clean validation labels) | observed
    skip_bad_images: bool = False
    image_size: int = 448
    limit_train: int | None = None  # first N official-train rows (quick runs)
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, e.g. {difficult: unknown}
    expected_num_pos: float | None = None  # mean positives per image (EPR/ROLE's k), if known


@dataclass
class LabelsConfig:
    protocol: str = "full"  # a protocol string, or the path of a `mlrkit prepare` .npz
    seed: int | None = None  # observation seed; defaults to the run seed


@dataclass
class OpenSection:
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig(OpenSection):
    name: str = "linear"


@dataclass
class LossConfig(OpenSection):
    name: str = "an"


@dataclass
class ModelConfig(OpenSection):
    name: str = ""


@dataclass
class VLConfig:
    model: str = "mosaic-clip"  # a mlrkit.vl.load spec (--vl-model)
    templates: str = "single"  # prompt templates for class-name text embeddings: single | ensemble


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | cosine | onecycle
    warmup_epochs: int = 0
    warmup: str = "linear"  # linear (0 -> lr) | constant (warmup_lr for warmup_epochs: Dassl's, DualCoOp's code)
    warmup_lr: float = 1e-5  # the constant warm-up's lr (every parameter group)
    pct_start: float = 0.3  # onecycle: fraction of the schedule spent increasing the lr (SCPNet's code: 0.2)
    schedule_epochs: int | None = None  # length of the lr schedule; null = epochs (SCPNet COCO: 80, trains 60)
    classifier_lr_mult: float = 1.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int | None = None  # image DataLoader workers; null = auto (0 on the CPU, from the CPUs on CUDA)
    amp: bool | None = None  # null = auto: bf16 autocast on CUDA devices that support it, off on the CPU
    threads: int = 0  # torch intra-op threads; 0 = the thread policy (mlrkit.engine.threads)
    compile: bool | str = False  # torch.compile the model: true (inductor) or a backend name, e.g. eager
    checkpoint_every_s: float = 60.0  # write last.pt at most this often (and after the last epoch); 0 = every epoch
    ema: float = 0.0  # EMA decay of the weights (0 = off)
    grad_clip: float = 0.0
    progress: bool = True
    eval_test_each_epoch: bool = False  # never used for selection; off by default


@dataclass
class RunConfig:
    seed: int = 0
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vl: VLConfig = field(default_factory=VLConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # sections owned by methods (e.g. boostlu)

    @property
    def labels_seed(self) -> int:
        return self.seed if self.labels.seed is None else self.labels.seed

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, d, "")

    def save(self, path: str | Path) -> None:
        from mlrkit.utils import atomic_write

        with atomic_write(path) as tmp:
            tmp.write_text(self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_recipe(path))


# Extra top-level sections that methods may own (free-form; validated by the method).
EXTRA_SECTIONS = ("boostlu", "prompt", "scpnet", "vlpl", "features", "negation")


def _to_dict(obj: Any) -> Any:
    if isinstance(obj, OpenSection):
        d = {"name": obj.name}
        d.update(copy.deepcopy(obj.params))
        return d
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.name == "extra":
                out.update(copy.deepcopy(v))
            else:
                out[f.name] = _to_dict(v)
        return out
    return obj


def _from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {where or '<root>'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if issubclass(cls, OpenSection):
        kwargs: dict[str, Any] = {}
        params = {}
        for k, v in d.items():
            if k == "name":
                kwargs["name"] = _coerce(v, str, f"{where}.name")
            else:
                params[k] = v
        kwargs["params"] = params
        return cls(**kwargs)
    kwargs = {}
    extra: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{where}.{k}" if where else k
        if k not in names or k == "extra":
            if cls is RunConfig and k in EXTRA_SECTIONS:
                extra[k] = v
                continue
            if cls is RunConfig and k == "base":
                continue
            close = difflib.get_close_matches(k, names + (list(EXTRA_SECTIONS) if cls is RunConfig else []), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _from_dict(tp, v, key)
        else:
            kwargs[k] = _coerce(v, tp, key)
    if extra:
        kwargs["extra"] = extra
    return cls(**kwargs)


def _coerce(v: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: bad value {v!r}")
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            return v.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true/false, got {v!r}")
    if tp is int:
        if isinstance(v, bool):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {v!r}")
    if tp is float:
        if isinstance(v, bool):
            raise ConfigError(f"{key} must be a number, got {v!r}")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {v!r}") from None
    if tp is str:
        if isinstance(v, (dict, list)) or v is None:
            raise ConfigError(f"{key} must be a string, got {v!r}")
        return str(v)
    if origin is dict or tp is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{key} must be a mapping, got {v!r}")
        return dict(v)
    return v


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins. A changed ``name`` in an open section drops the old params."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if "name" in v and out[k].get("name") not in (None, v["name"]):
                out[k] = copy.deepcopy(v)
            else:
                out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe YAML and merge its ``base:`` chain (paths relative to the recipe)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"recipe base chain loops through {path}")
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        d = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    bases = d.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, load_recipe(path.parent / b, _seen + (path,)))
    return deep_merge(merged, d)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "loss.alpha=0.2"]`` -> nested dict with YAML-parsed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set")
        cur[parts[-1]] = value
    return out


def build_config(
    recipe: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """defaults -> recipe -> flags (a nested dict, ``None`` values ignored) -> ``--set`` items."""
    d = RunConfig().to_dict()
    if recipe:
        d = deep_merge(d, load_recipe(recipe))
    if flags:
        d = deep_merge(d, _drop_none(flags))
    if sets:
        d = deep_merge(d, parse_set(sets))
    return RunConfig.from_dict(d)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out
