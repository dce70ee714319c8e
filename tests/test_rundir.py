"""Run directories: named by --out alone, resumed only where asked, one writer at a time; sweep keys by config."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlrkit.cli.main import main
from mlrkit.engine.rundir import RunLock

pytestmark = pytest.mark.badinput

BASE = ["--dataset", "scene", "--method", "linear", "--loss", "an", "--labels", "single-positive", "--seed", "1",
        "--batch-size", "64", "--quiet"]


def train_cli(out: Path, *extra: str, epochs: int = 2) -> int:
    return main(["train", *BASE, "--epochs", str(epochs), "--out", str(out), *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlrkit: error:") and "\n" not in err, err
    return err


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rundir") / "run"
    # keep last.pt (the optimizer state, removed at the end by default): these runs are resumed and extended
    assert train_cli(out, "--set", "train.keep_last=true") == 0
    return out


def test_copied_and_moved_runs_resume_where_given(finished, tmp_path, capsys):
    """nothing lost | `train --out COPY --resume` of a copied run, and of a moved one | the copy/moved directory is
    resumed and finished; the original's files are byte-identical; results equal
    """
    before = snapshot(finished)
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "results.json").unlink()
    assert main(["train", "--out", str(copy), "--resume", "--quiet"]) == 0
    assert snapshot(finished) == before, "resuming a copy touched the original"
    assert (copy / "results.json").is_file()
    assert "out: " + str(copy) in (copy / "config.yaml").read_text()
    moved = tmp_path / "moved"
    shutil.copytree(finished, tmp_path / "tmp")
    (tmp_path / "tmp").rename(moved)
    (moved / "results.json").unlink()
    assert main(["train", "--out", str(moved), "--resume", "--quiet"]) == 0
    assert json.loads((moved / "results.json").read_text()) == json.loads((finished / "results.json").read_text())
    assert snapshot(finished) == before


def test_resume_refuses_missing_or_mistyped_directory(tmp_path, capsys):
    """nothing silently accepted | `--resume` with a mistyped `--out`, a directory without `config.yaml`, no `--out`
    | clear error saying what is there and how to start afresh; nothing trained or created
    """
    assert main(["train", "--out", str(tmp_path / "typo"), "--resume"]) == 2
    assert "typo does not exist" in one_line_error(capsys) and not (tmp_path / "typo").exists()
    empty = tmp_path / "half"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert main(["train", "--out", str(empty), "--resume"]) == 2
    err = one_line_error(capsys)
    assert "no saved configuration (config.yaml)" in err and "holds metrics.jsonl" in err and "without --resume" in err
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --out" in one_line_error(capsys)
    assert sorted(p.name for p in empty.iterdir()) == ["metrics.jsonl"], "nothing may be trained there"


def test_half_set_up_run_resumes_to_the_same_results(finished, tmp_path, capsys):
    """nothing lost | a run interrupted during setup (only `config.yaml`, written first) | a fresh start there is
    refused (use --resume); `--resume` finishes it with the same results as an uninterrupted run

    A run interrupted during setup has config.yaml (written first) and nothing else: --resume runs it.
    """
    import mlrkit.engine.trainer as trainer

    run = tmp_path / "run"
    real = trainer.prepare_run_data

    def interrupted(cfg):
        raise KeyboardInterrupt

    trainer.prepare_run_data = interrupted
    try:
        assert train_cli(run) == 130
        assert "interrupted" in capsys.readouterr().err
    finally:
        trainer.prepare_run_data = real
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "console.log"]  # + what it printed
    assert train_cli(run) == 2
    err = one_line_error(capsys)
    assert "already holds a run (config.yaml)" in err and "--resume" in err
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert json.loads((run / "results.json").read_text()) == json.loads((finished / "results.json").read_text())


def test_edited_corrupt_or_incomplete_config_is_refused(finished, tmp_path, capsys):
    """nothing silently accepted | `--resume` after editing `train.lr` in `config.yaml`; a corrupt (`:: x`) or
    incomplete `config.yaml`; `--resume --lr` | refused, naming the changed key (`train.lr: 0.001 -> 0.5`) / the
    file / the missing key; evaluate says the same for a corrupt file
    """
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("lr: 0.001", "lr: 0.5"))
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = one_line_error(capsys)
    assert "no longer matches the configuration" in err and "train.lr: 0.001 -> 0.5" in err
    (run / "config.yaml").write_text(":: x\n")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "config.yaml is not a readable saved configuration" in one_line_error(capsys)
    assert main(["evaluate", str(run)]) == 2
    assert "config.yaml is not a readable saved configuration" in one_line_error(capsys)
    (run / "config.yaml").write_text(text.replace("  lr: 0.001\n", ""))
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "config.yaml is incomplete (missing train.lr)" in one_line_error(capsys)
    (run / "config.yaml").write_text(text)
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.1"]) == 2
    assert "drop lr" in one_line_error(capsys)


def test_resume_with_epochs_extends_the_run_exactly(finished, tmp_path, capsys):
    """nothing lost | `--resume --epochs 4` on a finished 2-epoch run; `--epochs 1` (fewer than done) | extended run
    equals a straight 4-epoch run (rows and results); fewer epochs refused
    """
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "2 epochs done, more than train.epochs=1" in one_line_error(capsys)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4", "--quiet"]) == 0
    straight = tmp_path / "straight"
    assert train_cli(straight, epochs=4) == 0
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3, 4]  # epochs count from 1
    assert [r["val_map"] for r in rows(run)] == [r["val_map"] for r in rows(straight)]
    res = json.loads((run / "results.json").read_text())
    assert res == json.loads((straight / "results.json").read_text())
    assert "epochs: 4" in (run / "config.yaml").read_text()


def test_new_run_never_overwrites_and_out_must_be_a_directory(finished, tmp_path, capsys):
    """nothing lost | a new run into a finished run's `--out`; `--out` naming an existing file | refused; the
    existing run untouched
    """
    before = snapshot(finished)
    assert train_cli(finished) == 2
    assert "already holds a run" in one_line_error(capsys)
    assert snapshot(finished) == before
    (tmp_path / "file").write_text("x")
    assert train_cli(tmp_path / "file") == 2
    assert "is an existing file, not a run directory" in one_line_error(capsys)


def test_second_writer_gets_a_clear_error(tmp_path, capsys):
    """nothing lost | a second writer while the run directory is locked | clear error naming the holder (pid, host,
    command); lock released at the end
    """
    run = tmp_path / "run"
    with RunLock(run):
        assert train_cli(run) == 2
        err = one_line_error(capsys)
    import os

    assert f"in use by another mlrkit process (pid {os.getpid()}" in err
    assert train_cli(run) == 0, "the lock is released at the end of the holder"
    assert (run / ".lock").read_text() == "", "a run ends with an empty (released) lock"


def _wait_for(pred, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


def test_concurrent_writers_and_stale_lock_of_a_killed_run(tmp_path):
    """nothing lost | two real processes on one `--out`; the holder killed with SIGKILL | the second (and a
    `--resume`) refused with the holder's pid; the stale lock is reported and taken over; `metrics.jsonl` has one
    row per epoch

    Two real processes with one --out: the second is refused while the first trains (the first is paused with
    SIGSTOP once it has written an epoch, so the check is not a race); after the first is killed (SIGKILL) its
    lock is detected as stale, reported and taken over by --resume; metrics keep exactly one row per epoch.
    """
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mlrkit", "train", *BASE, "--epochs", "6", "--out", str(run)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: (run / "metrics.jsonl").exists() or first.poll() is not None)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        assert not (run / "results.json").exists(), "the first run ended before it was paused"
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"in use by another mlrkit process (pid {first.pid}" in second.stderr
        resume = subprocess.run([*args[:4], "--out", str(run), "--resume"], capture_output=True, text=True,
                                timeout=120)
        assert resume.returncode == 2 and f"pid {first.pid}" in resume.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert str(first.pid) in (run / ".lock").read_text()
    r = subprocess.run([sys.executable, "-m", "mlrkit", "train", "--out", str(run), "--resume", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"was left by pid {first.pid}" in r.stderr and "no longer running" in r.stderr
    assert "stale_lock" in json.loads((run / "run.json").read_text())
    assert [x["epoch"] for x in rows(run)] == list(range(1, 7))


# ---------------------------------------------------------------------------- sweep
SWEEP = ["sweep", "--dataset", "scene", "--methods", "linear", "--batch-size", "64", "--quiet"]


def test_sweep_keys_runs_by_config_and_keeps_rows(tmp_path, capsys):
    """nothing silently accepted | `sweep` again with the same config, with `--epochs`/`--set train.lr` changed, then
    with other labels | same config reused; a changed config refused naming the key (outputs untouched); earlier
    rows kept in sweep.json/csv
    """
    out = tmp_path / "sw"
    assert main([*SWEEP, "--labels", "partial:0.3", "--epochs", "1", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    csv_before = (out / "sweep.csv").read_text()
    assert main([*SWEEP, "--labels", "partial:0.3", "--epochs", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out == first, "the same configuration is reused"
    assert main([*SWEEP, "--labels", "partial:0.3", "--epochs", "2", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "holds a finished run of another configuration (train.epochs: 1 -> 2)" in err
    assert main([*SWEEP, "--labels", "partial:0.3", "--epochs", "1", "--set", "train.lr=0.01", "--out", str(out)]) == 2
    assert "train.lr: 0.001 -> 0.01" in one_line_error(capsys)
    assert (out / "sweep.csv").read_text() == csv_before, "a refused sweep leaves the outputs alone"
    assert main([*SWEEP, "--labels", "partial:0.7", "--epochs", "1", "--out", str(out)]) == 0
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert sorted(r["labels"] for r in runs) == ["partial:0.3", "partial:0.7"], "rows of the earlier sweep kept"
    assert all(len(r["config_sha256"]) == 64 for r in runs)
    assert (out / "sweep.csv").read_text().splitlines()[0] == "method,30%,70%,Avg."
