"""Every numeric option and setting is range-checked; nonsense plans are refused before training."""

from __future__ import annotations

import argparse

import pytest

from mlrkit.cli.common import OPTION_RANGES
from mlrkit.cli.main import build_parser, main

pytestmark = pytest.mark.badinput


def numeric_options() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action]]:
    out = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, (*path, name))
            elif a.type in (int, float):
                out.append((path, parser, a))

    walk(build_parser(), ())
    return out


OPTIONS = numeric_options()


def test_every_numeric_option_has_a_range():
    """nothing silently accepted | every numeric option of every command (argparse walk) | each has a declared range"""
    missing = sorted({f"{' '.join(p)} {a.option_strings[0]}" for p, _, a in OPTIONS if a.dest not in OPTION_RANGES})
    assert not missing, f"numeric options without an entry in OPTION_RANGES: {missing}"
    assert len(OPTIONS) > 60


def _bad_values(action) -> list[str]:
    low, high, lo_open, hi_open = OPTION_RANGES[action.dest]
    bad = []
    if low is not None:
        bad.append(str(low) if lo_open else str(low - 1))
    if high is not None:
        bad.append(str(high) if hi_open else str(high + 1))
    if action.type is float:
        bad += ["nan", "inf"]
    return bad


def _argv(path, parser, action, value) -> list[str]:
    """The command, dummies for its required arguments, and the option with a bad value."""
    argv = list(path)
    for a in parser._actions:
        if a is action or isinstance(a, argparse._HelpAction):
            continue
        if not a.option_strings:  # positional
            argv.append(str(a.choices[0]) if a.choices else "x")
        elif a.required:
            argv += [a.option_strings[0], str(next(iter(a.choices))) if a.choices else "x"]
    for group in parser._mutually_exclusive_groups:
        if group.required and action not in group._group_actions:
            argv += [group._group_actions[0].option_strings[0], "x"]
    flag = action.option_strings[0]
    return [*argv, f"{flag}={value}"]


CASES = [pytest.param(path, parser, action, value, id=f"{'-'.join(path)}{action.option_strings[0]}={value}")
         for path, parser, action in OPTIONS for value in _bad_values(action)]


@pytest.mark.parametrize("path, parser, action, value", CASES)
def test_out_of_range_option_is_one_line_error(path, parser, action, value, capsys, monkeypatch, tmp_path):
    """clear error | each numeric option of each command below its minimum, above its maximum, `nan`, `inf` | one
    `mlrkit: error: --flag must be ...` line; nothing written
    """
    monkeypatch.chdir(tmp_path)
    assert main(_argv(path, parser, action, value)) == 2
    err = capsys.readouterr().err.strip()
    flag = "--" + action.dest.replace("_", "-")
    assert err.startswith(f"mlrkit: error: {flag} must be") and "\n" not in err, err
    assert list(tmp_path.iterdir()) == [], "nothing may be written for a refused option"


