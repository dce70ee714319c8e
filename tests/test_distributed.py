"""torchrun with 2 CPU processes (gloo): same result as 1 process, exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ARGS = ["--dataset", "yeast", "--method", "linear", "--loss", "an", "--labels", "single-positive", "--seed", "0",
        "--batch-size", "31", "--lr", "1e-3", "--quiet"]


def torchrun(*args: str, nproc: int = 2, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mlrkit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, **kw)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun's workers may live in their own session)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    todo, found = [pid], []
    while todo:
        q = todo.pop()
        found.append(q)
        todo += children.get(q, [])
    for q in found:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


def single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlrkit", *args], capture_output=True, text=True, timeout=600)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_two_processes_match_one_process(tmp_path):
    p = torchrun("train", *ARGS, "--epochs", "4", "--out", str(tmp_path / "ddp"))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert out.count('"test_map"') == 1, "only rank 0 prints"
    r = single("train", *ARGS, "--epochs", "4", "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = results(tmp_path / "ddp"), results(tmp_path / "one")
    assert abs(a["test_map"] - b["test_map"]) <= 1e-4
    assert abs(a["val_map"] - b["val_map"]) <= 1e-4 and a["best_epoch"] == b["best_epoch"]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    # evaluation under torchrun gathers every row exactly once
    p = torchrun("evaluate", str(tmp_path / "ddp"), "--json")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    ev = json.loads(out)
    assert abs(ev["test"]["map"] - a["test_map"]) <= 1e-6


def test_killed_distributed_run_resumes_to_the_same_result(tmp_path):
    args = [*ARGS, "--epochs", "20", "--batch-size", "16", "--set", "train.scheduler=cosine",
            "--set", "train.checkpoint_every_s=0"]
    killed = tmp_path / "killed"
    p = torchrun("train", *args, "--out", str(killed))
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        if p.poll() is not None:
            pytest.fail(f"run ended early: {p.stderr.read()[-2000:]}")
        time.sleep(0.02)
    kill_tree(p.pid)
    p.wait()
    assert not (killed / "results.json").exists()
    p = torchrun("train", "--out", str(killed), "--resume", "--quiet")
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    straight = tmp_path / "straight"
    p = torchrun("train", *args, "--out", str(straight))
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    assert results(killed) == results(straight)


def test_sharded_feature_extraction_equals_single_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "c2"))
    p = torchrun("extract-features", "--dataset", "fashion-mosaic", "--vl-model", "tiny",
                 "--out", str(tmp_path / "two.npz"))
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    monkeypatch.undo()
    r = subprocess.run([sys.executable, "-m", "mlrkit", "extract-features", "--dataset", "fashion-mosaic",
                        "--vl-model", "tiny", "--out", str(tmp_path / "one.npz")], capture_output=True, text=True,
                       env={**os.environ, "MLRKIT_CACHE": str(tmp_path / "c1")}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(tmp_path / "two.npz") as a, np.load(tmp_path / "one.npz") as b:
        np.testing.assert_allclose(a["X_train"], b["X_train"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(a["Y_test"], b["Y_test"])
    leftovers = list((tmp_path / "c2").rglob("shard-*"))
    assert not leftovers, "shards are merged and removed"
