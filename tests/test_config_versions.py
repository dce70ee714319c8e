"""Runs saved by an older mlrkit still load: config.yaml records its schema version, older ones are upgraded.

The fixture ``fixtures/run_v1_scene_linear`` is a real run directory written by mlrkit at commit 5d821d9
(before the typed schema, config_version 1), with
``mlrkit train --dataset scene --method linear --loss an --labels single-positive --set train.epochs=2``.
Its config.yaml holds ``train.eval_test_each_epoch``, a key removed since.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlrkit.cli.main import main
from mlrkit.config import RunConfig
from mlrkit.config_versions import CONFIG_VERSION, REMOVED, VERSION_KEY
from mlrkit.engine.rundir import saved_config
from mlrkit.errors import ConfigError, MlrkitError

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1_scene_linear"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    return run


def test_new_runs_record_the_schema_version(tmp_path):
    cfg = RunConfig()
    cfg.save(tmp_path / "config.yaml")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw[VERSION_KEY] == CONFIG_VERSION == 2
    assert saved_config(tmp_path).to_dict() == cfg.to_dict()  # read back as it was, no warning needed
    raw[VERSION_KEY] = CONFIG_VERSION + 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MlrkitError, match="written by a newer mlrkit"):
        saved_config(tmp_path, resuming=False)


def test_removed_keys_have_a_release_and_a_reason():
    assert REMOVED and all(r.release and r.reason and 1 < r.version <= CONFIG_VERSION for r in REMOVED)
    with pytest.raises(ConfigError, match="eval_test_each_epoch"):  # in a recipe (current schema): still an error
        RunConfig.from_dict({"train": {"eval_test_each_epoch": False}})


def test_pre_schema_run_is_upgraded_with_one_warning(old_run, caplog):
    raw = yaml.safe_load((old_run / "config.yaml").read_text())
    assert VERSION_KEY not in raw and "eval_test_each_epoch" in raw["train"]  # the real old file
    with caplog.at_level(logging.WARNING, logger="mlrkit"):
        cfg = saved_config(old_run, resuming=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "config_version 1" in warnings[0] and "dropped train.eval_test_each_epoch (removed in" in warnings[0]
    assert (cfg.method.name, cfg.loss.name, cfg.train.epochs) == ("linear", "an", 2)


def test_pre_schema_run_missing_keys_are_filled_but_unknown_keys_still_fail(old_run, caplog):
    path = old_run / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    del raw["track"], raw["train"]["keep_last"]  # keys an older version did not have
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with caplog.at_level(logging.WARNING, logger="mlrkit"):
        cfg = saved_config(old_run, resuming=False)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "filled 4 key(s)" in msg and "train.keep_last" in msg and "track.mlflow" in msg
    assert cfg.train.keep_last is False and cfg.track.mlflow is None
    raw["train"]["eval_test_each_epohc"] = True  # a typo is not a removed key
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(MlrkitError, match=r"unknown config key 'train.eval_test_each_epohc'"):
        saved_config(old_run, resuming=False)
    # the current version gets no leniency: a missing key means a damaged file
    raw.pop("train")
    path.write_text(yaml.safe_dump({VERSION_KEY: CONFIG_VERSION, **raw}, sort_keys=False))
    with pytest.raises(MlrkitError, match="incomplete"):
        saved_config(old_run, resuming=False)


def test_evaluate_and_predict_a_pre_schema_run(old_run, tmp_path, capsys, caplog):
    old_results = json.loads((old_run / "results.json").read_text())
    assert main(["evaluate", str(old_run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    # the old run's own numbers, recomputed by this mlrkit from its best.pt
    assert ev["test"]["map"] == pytest.approx(old_results["test_map"], abs=1e-9)
    assert ev["val"]["map"] == pytest.approx(old_results["val_map"], abs=1e-9)
    from mlrkit.data import load_dataset

    np.save(tmp_path / "rows.npy", load_dataset("scene").test.features[:4])
    assert main(["predict", str(old_run), str(tmp_path / "rows.npy"), "--format", "jsonl"]) == 0
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert len(lines) == 4 and set(lines[0]["scores"]) == set(old_results["per_class_ap"])
    assert "config_version 1" in caplog.text  # said, on each load
    # --resume of the finished old run: nothing to do, its results back
    assert main(["train", "--out", str(old_run), "--resume", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_map"] == old_results["test_map"]
