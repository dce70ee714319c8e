"""Layered run configuration: defaults -> recipe (base chains) -> flags -> --set; validation; round trip."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from mlrkit.config import (
    DataConfig,
    LabelsConfig,
    RunConfig,
    TrainConfig,
    build_config,
    deep_merge,
    load_recipe,
    parse_set,
)
from mlrkit.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- defaults


def test_defaults():
    cfg = build_config()
    assert cfg == RunConfig()
    assert cfg.seed == 0 and cfg.out is None
    assert cfg.data == DataConfig()
    data = cfg.data
    assert (data.name, data.val_fraction, data.split_seed, data.val_labels) == ("scene", 0.2, 1200, "full")
    assert cfg.labels == LabelsConfig() and cfg.labels.protocol == "full" and cfg.labels.seed is None
    assert (cfg.method.name, cfg.method.params) == ("linear", {})
    assert (cfg.loss.name, cfg.loss.params) == ("an", {})
    assert (cfg.model.name, cfg.model.params) == ("", {})
    assert cfg.train == TrainConfig()
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.amp) == (20, 32, 1e-3, None)  # auto
    assert cfg.extra == {}
    assert cfg.labels_seed == 0


def test_labels_seed_defaults_to_run_seed():
    assert build_config(sets=["seed=7"]).labels_seed == 7
    assert build_config(sets=["seed=7", "labels.seed=3"]).labels_seed == 3


# --------------------------------------------------------------------------- recipes and layers


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """recipes/run.yaml -> ../common/mid.yaml -> root.yaml (paths relative to each file)."""
    _write(
        tmp_path / "common" / "root.yaml",
        """
        seed: 1
        data: {name: yeast, val_fraction: 0.25}
        train: {epochs: 5, lr: 0.1, batch_size: 8, optimizer: sgd}
        loss: {name: em, alpha: 0.1}
        """,
    )
    _write(
        tmp_path / "common" / "mid.yaml",
        """
        base: root.yaml
        seed: 3
        train: {epochs: 7}
        """,
    )
    return _write(
        tmp_path / "recipes" / "run.yaml",
        """
        base: ../common/mid.yaml
        train:
          lr: 0.01
        labels:
          protocol: single-positive
        """,
    )


def test_base_chain_and_override_order(chain, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # base paths are relative to the recipe, not to the working directory
    cfg = build_config(chain)
    assert cfg.seed == 3  # mid over root
    assert cfg.data.name == "yeast" and cfg.data.val_fraction == 0.25  # root
    assert cfg.data.split_seed == 1200  # defaults
    assert cfg.train.epochs == 7  # mid
    assert cfg.train.lr == 0.01  # recipe over root
    assert cfg.train.batch_size == 8 and cfg.train.optimizer == "sgd"  # root
    assert cfg.train.weight_decay == 0.0  # defaults
    assert cfg.labels.protocol == "single-positive"
    assert (cfg.loss.name, cfg.loss.params) == ("em", {"alpha": 0.1})
    assert "base" not in cfg.to_dict()

    # flags over the recipe (None means "not given"), --set over flags
    cfg = build_config(
        chain,
        flags={"seed": 5, "train": {"batch_size": 16, "epochs": None}, "data": {"name": None}},
        sets=["seed=6", "train.epochs=9"],
    )
    assert cfg.seed == 6  # --set over flag
    assert cfg.train.batch_size == 16  # flag over root
    assert cfg.train.epochs == 9  # --set over mid
    assert cfg.data.name == "yeast"  # a None flag does not override
    assert cfg.train.lr == 0.01


def test_load_recipe_returns_merged_mapping(chain):
    d = load_recipe(chain)
    assert "base" not in d
    assert d["train"] == {"epochs": 7, "lr": 0.01, "batch_size": 8, "optimizer": "sgd"}


def test_base_list_later_wins(tmp_path):
    _write(tmp_path / "a.yaml", "train: {epochs: 1, lr: 0.5}\n")
    _write(tmp_path / "b.yaml", "train: {epochs: 2}\n")
    r = _write(tmp_path / "r.yaml", "base: [a.yaml, b.yaml]\nseed: 4\n")
    cfg = build_config(r)
    assert (cfg.train.epochs, cfg.train.lr, cfg.seed) == (2, 0.5, 4)


def test_missing_recipe_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        build_config(tmp_path / "nope.yaml")
    r = _write(tmp_path / "r.yaml", "base: gone.yaml\n")
    with pytest.raises(ConfigError, match=re.escape(str((tmp_path / "gone.yaml").resolve()))):
        build_config(r)


def test_base_loop_is_detected(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\nseed: 1\n")
    _write(tmp_path / "b.yaml", "base: sub/../a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match="loops"):
        build_config(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(tmp_path / "self.yaml")


def test_diamond_base_is_not_a_loop(tmp_path):
    _write(tmp_path / "root.yaml", "seed: 1\n")
    _write(tmp_path / "l.yaml", "base: root.yaml\ntrain: {epochs: 3}\n")
    _write(tmp_path / "r.yaml", "base: root.yaml\ntrain: {lr: 0.2}\n")
    top = _write(tmp_path / "top.yaml", "base: [l.yaml, r.yaml]\n")
    cfg = build_config(top)
    assert (cfg.seed, cfg.train.epochs, cfg.train.lr) == (1, 3, 0.2)


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "seed: 1\ntrain:\n  epochs: 3\n\tlr: 0.1\n")
    with pytest.raises(ConfigError, match=re.escape(str(bad.resolve())) + r" line 4"):
        build_config(bad)


def test_recipe_must_be_a_mapping(tmp_path):
    bad = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(bad)


def test_empty_recipe_is_defaults(tmp_path):
    assert build_config(_write(tmp_path / "empty.yaml", "")) == RunConfig()


# --------------------------------------------------------------------------- --set


def test_parse_set_values():
    d = parse_set(
        [
            "seed=3",
            "train.lr=0.25",
            "train.amp=true",
            "train.progress=false",
            "train.optimizer=sgd",
            "data.name=yeast",
            "data.limit_train=null",
            "a.b.c=x y",
            "empty=",
        ]
    )
    assert d == {
        "seed": 3,
        "train": {"lr": 0.25, "amp": True, "progress": False, "optimizer": "sgd"},
        "data": {"name": "yeast", "limit_train": None},
        "a": {"b": {"c": "x y"}},
        "empty": "",
    }
    assert isinstance(d["seed"], int) and isinstance(d["train"]["lr"], float)


def test_set_builds_typed_values():
    cfg = build_config(
        sets=[
            "seed=11",
            "train.epochs=3",
            "train.lr=1e-4",  # YAML 1.1 reads "1e-4" as a string; the float field coerces it
            "train.weight_decay=5e-2",
            "train.amp=yes",
            "train.progress=False",
            "train.optimizer=adamw",
            "data.name=emotions",
            "data.limit_train=100",
            "labels.protocol=partial:0.5",
            "labels.seed=2",
            "out=runs/x",
        ]
    )
    assert cfg.seed == 11 and cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(0.05)
    assert cfg.train.amp is True and cfg.train.progress is False
    assert cfg.train.optimizer == "adamw"
    assert cfg.data.name == "emotions" and cfg.data.limit_train == 100
    assert cfg.labels.protocol == "partial:0.5" and cfg.labels.seed == 2
    assert cfg.out == "runs/x"
    assert build_config(sets=["data.limit_train=100", "data.limit_train=null"]).data.limit_train is None
    assert build_config(sets=["train.epochs=4.0"]).train.epochs == 4


@pytest.mark.parametrize("item", ["train.lr", "=3", " =3"])
def test_parse_set_malformed(item):
    with pytest.raises(ConfigError, match="key=value"):
        parse_set([item])


def test_open_sections_collect_params():
    cfg = build_config(sets=["loss.name=splc", "loss.tau=0.7", "loss.corrected_margin=false", "loss.change_epoch=2",
                             "method.name=mlp", "method.hidden_dim=64"])
    assert cfg.loss.name == "splc"
    assert cfg.loss.params == {"tau": 0.7, "corrected_margin": False, "change_epoch": 2}
    assert cfg.method.params == {"hidden_dim": 64}
    assert cfg.to_dict()["loss"] == {"name": "splc", "tau": 0.7, "corrected_margin": False, "change_epoch": 2}


@pytest.mark.parametrize("layer", ["set", "recipe"])
def test_open_section_scientific_notation_is_a_float(layer, tmp_path):
    # `--set loss.alpha=1e-4` (or `alpha: 1e-4` in a recipe) must reach the loss as the number
    # 1e-4, not the string "1e-4" (PyYAML's YAML 1.1 resolver needs a dot to read a float)
    if layer == "set":
        cfg = build_config(sets=["loss.name=asl", "loss.clip=1e-4"])
    else:
        cfg = build_config(_write(tmp_path / "r.yaml", "loss: {name: asl, clip: 1e-4}\n"))
    assert cfg.loss.params["clip"] == pytest.approx(1e-4)
    assert isinstance(cfg.loss.params["clip"], float)


def test_changing_loss_name_drops_old_params(tmp_path):
    r = _write(tmp_path / "r.yaml", "loss: {name: em_apl, alpha: 0.1, beta: 2}\n")
    assert build_config(r).loss.params == {"alpha": 0.1, "beta": 2}
    cfg = build_config(r, sets=["loss.name=hill"])
    assert (cfg.loss.name, cfg.loss.params) == ("hill", {})
    cfg = build_config(r, sets=["loss.name=hill", "loss.gamma=2"])
    assert (cfg.loss.name, cfg.loss.params) == ("hill", {"gamma": 2})
    cfg = build_config(r, sets=["loss.name=em_apl"])  # same name: params kept
    assert (cfg.loss.name, cfg.loss.params) == ("em_apl", {"alpha": 0.1, "beta": 2})
    cfg = build_config(r, sets=["loss.alpha=0.3"])  # no name: merged
    assert (cfg.loss.name, cfg.loss.params) == ("em_apl", {"alpha": 0.3, "beta": 2})
    cfg = build_config(r, flags={"loss": {"name": "asl"}})  # a flag layer behaves the same
    assert (cfg.loss.name, cfg.loss.params) == ("asl", {})
    # and across a base chain
    _write(tmp_path / "child.yaml", "base: r.yaml\nloss: {name: focal}\n")
    cfg = build_config(tmp_path / "child.yaml")
    assert (cfg.loss.name, cfg.loss.params) == ("focal", {})


def test_another_dataset_keeps_the_runs_data_settings_and_drops_the_dataset_ones(tmp_path):
    """--dataset over a recipe: image_size/limit_train stay (run settings), root/options go (they belonged to
    the recipe's dataset)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  name: voc2007\n  root: /data/voc\n  options: {classes: auto}\n  image_size: 224\n"
                      "  limit_train: 30\n")
    cfg = build_config(recipe, {"data": {"name": "fashion-mosaic"}})
    assert (cfg.data.name, cfg.data.image_size, cfg.data.limit_train) == ("fashion-mosaic", 224, 30)
    assert cfg.data.root is None and cfg.data.options == {}
    assert deep_merge({"loss": {"name": "asl", "gamma_neg": 4}}, {"loss": {"name": "an"}}) == {"loss": {"name": "an"}}


