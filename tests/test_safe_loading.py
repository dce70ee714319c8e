"""No pickled code runs: every file a command reads with torch.load is read with weights_only=True.

Each test plants a checkpoint whose object has a ``__reduce__`` that would create a marker file
when unpickled, feeds it to one command, and asserts a one-line ``mlrkit: error:`` and no marker.
"""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit.cli.main import main
from mlrkit.config import build_config
from mlrkit.engine.trainer import train

pytestmark = pytest.mark.badinput


class Payload:
    """Unpickling this object opens (creates) ``marker``: code chosen by whoever wrote the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def plant(path: Path, marker: Path, base: dict | None = None) -> Path:
    """Write a checkpoint that looks like ``base`` (a real one) plus a code-running object."""
    payload = dict(base or {"model": {}})
    payload["extra"] = Payload(marker)
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safe") / "run"
    cfg = build_config(flags={"out": str(out), "data": {"name": "scene"}, "method": {"name": "linear"},
                              "labels": {"protocol": "single-positive"},
                              "train": {"epochs": 1, "batch_size": 64, "progress": False,
                                        "keep_last": True}})  # last.pt (optimizer state) is checked too
    train(cfg, quiet=True)
    return out


def evil_run(feature_run: Path, where: Path, marker: Path) -> Path:
    """A copy of a real run whose best.pt and last.pt carry the payload."""
    shutil.copytree(feature_run, where)
    real = torch.load(feature_run / "best.pt", weights_only=True)
    for name in ("best.pt", "last.pt"):
        plant(where / name, marker, real)
    return where


def refused(argv: list[str], marker: Path, capsys, file: Path) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), f"{argv[0]} ran code from {file}"
    assert rc == 2, err
    assert err.startswith("mlrkit: error:") and "\n" not in err, err
    assert str(file) in err and "weights_only=True" in err and "io.open" in err, err
    return err


def test_plain_torch_load_would_run_the_payload(tmp_path):
    """no code run | a checkpoint with a `__reduce__` payload, read by an unsafe `torch.load` | the payload does run
    (the planted files are really dangerous)

    The planted file is really dangerous: an unsafe torch.load creates the marker.
    """
    marker = tmp_path / "marker"
    path = plant(tmp_path / "x.pt", marker)
    torch.load(path, weights_only=False).get("extra").close()
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume", "explain", "pointing", "ablation"])
def test_run_commands_refuse_code_in_checkpoints(command, feature_run, tmp_path, capsys):
    """no code run | a `__reduce__` payload in `best.pt`/`last.pt` of a run, fed to evaluate, predict, train
    --resume, explain, analyze pointing, bench boostlu-ablation | one `mlrkit: error:` naming the file and the
    refused global; marker never written
    """
    marker = tmp_path / "marker"
    run = evil_run(feature_run, tmp_path / "run", marker)
    if command == "evaluate":
        argv = ["evaluate", str(run)]
    elif command == "predict":
        np.save(tmp_path / "rows.npy", np.zeros((2, 294), np.float32))
        argv = ["predict", str(run), str(tmp_path / "rows.npy")]
    elif command == "resume":
        (run / "results.json").unlink()
        argv = ["train", "--out", str(run), "--resume", "--quiet"]
    elif command == "explain":
        from PIL import Image

        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "img.png")
        argv = ["explain", str(run), str(tmp_path / "img.png"), "--out", str(tmp_path / "explain")]
    elif command == "pointing":
        argv = ["analyze", "pointing", str(run)]
    else:  # bench boostlu-ablation reuses a finished run directory and re-reads its best.pt
        root = tmp_path / "ablation"
        (root / "seed0").mkdir(parents=True)
        shutil.move(run, root / "seed0" / "an")
        run = root / "seed0" / "an"
        argv = ["bench", "boostlu-ablation", "--out", str(root), "--seeds", "0"]
    which = "last.pt" if command == "resume" else "best.pt"
    refused(argv, marker, capsys, run / which)


def test_init_from_refuses_code(tmp_path, capsys):
    """no code run | a `__reduce__` payload as `method.init_from` of a prompt method | refused before training;
    marker never written
    """
    marker = tmp_path / "marker"
    evil = plant(tmp_path / "prompts.pt", marker, {"model": {}, "task": {"class_names": ["a"]}})
    argv = ["train", "--dataset", "fashion-mosaic", "--method", "dualcoop", "--vl-model", "tiny", "--epochs", "1",
            "--set", "data.image_size=32", "--set", "data.limit_train=8", "--set", "data.options.limit_test=4",
            "--cache-views", "1", "--set", f"method.init_from={evil}", "--out", str(tmp_path / "run"), "--quiet"]
    refused(argv, marker, capsys, evil)


@pytest.mark.parametrize("command", ["pretrain", "export"])
def test_vl_pretrain_init_and_export_refuse_code(command, tmp_path, capsys):
    """no code run | a `__reduce__` payload as `vl pretrain --init` and `vl export RAW` | refused before anything
    runs; nothing written
    """
    marker = tmp_path / "marker"
    evil = plant(tmp_path / "raw.pt", marker, {"format": "mlrkit-mosaic-clip-raw-1", "config": {}, "seed": 0,
                                               "state_dict": {}, "result": {}})
    if command == "pretrain":
        argv = ["vl", "pretrain", "--steps", "1", "--init", str(evil), "--out", str(tmp_path / "out.pt")]
    else:
        argv = ["vl", "export", str(evil), "--out", str(tmp_path / "out.pt")]
    refused(argv, marker, capsys, evil)
    assert not (tmp_path / "out.pt").exists()


def test_checkpoints_hold_only_tensors_and_plain_data(feature_run, tmp_path):
    """no code run | what the trainer writes; numpy arrays, numpy scalars, dataclasses, paths, a lambda in a
    checkpoint payload | checkpoints load with `weights_only=True`; numpy/dataclasses converted to plain data; a
    non-plain object cannot be saved (clear error, no file)

    What the trainer writes loads with weights_only=True; numpy and dataclasses are converted on save, and an
    arbitrary object cannot be saved at all.
    """
    from dataclasses import dataclass

    from mlrkit.engine.checkpoint import load_checkpoint, save_checkpoint
    from mlrkit.errors import MlrkitError

    for name in ("best.pt", "last.pt"):
        ck = torch.load(feature_run / name, weights_only=True)
        assert ck["format"] == "mlrkit-checkpoint-1" and ck["model"]

    @dataclass
    class Stats:
        mean: np.ndarray
        n: np.int64

    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "stats": Stats(np.arange(3.0), np.int64(4)),
                                        "path": tmp_path})
    ck = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(ck["stats"]["mean"], torch.arange(3.0, dtype=torch.float64))
    assert ck["stats"]["n"] == 4 and type(ck["stats"]["n"]) is int and ck["path"] == str(tmp_path)
    with pytest.raises(MlrkitError, match=r"cannot save payload\['opt'\]\['fn'\]: a builtins.function"):
        save_checkpoint(tmp_path / "d.pt", {"model": {}, "opt": {"fn": lambda: 0}})
    assert not (tmp_path / "d.pt").exists()


def test_raw_pretraining_checkpoint_round_trip(tmp_path):
    """no code run | `vl pretrain`'s raw file (config, fp32 weights, result, history) | written as plain data, read
    back with `weights_only=True`

    `vl pretrain`'s raw file (config, fp32 weights, result, history) is plain data: it reads back safely.
    """
    from mlrkit.vl.pretraining import (
        MOSAIC_CLIP_CONFIG,
        PretrainResult,
        build_clip,
        load_raw_checkpoint,
        save_pretrained,
    )

    model = build_clip(MOSAIC_CLIP_CONFIG, 0)
    res = PretrainResult(steps=1, seconds=0.5, final_loss=1.0, zeroshot_map=0.3)
    save_pretrained(model, MOSAIC_CLIP_CONFIG, tmp_path / "raw.pt", result=res, history=[{"step": 1}],
                    command=["mlrkit"], seed=0)
    raw = load_raw_checkpoint(tmp_path / "raw.pt")
    assert raw["result"]["zeroshot_map"] == 0.3 and raw["config"] == MOSAIC_CLIP_CONFIG
    assert set(raw["state_dict"]) == set(model.state_dict())


@pytest.mark.parametrize("content, message", [
    (b"", "not a complete PyTorch file"),
    (b"PK\x03\x04 truncated", "not a complete PyTorch file"),
])
def test_corrupt_checkpoint_is_one_line_error(content, message, feature_run, tmp_path, capsys):
    """clear error | an empty or truncated `best.pt` | one line naming the file"""
    run = tmp_path / "run"
    shutil.copytree(feature_run, run)
    (run / "best.pt").write_bytes(content)
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlrkit: error:") and message in err and str(run / "best.pt") in err and "\n" not in err
