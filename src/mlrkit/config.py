"""Layered run configuration: defaults -> recipe YAML (with ``base:`` chains) -> CLI flags -> ``--set``.

A recipe is YAML with the same nesting as :class:`RunConfig`; ``base: other.yaml`` (a path
relative to the recipe, or a list of them) is merged first. ``--set a.b=value`` overrides any
key; values are parsed as YAML scalars (``--set train.lr=1e-4``, ``--set boostlu.train=true``).

Every section is owned and typed (:mod:`mlrkit.schema`): ``data``, ``labels``, ``train`` and ``vl``
are this module's schemas; ``method``, ``loss`` and ``model`` are open sections whose ``name`` picks
a component and whose other keys are checked against that component's signature; any other
section must be declared by the active method (``Method.config_sections``, e.g. ``boostlu`` by
``cam``). A key or section that nothing active reads is an error with a suggestion: a section of
another method names the active one; ``model`` set for a method that reads none is an error. This
module names no method: it asks the method registry.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mlrkit.errors import ConfigError
from mlrkit.schema import Section, check_params, check_range, coerce, setting, suggest, unknown_key


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
class DataConfig(Section):
    """``data``: the dataset, its split and image settings (owned by the run's data preparation)."""

    section_name: ClassVar[str] = "data"
    name: str = "scene"
    root: str | None = None
    val_fraction: float = setting(0.2, min=0.0, max=0.9, help="fraction of the official train set held out")
    split_seed: int = setting(1200, min=0, help="seed of the validation split (Cole et al.'s 1200)")
    val_labels: str = setting("full", choices=("full", "observed"),
                              help="full (Cole's default: clean validation labels) | observed")
    skip_bad_images: bool = False
    image_size: int = setting(448, min=1)
    limit_train: int | None = setting(None, min=1, help="first N official-train rows (quick runs)")
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, e.g. {difficult: unknown}
    expected_num_pos: float | None = setting(None, min=0.0, min_open=True,
                                             help="mean positives per image (EPR/ROLE's k), if known")


@dataclass
class LabelsConfig(Section):
    """``labels``: the observation protocol and its seed."""

    section_name: ClassVar[str] = "labels"
    protocol: str = "full"  # a protocol string, or the path of a `mlrkit prepare` .npz
    seed: int | None = setting(None, min=0, help="observation seed; defaults to the run seed")


@dataclass
class OpenSection:
    """A section whose ``name`` picks a component (a method, a loss, a backbone) and whose other keys
    are that component's hyper-parameters, checked against its signature (:func:`check_components`)."""

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
class VLConfig(Section):
    """``vl``: the vision-language model of methods that use one (``--vl-model``)."""

    section_name: ClassVar[str] = "vl"
    model: str = "mosaic-clip"  # a mlrkit.vl.load spec (--vl-model)
    templates: str = setting("single", choices=("single", "ensemble", "name"),
                             help="prompt templates for class-name text embeddings")


@dataclass
class TrainConfig(Section):
    """``train``: the Trainer's settings."""

    section_name: ClassVar[str] = "train"
    epochs: int = setting(20, min=0)
    batch_size: int = setting(32, min=1)
    lr: float = setting(1e-3, min=0.0, min_open=True)
    optimizer: str = setting("adam", choices=("adam", "adamw", "sgd"))
    momentum: float = setting(0.9, min=0.0, max=1.0)
    weight_decay: float = setting(0.0, min=0.0)
    scheduler: str = setting("none", choices=("none", "cosine", "onecycle"))
    warmup_epochs: int = setting(0, min=0)
    warmup: str = setting("linear", choices=("linear", "constant"),
                          help="linear (0 -> lr) | constant (warmup_lr for warmup_epochs: Dassl's, DualCoOp's code)")
    warmup_lr: float = setting(1e-5, min=0.0, min_open=True, help="the constant warm-up's lr")
    pct_start: float = setting(0.3, min=0.0, max=1.0, min_open=True,
                               help="onecycle: fraction of the schedule spent increasing the lr (SCPNet's code: 0.2)")
    schedule_epochs: int | None = setting(None, min=1, help="length of the lr schedule; null = epochs")
    classifier_lr_mult: float = setting(1.0, min=0.0, min_open=True)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int | None = setting(None, min=0, help="image DataLoader workers; null = auto (0 on the CPU, "
                                                         "from the CPUs on CUDA)")
    amp: bool | None = setting(None, help="null = auto: bf16 autocast on CUDA devices that support it, off on the CPU")
    threads: int = setting(0, min=0, help="torch intra-op threads; 0 = the thread policy (mlrkit.engine.threads)")
    compile: bool | str = setting(False, help="torch.compile the model: true (inductor) or a backend name, e.g. eager")
    checkpoint_every_s: float = setting(60.0, min=0.0, help="write last.pt at most this often (and after the last "
                                                            "epoch); 0 = every epoch")
    ema: float = setting(0.0, min=0.0, max=1.0, max_open=True, help="EMA decay of the weights (0 = off)")
    grad_clip: float = setting(0.0, min=0.0)
    progress: bool = True
    keep_last: bool = setting(False, help="keep last.pt (optimizer state) after a finished run; deleted otherwise")


@dataclass
class CalibrationConfig(Section):
    """``calibration``: fitted on the validation split after training (mlrkit.engine.calibration), saved as
    calibration.json and used by evaluate, predict and export."""

    section_name: ClassVar[str] = "calibration"
    thresholds: str = setting("f1", choices=("f1", "global"),
                              help="f1: per-class thresholds maximising validation F1; global: `threshold` for all")
    threshold: float = setting(0.5, min=0.0, max=1.0, min_open=True,
                               help="the global threshold (and that of a class without validation positives)")
    temperature: bool = setting(True, help="temperature scaling of the scores, fitted on validation")
    bias: bool = setting(True, help="with a shift b: sigmoid((z - b) / T) (Platt scaling); false: temperature only")
    n_bins: int = setting(15, min=1, help="ECE bins")


@dataclass
class TrackConfig(Section):
    """``track``: optional experiment trackers (pip install 'mlrkit[track]'); the run directory is always written."""

    section_name: ClassVar[str] = "track"
    tensorboard: bool = setting(False, help="scalars + PR curves under RUN/tensorboard")
    mlflow: str | None = setting(None, help="an MLflow tracking URI (file:/path, sqlite:///mlflow.db, http://...)")
    mlflow_experiment: str = setting("mlrkit", help="MLflow experiment name")


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
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # sections owned by the active method (e.g. boostlu)

    @property
    def labels_seed(self) -> int:
        return self.seed if self.labels.seed is None else self.labels.seed

    def section(self, name: str) -> Any:
        """The active method's section ``name`` as its checked schema instance (defaults where unset)."""
        schemas = method_sections(self.method.name)
        if name not in schemas:
            raise ConfigError(f"method {self.method.name!r} reads no config section {name!r}"
                              f" (it reads: {', '.join(sorted(schemas)) or 'none'})")
        return schemas[name].parse(self.extra.get(name), name)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Parse and check a whole configuration (see the module docstring): every section and key
        must be claimed by the run itself or by its active method, loss and model."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a mapping, got {d!r}")
        from mlrkit.config_versions import CONFIG_VERSION, VERSION_KEY, config_version

        # a recipe records no version (it is read as the current schema); an older run's config.yaml is
        # upgraded by mlrkit.engine.rundir.saved_config before it gets here
        if VERSION_KEY in d and config_version(d) != CONFIG_VERSION:
            raise ConfigError(f"a {VERSION_KEY} {d[VERSION_KEY]} configuration is read as a saved run "
                              "(mlrkit evaluate/predict/train --resume upgrade it), not as a recipe")
        core = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        kwargs: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for k, v in d.items():
            if k in ("base", VERSION_KEY):
                continue
            if k in core:
                kwargs[k] = _parse_core(k, v)
            else:
                rest[k] = v
        cfg = cls(**kwargs)
        cfg.extra = claim_sections(cfg, rest, core)
        check_components(cfg)
        return cfg

    def save(self, path: str | Path) -> None:
        """Write ``config.yaml``, recording its schema version (:mod:`mlrkit.config_versions`)."""
        from mlrkit.config_versions import CONFIG_VERSION, VERSION_KEY
        from mlrkit.utils import atomic_write

        with atomic_write(path) as tmp:
            tmp.write_text(yaml.safe_dump({VERSION_KEY: CONFIG_VERSION, **self.to_dict()}, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_recipe(path))


def _parse_core(key: str, v: Any) -> Any:
    tp = typing.get_type_hints(RunConfig)[key]
    if isinstance(tp, type) and issubclass(tp, Section):
        return tp.parse(v, key)
    if isinstance(tp, type) and issubclass(tp, OpenSection):
        if not isinstance(v, dict):
            raise ConfigError(f"config section {key} must be a mapping, got {v!r}")
        params = {k: x for k, x in v.items() if k != "name"}
        out = tp(params=params)
        if "name" in v:
            out.name = coerce(v["name"], str, f"{key}.name")
        return out
    value = coerce(v, tp, key)
    if key == "seed":
        check_range(value, {"min": 0}, key)
    return value


# ---------------------------------------------------------------------------- ownership
def _methods():
    from mlrkit.methods.base import METHODS, register_all

    register_all()
    return METHODS


def method_class(name: str) -> type:
    """The registered method class ``name`` (an unknown name is a ConfigError with suggestions)."""
    from mlrkit.errors import MlrkitError

    try:
        return _methods().get(name)
    except MlrkitError as e:
        raise ConfigError(f"method.name: {e}") from None


def method_sections(name: str) -> dict[str, type]:
    """The extra sections (name -> schema) the method ``name`` reads."""
    return dict(method_class(name).config_sections)


def claim_sections(cfg: RunConfig, sections: dict[str, Any], core: list[str]) -> dict[str, Any]:
    """Check the non-core sections against the active method's schemas; any other is an error."""
    methods = _methods()
    active = cfg.method.name
    mine = method_sections(active)
    owners: dict[str, list[str]] = {}
    for other in methods.names():
        for sec in methods.get(other).config_sections:
            owners.setdefault(sec, []).append(other)
    out: dict[str, Any] = {}
    for name, value in sections.items():
        if name in mine:
            mine[name].parse(value, name)  # type and range checks; the mapping itself is kept as written
            out[name] = copy.deepcopy(value)
        elif name in owners:
            raise ConfigError(f"config section {name!r} is read by method {' / '.join(owners[name])}, "
                              f"but the active method is {active!r} (which reads "
                              f"{', '.join(sorted(mine)) or 'no extra section'})")
        elif name in methods.names():
            raise ConfigError(f"unknown config section {name!r}: the hyper-parameters of method {name!r} go in "
                              f"the method section (method.<key>, with method.name: {name})")
        else:
            valid = core + sorted(owners)
            raise ConfigError(f"unknown config key {name!r}{suggest(name, valid)}; "
                              f"sections: {', '.join(valid)}")
    return out


def check_components(cfg: RunConfig) -> None:
    """The open sections' hyper-parameters against their components' signatures, and the ``model``
    section left empty when the active method reads none. (``vl`` is the run's: besides VL methods,
    ``mlrkit suggest-labels``' vl-disagreement reads it for any method.)"""
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss
    from mlrkit.errors import MlrkitError
    from mlrkit.losses import LOSSES
    from mlrkit.models.backbones import backbone_param_names

    cls = method_class(cfg.method.name)
    check_params(cfg.method.params, cls.__init__, "method", component=cfg.method.name)
    try:
        loss_cls = LOSSES.get(cfg.loss.name)
    except MlrkitError as e:
        raise ConfigError(f"loss.name: {e}") from None
    check_params(cfg.loss.params, loss_cls.__init__, "loss", component=cfg.loss.name)
    if not cls.uses_model and (cfg.model.name or cfg.model.params):
        raise ConfigError(f"method {cfg.method.name!r} reads no model section (got model: {_to_dict(cfg.model)}); "
                          "its networks come from vl.model")
    if cfg.model.params:
        if not cfg.model.name:
            raise ConfigError(f"model parameters {sorted(cfg.model.params)} given without model.name")
        valid = backbone_param_names(cfg.model.name)
        unknown = [k for k in cfg.model.params if k not in valid]
        if unknown:
            raise unknown_key(unknown[0], "model", valid)


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


#: ``data`` keys that belong to one dataset: another ``data.name`` drops them; the section's other keys
#: (image_size, val_fraction, limit_train, ...) are the run's settings and stay
DATASET_KEYS = ("root", "options")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins. A changed ``name`` in an open section drops the old params; in
    ``data`` it drops only :data:`DATASET_KEYS` (so e.g. a method's or recipe's ``image_size`` survives
    ``--dataset``)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if "name" in v and out[k].get("name") not in (None, v["name"]):
                kept = {} if k != "data" else {key: val for key, val in out[k].items()
                                               if key not in DATASET_KEYS and key != "name"}
                out[k] = deep_merge(kept, v)
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
    """defaults -> the method's defaults -> recipe -> flags (a nested dict, ``None`` values ignored) -> ``--set``.

    The method's defaults (:func:`method_defaults`) are what its paper trains with: its own loss, its
    own number of epochs (``zeroshot``: 0) and, for methods that feed images to the VL model, that
    model's input resolution. Whatever the recipe or the command line sets wins; the saved
    ``config.yaml`` records the resolved values.
    """
    user: dict[str, Any] = {}
    if recipe:
        user = deep_merge(user, load_recipe(recipe))
    if flags:
        user = deep_merge(user, _drop_none(flags))
    if sets:
        user = deep_merge(user, parse_set(sets))
    d = deep_merge(RunConfig().to_dict(), method_defaults(user))
    return RunConfig.from_dict(absolute_paths(deep_merge(d, user)))


def absolute_paths(d: dict[str, Any]) -> dict[str, Any]:
    """Relative paths of existing files and folders made absolute, so a saved run works from any directory:
    ``data.root``, ``data.name`` (``manifest:FILE``, ``features:FILE``), ``labels.protocol`` (a prepared
    .npz), ``model.weights`` and the file of a ``vl.model`` spec (``openclip:ARCH@FILE``)."""
    import os

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
            return os.path.abspath(value)
        return value

    data, labels = d.get("data"), d.get("labels")
    if isinstance(data, dict):
        data["root"] = absolute(data.get("root"))
        name = data.get("name")
        if isinstance(name, str) and ":" in name:
            kind, _, rest = name.partition(":")
            data["name"] = f"{kind}:{absolute(rest)}"
        if isinstance(data.get("options"), dict):  # e.g. classes=FILE
            data["options"] = {k: absolute(v) for k, v in data["options"].items()}
    if isinstance(labels, dict):
        labels["protocol"] = absolute(labels.get("protocol"))
    if isinstance(d.get("model"), dict) and "weights" in d["model"]:
        d["model"]["weights"] = absolute(d["model"]["weights"])
    vl = d.get("vl")
    if isinstance(vl, dict) and isinstance(vl.get("model"), str) and "@" in vl["model"]:
        head, _, src = vl["model"].partition("@")
        vl["model"] = f"{head}@{absolute(src)}"
    return d


def method_defaults(user: dict[str, Any]) -> dict[str, Any]:
    """Config values implied by the chosen method unless ``user`` (recipe + flags + sets) sets them."""
    from mlrkit.methods.base import METHODS, register_all

    def section(name: str) -> dict[str, Any]:
        v = user.get(name)
        return v if isinstance(v, dict) else {}

    name = section("method").get("name") or MethodConfig().name
    register_all()
    if not isinstance(name, str) or name not in METHODS.names():
        return {}  # build_method reports the unknown name with suggestions
    cls = METHODS.get(name)
    out: dict[str, Any] = copy.deepcopy(cls.config_defaults)
    if not section("loss").get("name"):
        out["loss"] = copy.deepcopy(cls.default_loss)
    if cls.image_size_from_vl and section("data").get("image_size") is None:
        from mlrkit.vl import native_image_size

        spec = section("vl").get("model") or VLConfig().model
        out.setdefault("data", {})["image_size"] = native_image_size(str(spec))
    return out


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