def test_deep_merge_does_not_mutate_inputs():
    base = {"loss": {"name": "em", "alpha": 0.1}, "train": {"epochs": 1}}
    over = {"loss": {"alpha": 0.2}, "train": {"lr": 0.5}}
    out = deep_merge(base, over)
    assert out == {"loss": {"name": "em", "alpha": 0.2}, "train": {"epochs": 1, "lr": 0.5}}
    assert base == {"loss": {"name": "em", "alpha": 0.1}, "train": {"epochs": 1}}
    assert over == {"loss": {"alpha": 0.2}, "train": {"lr": 0.5}}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "item, pattern",
    [
        ("train.epoch=3", r"unknown config key 'train\.epoch' \(did you mean epochs"),
        ("trian.epochs=3", r"unknown config key 'trian' \(did you mean train"),
        ("data.nmae=yeast", r"'data\.nmae' \(did you mean name"),
        ("labels.protocl=full", r"did you mean protocol"),
        ("boostluu.train=true", r"did you mean boostlu"),
        ("zzzzzz=1", r"unknown config key 'zzzzzz'"),
        ("extra.x=1", r"unknown config key 'extra'"),
    ],
)
def test_unknown_keys(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config(sets=[item])


def test_unknown_key_in_recipe(tmp_path):
    r = _write(tmp_path / "r.yaml", "train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epocs.*did you mean epochs"):
        build_config(r)


@pytest.mark.parametrize(
    "item, pattern",
    [
        ("train.epochs=abc", r"train\.epochs must be an integer, got 'abc'"),
        ("train.epochs=2.5", r"train\.epochs must be an integer"),
        ("train.epochs=true", r"train\.epochs must be an integer"),
        ("train.amp=maybe", r"train\.amp must be true or false, got 'maybe'"),
        ("train.amp=2", r"train\.amp must be true or false"),
        ("train.lr=fast", r"train\.lr must be a number, got 'fast'"),
        ("train.lr=false", r"train\.lr must be a number"),
        ("data.limit_train=lots", r"data\.limit_train must be an integer"),
        ("train.optimizer=[a, b]", r"train\.optimizer must be a string"),
        ("seed=x", r"seed must be an integer"),
        ("data=3", r"config section data must be a mapping"),
        ("loss=an", r"config section loss must be a mapping"),
    ],
)
def test_wrong_types_name_the_key(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config(sets=[item])


# --------------------------------------------------------------------------- extra sections and round trip


def test_extra_sections_are_kept():
    cfg = build_config(sets=["method.name=cam", "boostlu.train=true", "boostlu.alpha=5"])
    assert cfg.extra == {"boostlu": {"train": True, "alpha": 5}}
    assert cfg.section("boostlu").alpha == 5.0 and cfg.section("boostlu").infer is False  # typed, defaults filled
    d = cfg.to_dict()
    assert d["boostlu"] == {"train": True, "alpha": 5} and "extra" not in d


def test_extra_sections_merge_across_layers(tmp_path):
    r = _write(tmp_path / "r.yaml", "method: {name: cam}\nboostlu: {train: false, alpha: 5}\n")
    cfg = build_config(r, sets=["boostlu.train=true"])
    assert cfg.extra == {"boostlu": {"train": True, "alpha": 5}}


def test_yaml_round_trip(tmp_path):
    cfg = build_config(
        sets=[
            "seed=4",
            "out=runs/a",
            "data.name=yeast",
            "data.root=data/yeast",
            "data.limit_train=300",
            "labels.protocol=partial:0.3",
            "labels.seed=9",
            "method.name=cam",
            "method.flip=false",
            "loss.name=hill",
            "loss.gamma=2.5",
            "model.name=smallcnn",
            "model.width=8",
            "train.lr=0.003",
            "train.amp=true",
            "boostlu.train=true",
        ]
    )
    path = tmp_path / "run" / "config.yaml"
    cfg.save(path)
    back = RunConfig.load(path)
    assert back == cfg
    assert back.method.params == {"flip": False} and back.model.params == {"width": 8}
    assert back.extra == {"boostlu": {"train": True}}
    scp = build_config(sets=["method.name=scpnet", "loss.name=splc", "vl.model=tiny", "scpnet.k=3",
                             "features.cache_dir=/tmp/x"])
    scp.save(tmp_path / "scp.yaml")
    assert RunConfig.load(tmp_path / "scp.yaml") == scp and scp.extra == {"scpnet": {"k": 3},
                                                                          "features": {"cache_dir": "/tmp/x"}}
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    # the default config survives a round trip too
    RunConfig().save(tmp_path / "default.yaml")
    assert RunConfig.load(tmp_path / "default.yaml") == RunConfig()


def test_saved_config_usable_as_recipe(tmp_path):
    cfg = build_config(sets=["loss.name=em", "loss.alpha=0.2", "train.epochs=2"])
    cfg.save(tmp_path / "c.yaml")
    again = build_config(tmp_path / "c.yaml", sets=["train.epochs=3"])
    assert again.loss.params == {"alpha": 0.2} and again.train.epochs == 3


# --------------------------------------------------------------------------- ownership: nothing silent


@pytest.mark.parametrize(
    "sets, pattern",
    [
        # a method's hyper-parameters live in the method section, never in a section named after it
        (["vlpl.tau=0.5"], r"unknown config section 'vlpl': the hyper-parameters of method 'vlpl' go in the "
                           r"method section"),
        (["method.name=vlpl", "loss.name=vlpl", "vlpl.tau=0.5"], r"unknown config section 'vlpl'"),
        # a section of another method names the active one
        (["boostlu.alpha=5"], r"config section 'boostlu' is read by method cam, but the active method is 'linear'"),
        (["method.name=cam", "scpnet.k=3"], r"'scpnet' is read by method scpnet, but the active method is 'cam'"),
        # model keys nothing reads
        (["model.foo=1"], r"model parameters \['foo'\] given without model.name"),
        (["model.name=resnet18", "model.foo=1"], r"unknown config key 'model.foo'; valid: weights, pretrained"),
        (["method.name=cam", "model.name=clip:tiny:rn", "model.width=4"], r"unknown config key 'model.width'"),
        (["method.name=dualcoop", "model.name=resnet18"], r"method 'dualcoop' reads no model section"),
        # typos in typed sections
        (["features.cache_veiws=4"], r"unknown config key 'features.cache_veiws' \(did you mean cache_views"),
        (["method.name=cam", "boostlu.trian=true"], r"unknown config key 'boostlu.trian' \(did you mean train"),
        (["loss.name=em", "loss.alhpa=0.1"], r"unknown config key 'loss.alhpa' \(did you mean alpha"),
        (["method.name=mlp", "method.hiden_dim=3"], r"unknown config key 'method.hiden_dim' \(did you mean hidden_dim"),
        # a key read nowhere is gone
        (["train.eval_test_each_epoch=true"], r"unknown config key 'train.eval_test_each_epoch'"),
        # types and ranges, named
        (["loss.name=em", "loss.alpha=much"], r"loss.alpha must be a number, got 'much'"),
        (["train.lr=0"], r"train.lr must be > 0"),
        (["train.batch_size=0"], r"train.batch_size must be >= 1"),
        (["train.epochs=-1"], r"train.epochs must be >= 0"),
        (["data.val_fraction=1.5"], r"data.val_fraction must be <= 0.9"),
        (["train.optimizer=rmsprop"], r"train.optimizer must be one of adam, adamw, sgd; got 'rmsprop'"),
        (["train.ema=nan"], r"train.ema must be a finite number"),
        (["method.name=dualcoop", "features.dtype=float64"], r"features.dtype must be one of float32, float16"),
        (["method.name=dualcoop", "features.aug_scale=[0.5]"], r"features.aug_scale must be \[low, high\]"),
        (["vl.templates=many", "method.name=zeroshot"], r"vl.templates must be one of single, ensemble, name"),
        (["method.name=cam", "boostlu.alpha=0.5"], r"boostlu.alpha must be a finite number >= 1"),
        (["method.name=scpnet", "loss.name=splc", "scpnet.k=0"], r"scpnet.k"),
        (["method.name=nosuch"], r"unknown method 'nosuch'"),
    ],
)
def test_every_silent_case_is_an_error(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config(sets=sets)


@pytest.mark.parametrize("text, pattern", [
    ("prompt: 7\n", r"unknown config key 'prompt'"),
    ("method: {name: cam}\nboostlu: 7\n", r"config section boostlu must be a mapping, got 7"),
    ("features:\n  cache_veiws: 4\n", r"features.cache_veiws.*did you mean cache_views"),
])
def test_recipe_sections_nothing_reads_are_errors(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config(_write(tmp_path / "r.yaml", text))


def test_config_py_names_no_method():
    """Which sections exist is the methods' business (Method.config_sections), not config.py's."""
    import mlrkit.config
    from mlrkit.methods import METHODS
    from mlrkit.methods.base import register_all

    register_all()
    text = Path(mlrkit.config.__file__).read_text()
    named = [m for m in METHODS.names() if re.search(rf"[\"']{re.escape(m)}[\"']", text)]
    assert named == ["linear"], named  # the default method only (MethodConfig.name)
    for section in ("boostlu", "scpnet", "features", "vlpl", "prompt", "negation"):
        assert f'"{section}"' not in text


def test_a_method_gets_its_checked_sections():
    from mlrkit.methods import build_method

    method = build_method(build_config(sets=["method.name=cam", "boostlu.infer=true", "boostlu.groups=3"]))
    assert method.cfg is not None and method.report_groups() == 3
    with pytest.raises(ConfigError, match="method 'linear' reads no config section 'boostlu'"):
        build_config().section("boostlu")


def test_features_dataset_with_a_backbone_is_an_error():
    """`--method linear --set model.name=…` on a dataset that already has features: the backbone would be unused."""
    from types import SimpleNamespace

    import numpy as np

    from mlrkit.data import Split
    from mlrkit.methods import build_method

    method = build_method(build_config(sets=["data.name=yeast", "model.name=resnet18"]))
    split = Split(targets=np.zeros((2, 3), np.uint8), ids=["a", "b"], features=np.zeros((2, 4), np.float32))
    data = SimpleNamespace(train=split, val=split, test=split, dataset=SimpleNamespace(name="yeast"))
    with pytest.raises(ConfigError, match="dataset 'yeast' has features: model.name 'resnet18' would not be used"):
        method.prepare_data(data, device="cpu", progress=False)