def test_usage_error_is_one_line(capsys):
    """clear error | `--seed abc` | one `mlrkit: error:` line (no usage dump)"""
    with pytest.raises(SystemExit) as e:
        main(["train", "--seed", "abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "mlrkit: error: mlrkit train: argument --seed: invalid int value: 'abc' (see mlrkit train --help)"


def numeric_settings() -> list[tuple[str, dict]]:
    """(dotted key, range metadata) of every numeric setting of the run's typed sections, plus ``seed``."""
    import dataclasses
    import typing

    from mlrkit.config import RunConfig
    from mlrkit.schema import Section

    out = [("seed", {"min": 0})]
    for name, tp in typing.get_type_hints(RunConfig).items():
        if isinstance(tp, type) and issubclass(tp, Section):
            hints = typing.get_type_hints(tp)
            for f in dataclasses.fields(tp):
                if {int, float} & {hints[f.name], *typing.get_args(hints[f.name])} and bool not in \
                        typing.get_args(hints[f.name]):
                    out.append((f"{name}.{f.name}", dict(f.metadata)))
    return out


SETTINGS = numeric_settings()


def test_every_numeric_setting_has_a_range():
    """nothing silently accepted | every numeric setting of the typed config sections (`seed`, `data.*`, `labels.*`,
    `train.*`, `vl.*`) | each has a min or a max
    """
    unbounded = [k for k, meta in SETTINGS if meta.get("min") is None and meta.get("max") is None]
    assert not unbounded, f"numeric settings without min/max: {unbounded}"
    assert {"train.batch_size", "train.lr", "train.ema", "seed", "labels.seed", "train.epochs"} <= {k for k, _ in
                                                                                                    SETTINGS}


def _bad_settings(meta: dict) -> list[float]:
    bad = []
    if meta.get("min") is not None:
        bad.append(meta["min"] if meta.get("min_open") else meta["min"] - 1)
    if meta.get("max") is not None:
        bad.append(meta["max"] if meta.get("max_open") else meta["max"] + 1)
    return bad


@pytest.mark.parametrize("key, value", [pytest.param(k, v, id=f"{k}={v}") for k, meta in SETTINGS
                                        for v in [*_bad_settings(meta), float("nan")]])
def test_out_of_range_setting_is_one_clear_error(key, value, tmp_path, capsys):
    """clear error | each numeric setting via `--set` below its minimum, above its maximum, `.nan` | one line naming
    the key; no run directory created

    Through --set (the same loader reads recipes and saved runs): refused before anything is written.
    """
    out = tmp_path / "run"
    shown = ".nan" if value != value else value
    assert main(["train", "--dataset", "scene", "--out", str(out), "--set", f"{key}={shown}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlrkit: error: {key} must be") and "\n" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "train.epochs=0 would score method 'linear' untrained"),
    (["--labels", "partial:1e-9"], "labels 'partial:1e-9' observe no label of the 969 training images"),
    (["--labels", "drop-positives:1e-9"], "observe no label"),
    (["--loss", "vlpl"], "loss 'vlpl' trains on pseudo-labels, which method 'linear' does not make"),
    (["--set", "train.ema=1.5"], "train.ema must be < 1.0, got 1.5"),
    (["--set", "train.ema=1"], "train.ema must be < 1.0, got 1.0"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--set", "train.lr=nan"], "train.lr must be a finite number"),
    (["--set", "train.device=tpu"], "'tpu' is not a device"),
    (["--method", "zeroshot", "--epochs", "2"], "method 'zeroshot' trains nothing: it runs with epochs 0"),
    (["--method", "finetune", "--epochs", "1"],
     "method 'finetune' trains on images; dataset 'scene' has features only"),
])
def test_nonsense_plans_are_refused_before_training(argv, message, tmp_path, capsys):
    """nothing silently accepted | `--epochs 0` on a trainable method, `partial:1e-9`/`drop-positives:1e-9` (nothing
    observed), `--loss vlpl` with `linear`, `train.ema=1.5`/`1`, `--lr 0`, `train.lr=nan`, `train.device=tpu`,
    `zeroshot --epochs 2`, `finetune` on a features-only dataset | refused before training with one line; nothing
    left in the run directory
    """
    out = tmp_path / "run"
    assert main(["train", "--dataset", "scene", "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlrkit: error:") and message in err and "\n" not in err, err
    assert not out.exists() or sorted(p.name for p in out.iterdir()) in ([], [".lock"]), "nothing left behind"


def test_zeroshot_needs_no_epochs(tmp_path, capsys):
    """nothing silently accepted | `train --method zeroshot` without `--epochs` | runs with `epochs: 0` (recorded)"""
    out = tmp_path / "zs"
    assert main(["train", "--dataset", "fashion-mosaic", "--method", "zeroshot", "--vl-model", "tiny", "--set",
                 "data.limit_train=20", "--set", "data.options.limit_test=8", "--set", "data.image_size=32",
                 "--out", str(out), "--quiet"]) == 0
    assert "epochs: 0" in (out / "config.yaml").read_text()


def test_recipe_values_of_command_flags_are_range_checked(tmp_path, capsys):
    """clear error | a `negation captions --config` recipe with `per_image: 0` and `limit: .nan` | the same one-line
    range errors as on the command line; nothing written"""
    recipe = tmp_path / "r.yaml"
    for body, message in (("per_image: 0", "--per-image must be >= 1, got 0"),
                          ("limit: .nan", "--limit must be a finite number")):
        recipe.write_text(f"captions:\n  dataset: fashion-mosaic\n  {body}\n")
        assert main(["negation", "captions", "--config", str(recipe), "--out", str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mlrkit: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "o.jsonl").exists()
